//! Family 11: a file system under a route that stops answering. A FUSE server (bindfs,
//! as a local user's own mount, or a dead NFS server would be) is stopped with
//! SIGSTOP while a listener polls the tree under it: every system call there waits
//! for ever. The rest of the daemon must not: the control socket answers, the HTTP
//! probe stays fast, the other listener runs its jobs, the stuck listener says so,
//! and SIGTERM ends the daemon within its grace plus the 2 s a stuck watcher gets.
//! Root only (the mount); skipped, with its reason, otherwise.

use crate::common::*;
use crate::support::{Daemon, HungMount};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `[daemon] shutdown_grace_ms` in [`site`].
const GRACE: Duration = Duration::from_millis(2000);

/// `status` every 500 ms until `stop`, each given 5 s: whether each was answered
/// within 1 s.
fn statuses(daemon: &Daemon, stop: Arc<AtomicBool>) -> JoinHandle<Vec<bool>> {
    let socket = daemon.socket.clone();
    std::thread::spawn(move || {
        let mut runs = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let ok = crate::support::request_within(&socket, r#"{"cmd":"status"}"#, Duration::from_secs(5))
                .is_ok();
            let took = start.elapsed();
            runs.push(ok && took <= Duration::from_secs(1));
            std::thread::sleep(Duration::from_millis(500).saturating_sub(took));
        }
        runs
    })
}

/// The listener `name` as `listeners` reports it (`null` when it is not answered
/// within 5 s).
fn listener(daemon: &Daemon, name: &str) -> serde_json::Value {
    let reply = daemon.request_within(r#"{"cmd":"listeners"}"#, Duration::from_secs(5));
    let all = reply
        .ok()
        .and_then(|r| r["listeners"].as_array().cloned())
        .unwrap_or_default();
    all.into_iter().find(|l| l["name"] == name).unwrap_or_default()
}

/// Waits up to `limit` for the daemon to exit: its exit code (`None`: still running,
/// or killed) and how long it took.
fn exited(daemon: &mut Daemon, limit: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            return (status.code(), start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (None, start.elapsed())
}

#[test]
fn a_hung_fuse_mount_under_a_route_stalls_only_its_listener() {
    let mut case = Case::new("a_hung_fuse_mount_under_a_route_stalls_only_its_listener");
    let stuck_listener = "[[listener]]\nname = \"stuck\"\n  [[listener.route]]\n  path = \"src/sub\"\n  poll_ms = 200\n  shell = \"true\"\n";
    // Watches a healthy folder, but its jobs work on the mount: their starts wait there.
    let workdir_listener = "[[listener]]\nname = \"workdir\"\nmax_jobs = 8\n  [[listener.route]]\n  path = \"drop\"\n  debounce_ms = 0\n  delay_ms = 0\n  workdir = \"src/sub\"\n  run = [\"true\"]\n";
    let site = site(
        "",
        &format!("{}{stuck_listener}{workdir_listener}", true_listener("public", 0)),
    );
    std::fs::create_dir_all(site.sandbox.path("drop")).unwrap();
    let Some(mount) = HungMount::mount(&site.sandbox) else {
        case.set("skipped", "needs root and bindfs");
        return case.finish();
    };
    let Some(mut daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    mount.hang();
    let stop = Arc::new(AtomicBool::new(false));
    let status = statuses(&daemon, stop.clone());
    let seconds = scale(20, 14) as u64;
    let (start, mut writes) = (Instant::now(), 0);
    while start.elapsed() < Duration::from_secs(seconds) {
        site.sandbox.write(&format!("public/page{writes}.html"), "x");
        site.sandbox.write(&format!("drop/{writes}.txt"), "x");
        writes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let failed = status.join().unwrap().iter().filter(|ok| !**ok).count();
    let measured = watch.finish(&mut case, Duration::from_millis(500));
    let docs = listener(&daemon, "docs");
    let stuck = listener(&daemon, "stuck");
    let waiting = listener(&daemon, "workdir")["jobs_running"].as_u64().unwrap_or(0);
    let ran = docs["jobs_started"].as_u64().unwrap_or(0);
    let said = stuck["state"] == "degraded"
        && stuck["error"]
            .as_str()
            .is_some_and(|e| e.contains("busy in one step"));
    case.set("writes", writes);
    case.set("jobs_started", ran);
    case.set("stuck_reported", said);
    case.set("starts_waiting_on_the_mount", waiting);
    case.set("status_failed_or_slow", failed);
    daemon.signal(libc::SIGTERM);
    let (exit, took) = exited(&mut daemon, Duration::from_secs(15));
    case.set_ms("exit_ms", ms(took));
    case.set("exit_code", exit.map_or("none".into(), |c| c.to_string()));
    let p99 = measured.probe.latencies.pct_ms(0.99);
    case.check(
        failed == 0,
        format!("{failed} `status` runs failed or took over 1 s"),
    );
    case.check(p99 < 100.0, format!("HTTP probe p99 {p99:.1} ms (limit 100 ms)"));
    case.check(
        ran >= writes,
        format!("{ran} jobs for {writes} writes on the healthy listener"),
    );
    case.check(said, format!("the stuck listener did not say so: {stuck}"));
    case.check(
        waiting == 8,
        format!("{waiting} of the 8 jobs working on the mount are waiting to start"),
    );
    let limit = GRACE + Duration::from_secs(2 + 3);
    case.check(
        took <= limit,
        format!("SIGTERM to exit took {took:?} (limit {limit:?})"),
    );
    case.check(exit == Some(0), format!("exit code {exit:?} after SIGTERM"));
    drop(daemon);
    case.finish();
}
