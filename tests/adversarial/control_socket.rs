//! Family 4: connections to the control socket that never say anything (or say one
//! request, blank lines and half a line, then nothing) must not lock anyone out:
//! `execlibctl status` still answers within a second. And under that pressure a
//! connection whose long request has arrived whole is never taken for idle.

use crate::common::*;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Opens `n` connections to `socket` from a helper thread (a connect can block when the
/// daemon stops accepting); returns those open within 10 s.
fn open_silent(socket: &Path, n: usize) -> Vec<UnixStream> {
    let (tx, rx) = mpsc::channel();
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        for i in 0..n {
            let Ok(mut stream) = UnixStream::connect(&socket) else {
                return;
            };
            // Every third one first sends a request, blank lines and half a line: none
            // of that may keep it from giving its slot up once answered.
            if i % 3 == 2 {
                let _ = stream.write_all(b"{\"cmd\":\"status\"}\n\n \n{\"cmd\":");
            }
            if tx.send(stream).is_err() {
                return;
            }
        }
    });
    let end = Instant::now() + Duration::from_secs(10);
    let mut open = Vec::new();
    while open.len() < n {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(s) => open.push(s),
            Err(_) => break,
        }
    }
    open
}

/// How the daemon treated the silent connections: (closed, sent something first).
fn silent_fate(silent: &[UnixStream]) -> (usize, usize) {
    let (mut closed, mut spoke) = (0, 0);
    for s in silent {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match (&*s).read(&mut buf) {
                Ok(0) => closed += 1,
                Ok(_) => {
                    spoke += 1;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => closed += 1,
            }
            break;
        }
    }
    (closed, spoke)
}

