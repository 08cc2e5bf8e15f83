//! Family 6: the `/metrics` listener under abuse. Clients that pipeline scrapes and
//! never read their answers, garbage and oversized heads, then silent connections by
//! the hundred: every scrape on a fresh connection is still answered quickly (a
//! newcomer takes the oldest connection's place), the silent ones are closed, the
//! site's probe does not notice, memory stays bounded and the control socket answers.

use crate::common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The listener's cap on open connections (src/metrics/server.rs).
const MAX_CONNECTIONS: usize = 16;

/// How many of `streams` the server closed (reading what it sent, up to the close),
/// waiting up to 2 s.
fn count_closed(streams: &mut [TcpStream]) -> usize {
    let mut closed = vec![false; streams.len()];
    let end = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 64 * 1024];
    while Instant::now() < end && closed.contains(&false) {
        for (stream, closed) in streams.iter_mut().zip(&mut closed).filter(|(_, c)| !**c) {
            stream.set_nonblocking(true).unwrap();
            *closed = loop {
                match stream.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    closed.iter().filter(|c| **c).count()
}

/// A client that asks for the metrics `n` times in one write and never reads.
fn hog(addr: &str, n: usize) -> Option<TcpStream> {
    let stream = TcpStream::connect(addr).ok()?;
    stream.set_nonblocking(true).ok()?;
    let requests = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").repeat(n);
    let _ = (&stream).write(requests.as_bytes());
    Some(stream)
}

/// A garbage or oversized head; the answer (if any) is read and dropped.
fn garbage(addr: &str, i: usize) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return;
    };
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let head = match i % 3 {
        0 => "\u{1}\u{2}GARBAGE \r\n\r\n".to_owned(),
        1 => format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(64 * 1024)),
        _ => format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "%ff".repeat(1000)
        ),
    };
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.read_to_end(&mut Vec::new());
}

#[test]
fn metrics_abuse() {
    let mut case = Case::new("metrics_abuse");
    let (hogs_n, garbage_n, silent_n, scrapes_n) =
        (scale(64, 16), scale(300, 60), scale(2000, 300), scale(100, 30));
    case.set("silent", silent_n);
    case.set("hogs", hogs_n);
    let metrics = format!("127.0.0.1:{}", free_port());
    let rest = format!("[metrics]\nlisten = \"{metrics}\"\n\n{}", true_listener("src", 0));
    let site = site("", &rest);
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let mut hogs: Vec<TcpStream> = (0..hogs_n).filter_map(|_| hog(&metrics, 200)).collect();
    (0..garbage_n).for_each(|i| garbage(&metrics, i));
    let mut silent: Vec<TcpStream> = (0..silent_n)
        .filter_map(|_| TcpStream::connect(&metrics).ok())
        .collect();
    let (mut scrapes, mut failed, mut first_error) = (Latencies::default(), 0, None);
    for _ in 0..scrapes_n {
        let start = Instant::now();
        match get_once(&metrics, "/metrics", Duration::from_secs(3)) {
            Ok(r) if r.status == 200 && r.body.ends_with(b"# EOF\n") => scrapes.0.push(start.elapsed()),
            other => {
                failed += 1;
                first_error.get_or_insert(format!("{other:?}"));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let silent_closed = count_closed(&mut silent);
    let hogs_closed = count_closed(&mut hogs);
    let measured = watch.finish(&mut case, Duration::from_millis(500));
    let status = crate::support::ctl(
        &["--socket", site.sandbox.socket().to_str().unwrap()],
        &["status"],
    );
    case.set("scrape_p99_ms", format!("{:.1}", scrapes.pct_ms(0.99)));
    case.set("scrapes_failed", failed);
    case.set("silent_closed", silent_closed);
    case.set("errors", failed + measured.probe.errors);
    if let Some(e) = first_error {
        case.set("first_scrape_error", e);
    }
    case.check(failed == 0, format!("{failed} of {scrapes_n} scrapes failed"));
    let p99 = scrapes.pct_ms(0.99);
    case.check(p99 < 500.0, format!("scrape p99 {p99:.1} ms (limit 500 ms)"));
    case.check(
        silent_closed + MAX_CONNECTIONS >= silent.len(),
        format!(
            "only {silent_closed} of {} silent connections closed",
            silent.len()
        ),
    );
    case.check(
        hogs_closed == hogs.len(),
        format!("{hogs_closed} of {} non-reading clients closed", hogs.len()),
    );
    let growth = measured.growth_mb();
    case.check(
        growth < 20.0,
        format!("the daemon grew {growth:.1} MB (limit 20 MB)"),
    );
    let probe_p99 = measured.probe.latencies.pct_ms(0.99);
    case.check(
        measured.probe.errors == 0 && probe_p99 < 100.0,
        format!(
            "site probe meanwhile: {} errors, p99 {probe_p99:.1} ms (limit 100 ms)",
            measured.probe.errors
        ),
    );
    case.check(status.status.success(), "the control socket stopped answering");
    drop(daemon);
    case.finish();
}
