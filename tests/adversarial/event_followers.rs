//! Family 3b: `execlibctl events --follow` under an event storm, with six of the
//! eight followers allowed at once stalled (they asked to follow and never read),
//! one reading slowly (a line every 2 ms) and one reading as fast as it can. The
//! daemon's memory must stay flat (followers lose events, told `lagged`, rather
//! than queue them), the listener must keep up (a job after the storm runs at
//! once), other requests must be answered, and each stalled follower must be closed
//! after the idle timeout, freeing its slot.

use crate::common::*;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `[control] idle_timeout_ms` here: how long a stalled follower is given.
const IDLE: Duration = Duration::from_millis(2000);
const FOLLOW: &[u8] = b"{\"cmd\":\"events\",\"follow\":true}\n";

/// A listener on `storm/` whose only route runs for `marker*` files.
fn listener() -> String {
    "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  name = \"marker\"\n  path = \"storm\"\n  glob = \"marker*\"\n  debounce_ms = 0\n  delay_ms = 0\n  shell = \"echo x > ../out/$EXECLIB_NAME\"\n".into()
}

/// Rewrites 100 files under `storm/` until `stop`; returns the writes made.
fn storm(dir: std::path::PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut writes = 0;
        while !stop.load(Ordering::Relaxed) {
            std::fs::write(dir.join(format!("f{}.txt", writes % 100)), writes.to_string()).unwrap();
            writes += 1;
        }
        writes
    })
}

/// A follower that reads every line (pausing `pause` after each) until the daemon
/// closes or `stop`: (events, events reported lost, whether it saw `marker`).
fn reader(socket: &std::path::Path, pause: Duration, stop: Arc<AtomicBool>) -> JoinHandle<(u64, u64, bool)> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(FOLLOW).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut lines = BufReader::new(stream);
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert!(first.contains("\"following\":true"), "{first}");
    std::thread::spawn(move || {
        let (mut events, mut lost, mut marker) = (0, 0, false);
        let mut line = String::new();
        while !stop.load(Ordering::Relaxed) {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    events += u64::from(v.get("event").is_some());
                    lost += v["lagged"].as_u64().unwrap_or(0);
                    marker |= v["event"]["path"].as_str().is_some_and(|p| p.ends_with("marker"));
                    std::thread::sleep(pause);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
        (events, lost, marker)
    })
}

/// Whether the daemon closed `stream` (read to its end without blocking).
fn closed(stream: &UnixStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 65536];
    loop {
        match (&*stream).read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn stalled_event_followers_during_a_storm() {
    let mut case = Case::new("stalled_event_followers_during_a_storm");
    let site = site_with(IDLE.as_millis() as u64, "", &listener());
    std::fs::create_dir(site.sandbox.path("storm")).unwrap();
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let stalled: Vec<UnixStream> = (0..6)
        .map(|_| {
            let mut s = UnixStream::connect(&daemon.socket).unwrap();
            s.write_all(FOLLOW).unwrap();
            s
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reading = reader(&daemon.socket, Duration::ZERO, stop.clone());
    let slow = reader(&daemon.socket, Duration::from_millis(2), stop.clone());
    let storm_stop = Arc::new(AtomicBool::new(false));
    let writer = storm(site.sandbox.path("storm"), storm_stop.clone());
    let (mut statuses, storm_for) = (Latencies::default(), Duration::from_secs(scale(10, 4) as u64));
    let mut failed = 0;
    let began = Instant::now();
    while began.elapsed() < storm_for {
        let start = Instant::now();
        let out = crate::support::ctl(&["--socket", daemon.socket.to_str().unwrap()], &["status"]);
        statuses.0.push(start.elapsed());
        failed += usize::from(!out.status.success() || start.elapsed() > Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(250));
    }
    storm_stop.store(true, Ordering::Relaxed);
    case.set("writes", writer.join().unwrap());
    let wrote = Instant::now();
    site.sandbox.write("storm/marker", "x");
    let marker = wait_marker(&site, Duration::from_secs(5));
    case.set_ms("marker_job_ms", marker.map_or(-1.0, |_| ms(wrote.elapsed())));
    // Each stalled follower is closed once a line has waited the idle timeout.
    let closed_in_time = (|| {
        let end = Instant::now() + IDLE + Duration::from_secs(5);
        while Instant::now() < end {
            if stalled.iter().all(closed) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })();
    let stalled_closed = stalled.iter().filter(|s| closed(s)).count();
    let mut again = UnixStream::connect(&daemon.socket).unwrap();
    again.write_all(FOLLOW).unwrap();
    let mut first = String::new();
    BufReader::new(&again).read_line(&mut first).unwrap();
    stop.store(true, Ordering::Relaxed);
    let (events, lost, saw_marker) = reading.join().unwrap();
    let (slow_events, slow_lost, _) = slow.join().unwrap();
    let measured = watch.finish(&mut case, Duration::from_secs(1));
    let listener = daemon.listener("docs");
    case.set("events_dispatched", &listener["events"]);
    case.set("reader_events", events);
    case.set("reader_lagged", lost);
    case.set("slow_events", slow_events);
    case.set("slow_lagged", slow_lost);
    case.set("stalled_closed", format!("{stalled_closed}/6"));
    case.set("status_runs", statuses.len());
    case.set_ms("status_max_ms", statuses.max_ms());
    case.set("errors", measured.probe.errors + failed);
    let grew = measured.growth_mb();
    case.check(
        grew <= 50.0,
        format!("the daemon grew {grew:.1} MB (limit +50 MB)"),
    );
    case.check(
        failed == 0,
        format!("{failed} `execlibctl status` runs failed or took over 1 s"),
    );
    case.check(
        marker.is_some(),
        "the job for a file written after the storm did not run within 5 s",
    );
    case.check(saw_marker, "the reading follower never got the marker's event");
    case.check(
        slow_lost > 0,
        "the slow follower was never told it had lost events",
    );
    case.check(
        closed_in_time,
        format!("{stalled_closed} of 6 stalled followers closed within the idle timeout + 5 s"),
    );
    case.check(
        first.contains("\"ok\":true"),
        format!("no follower admitted after the stalled ones left: {first}"),
    );
    drop(daemon);
    case.finish();
}

/// Waits up to `limit` for the marker job's output.
fn wait_marker(site: &Site, limit: Duration) -> Option<()> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if site.sandbox.read("out/marker").is_some_and(|c| !c.is_empty()) {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}