#[test]
fn control_socket_survives_500_silent_connections() {
    let mut case = Case::new("control_socket_survives_500_silent_connections");
    let n = 500;
    let site = site("", "");
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let silent = open_silent(&daemon.socket, n);
    case.set("silent_open", silent.len());
    std::thread::sleep(Duration::from_millis(300));
    let mut runs = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let out = daemon.ctl(&["status"]);
        runs.push((
            out.status.code(),
            start.elapsed(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let (closed, spoke) = silent_fate(&silent);
    case.set("silent_closed", closed);
    case.set("silent_sent_a_reply", spoke);
    let codes: Vec<String> = runs.iter().map(|(c, _, _)| format!("{c:?}")).collect();
    case.set("status_exit_codes", codes.join(","));
    let slowest = runs.iter().map(|(_, t, _)| *t).max().unwrap();
    case.set_ms("status_max_ms", ms(slowest));
    let failed = runs
        .iter()
        .filter(|(c, t, _)| *c != Some(0) || *t > Duration::from_secs(1))
        .count();
    case.set("errors", failed);
    watch.finish(&mut case, Duration::from_millis(200));
    case.check(
        silent.len() == n,
        format!("only {} of {n} silent connections opened", silent.len()),
    );
    for (code, took, stderr) in &runs {
        let what = format!("exit {code:?} after {took:?}: {}", stderr.trim());
        case.check(
            *code == Some(0) && *took <= Duration::from_secs(1),
            format!("execlibctl status: {what}"),
        );
        case.check(*code != Some(3), format!("execlibctl found no daemon: {what}"));
        if stderr.contains("busy") {
            case.check(*code == Some(1), format!("a busy reply must exit 1: {what}"));
        }
    }
    drop(silent);
    drop(daemon);
    case.finish();
}

/// A complete request of about `len` bytes: `status` padded with JSON whitespace.
fn long_request(len: usize) -> Vec<u8> {
    let mut request = b"{\"cmd\":\"status\"".to_vec();
    request.resize(len.saturating_sub(2), b' ');
    request.extend_from_slice(b"}\n");
    request
}

/// The first line the daemon sends on `stream`, within 5 s (empty: none).
fn first_line(stream: &UnixStream) -> String {
    use std::io::BufRead;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    let _ = std::io::BufReader::new(stream).read_line(&mut line);
    line
}

#[test]
fn long_control_requests_are_not_evicted_as_idle() {
    let mut case = Case::new("long_control_requests_are_not_evicted_as_idle");
    // The daemon's slots; a connection idle the longest gives its slot to a newcomer.
    let (slots, newcomers) = (64, 8);
    let rounds = scale(100, 24);
    let sizes = [20_000, 40_000, 60_000];
    case.set("rounds", rounds);
    case.set("request_kb", "20,40,60");
    let site = site("", "");
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let (mut answered, mut evicted, mut silent) = (0, 0, 0);
    let mut latencies = Latencies::default();
    let mut first_failure = None;
    let mut newcomers_told_busy = 0;
    for round in 0..rounds {
        // The long request's connection first, so it is the one idle the longest,
        // then 63 idle ones: every slot taken.
        let long = UnixStream::connect(&daemon.socket).unwrap();
        let idle: Vec<UnixStream> = (1..slots)
            .filter_map(|_| UnixStream::connect(&daemon.socket).ok())
            .collect();
        // Let the daemon admit them all, in that order, before the request.
        std::thread::sleep(Duration::from_millis(30));
        let request = long_request(sizes[round % sizes.len()]);
        let t0 = Instant::now();
        (&long).write_all(&request).unwrap();
        // The request has arrived whole; newcomers come at once, each taking the
        // slot of a connection that is idle.
        let arrivals: Vec<UnixStream> = (0..newcomers)
            .filter_map(|_| UnixStream::connect(&daemon.socket).ok())
            .collect();
        let line = first_line(&long);
        latencies.0.push(t0.elapsed());
        if line.contains("\"ok\":true") {
            answered += 1;
        } else {
            if line.contains("busy") {
                evicted += 1;
            } else {
                silent += 1;
            }
            first_failure.get_or_insert(format!(
                "round {round}, {} bytes: {:?}",
                request.len(),
                line.trim()
            ));
        }
        newcomers_told_busy += gave_way(&idle, newcomers - 1);
        drop((long, idle, arrivals));
        // The slots given back before the next round.
        std::thread::sleep(Duration::from_millis(30));
    }
    case.set("answered", answered);
    case.set("evicted", evicted);
    case.set("no_answer", silent);
    case.set("idle_closed_for_newcomers", newcomers_told_busy);
    case.set_ms("answer_p50_ms", latencies.pct_ms(0.5));
    case.set_ms("answer_max_ms", latencies.max_ms());
    if let Some(f) = &first_failure {
        case.set("first_failure", f.chars().take(120).collect::<String>());
    }
    let status = status_after(&daemon);
    case.set("errors", evicted + silent);
    watch.finish(&mut case, Duration::from_millis(200));
    case.check(
        answered == rounds,
        format!(
            "{evicted} long requests evicted as idle, {silent} unanswered, of {rounds}: {first_failure:?}"
        ),
    );
    case.check(
        newcomers_told_busy >= rounds * (newcomers - 1),
        format!(
            "only {newcomers_told_busy} idle connections gave way to newcomers: the pressure was not real"
        ),
    );
    case.check(status.is_ok(), format!("status afterwards: {status:?}"));
    drop(daemon);
    case.finish();
}

/// How many of `idle` the daemon closed to make room, waiting up to 2 s for `want`.
fn gave_way(idle: &[UnixStream], want: usize) -> usize {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let (closed, _) = silent_fate(idle);
        if closed >= want || Instant::now() >= end {
            return closed;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `execlibctl status` once the attack is over: exit 0 within 1 s.
fn status_after(daemon: &crate::support::Daemon) -> Result<Duration, String> {
    let start = Instant::now();
    let out = daemon.ctl(&["status"]);
    match (out.status.code(), start.elapsed()) {
        (Some(0), took) if took <= Duration::from_secs(1) => Ok(took),
        (code, took) => Err(format!("exit {code:?} after {took:?}")),
    }
}
