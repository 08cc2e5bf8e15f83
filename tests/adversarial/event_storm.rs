//! Family 3: an event storm on the served root. A folder of ten files under it is
//! swapped with a symlink to another folder in a tight loop (`renameat2`
//! `RENAME_EXCHANGE`) while a listener watches the root and LiveReload tells a client.
//! Memory, HTTP latency and control answers must stay bounded, and SIGTERM must
//! still end the daemon within its grace.

use crate::common::*;
use crate::support::Daemon;
use crate::ws::{self, Heard};
use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `[daemon] shutdown_grace_ms` in [`site`].
const GRACE: Duration = Duration::from_millis(2000);

fn storm_site() -> Site {
    let site = site("idle_timeout_ms = 10000", &true_listener("public", 50));
    let s = &site.sandbox;
    for i in 0..10 {
        s.write(&format!("public/storm/page{i}.html"), "storm");
        s.write(&format!("storm-other/page{i}.html"), "other");
    }
    symlink(s.path("storm-other"), s.path("public/storm-link")).unwrap();
    site
}

/// Swaps `public/storm` and `public/storm-link` until `stop`; returns the swaps made.
fn storm(site: &Site, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    let pair = Exchange::new(
        &site.sandbox.path("public/storm"),
        &site.sandbox.path("public/storm-link"),
    );
    std::thread::spawn(move || {
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) {
            pair.swap().expect("renameat2(RENAME_EXCHANGE)");
            swaps += 1;
        }
        swaps
    })
}

/// Runs `execlibctl status` every 500 ms until `stop`: (answered, latency) of each.
fn statuses(daemon: &Daemon, stop: Arc<AtomicBool>) -> JoinHandle<Vec<(bool, Duration)>> {
    let socket = daemon.socket.to_str().unwrap().to_owned();
    std::thread::spawn(move || {
        let mut runs = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let out = crate::support::ctl(&["--socket", &socket], &["status"]);
            let took = start.elapsed();
            runs.push((out.status.success(), took));
            std::thread::sleep(Duration::from_millis(500).saturating_sub(took));
        }
        runs
    })
}

/// A LiveReload client that counts the reloads it hears until the server closes.
fn lr_listener(addr: &str) -> Option<JoinHandle<usize>> {
    let mut ws = ws::hello(addr).ok()?;
    ws.stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    Some(std::thread::spawn(move || {
        std::iter::from_fn(|| match ws.next() {
            Ok(Heard::Text(_)) => Some(()),
            _ => None,
        })
        .count()
    }))
}

/// Sends SIGTERM and waits up to 15 s: (exit code, time to exit).
fn terminate(daemon: &mut Daemon) -> (Option<i32>, Duration) {
    daemon.signal(libc::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            return (status.code(), start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (None, start.elapsed())
}

/// Sets the figures of the `status` runs; returns how many failed or took over 1 s.
fn status_figures(case: &mut Case, runs: &[(bool, Duration)]) -> usize {
    let failed = runs
        .iter()
        .filter(|(ok, took)| !ok || *took > Duration::from_secs(1))
        .count();
    let latencies = Latencies(runs.iter().map(|(_, d)| *d).collect());
    case.set("status_runs", runs.len());
    case.set("status_failed_or_slow", failed);
    case.set_ms("status_p50_ms", latencies.pct_ms(0.5));
    case.set_ms("status_max_ms", latencies.max_ms());
    failed
}

#[test]
fn event_storm_is_bounded() {
    let mut case = Case::new("event_storm_is_bounded");
    let site = storm_site();
    let Some(mut daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let reloads = lr_listener(&site.addr);
    case.check(reloads.is_some(), "no LiveReload client could connect");
    let watch = Watch::start(&daemon, &site.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let (swapper, status) = (storm(&site, stop.clone()), statuses(&daemon, stop.clone()));
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    case.set("swaps", swapper.join().unwrap());
    let failed = status_figures(&mut case, &status.join().unwrap());
    let measured = watch.finish(&mut case, Duration::from_secs(10));
    let jobs = daemon.request(r#"{"cmd":"listeners"}"#)["listeners"][0]["jobs_started"].clone();
    case.set("jobs_started", jobs);
    let (code, took) = terminate(&mut daemon);
    case.set_ms("exit_ms", ms(took));
    case.set("exit_code", code.map_or("none".into(), |c| c.to_string()));
    case.set("reloads_heard", reloads.map_or(0, |r| r.join().unwrap()));
    case.set("errors", measured.probe.errors + failed);
    let (grew, p99) = (measured.growth_mb(), measured.probe.latencies.pct_ms(0.99));
    case.check(
        grew <= 50.0,
        format!("the daemon grew {grew:.1} MB (limit +50 MB)"),
    );
    case.check(
        p99 < 100.0,
        format!("HTTP probe p99 {p99:.1} ms during the storm (limit 100 ms)"),
    );
    case.check(
        failed == 0,
        format!("{failed} `execlibctl status` runs failed or took over 1 s"),
    );
    let limit = GRACE + Duration::from_secs(3);
    case.check(
        took <= limit,
        format!("SIGTERM to exit took {took:?} (limit {limit:?})"),
    );
    case.check(code == Some(0), format!("exit code {code:?} after SIGTERM"));
    drop(daemon);
    case.finish();
}
