//! Family 4: connections to the control socket that never say anything (or say one
//! request, blank lines and half a line, then nothing) must not lock anyone out:
//! `execlibctl status` still answers within a second.

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
