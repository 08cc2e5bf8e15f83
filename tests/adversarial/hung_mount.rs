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

/// Calls `write` with 0, 1, 2, … every 200 ms for `seconds`, with [`statuses`]
/// beside it: how many writes, and how many `status` runs failed or were slow.
fn writing(daemon: &Daemon, seconds: usize, mut write: impl FnMut(u64)) -> (u64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let status = statuses(daemon, stop.clone());
    let (start, mut writes) = (Instant::now(), 0);
    while start.elapsed() < Duration::from_secs(seconds as u64) {
        write(writes);
        writes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let failed = status.join().unwrap().iter().filter(|ok| !**ok).count();
    (writes, failed)
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
    let (writes, failed) = writing(&daemon, scale(20, 14), |i| {
        site.sandbox.write(&format!("public/page{i}.html"), "x");
        site.sandbox.write(&format!("drop/{i}.txt"), "x");
    });
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

/// Downloads of a large file under the site root, each under way, when the FUSE
/// server under it stops (its pages dropped, so what is left must be asked of the
/// server): the downloads wait, nothing else does. Before, `sendfile` waited on the
/// runtime's workers (the daemon froze), and any job started meanwhile waited in
/// `execve` for the server to flush the downloads' descriptors.
#[test]
fn downloads_from_a_hung_site_mount_stall_only_themselves() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let mut case = Case::new("downloads_from_a_hung_site_mount_stall_only_themselves");
    let listeners = "[[listener]]\nname = \"drop\"\n  [[listener.route]]\n  path = \"drop\"\n  debounce_ms = 0\n  delay_ms = 0\n  run = [\"true\"]\n";
    let site = site("", listeners);
    std::fs::create_dir_all(site.sandbox.path("drop")).unwrap();
    let Some(mount) = HungMount::mount_at(&site.sandbox, "far", "public/far") else {
        case.set("skipped", "needs root and bindfs");
        return case.finish();
    };
    let big: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(site.sandbox.path("far/big.bin"), &big).unwrap();
    let Some(mut daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let downloads = scale(16, 8);
    let (go, started) = std::sync::mpsc::channel();
    let (resume_tx, resume) = std::sync::mpsc::channel::<()>();
    let resume = Arc::new(std::sync::Mutex::new(resume));
    let clients: Vec<_> = (0..downloads)
        .map(|_| {
            let (addr, go, resume) = (site.addr.clone(), go.clone(), resume.clone());
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(&addr).unwrap();
                let head = format!("GET /far/big.bin HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                stream.write_all(head.as_bytes()).unwrap();
                let mut first = vec![0u8; 1 << 20];
                let ok = stream.read_exact(&mut first).is_ok();
                go.send(ok).unwrap();
                let _ = resume.lock().unwrap().recv();
                stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            })
        })
        .collect();
    let under_way = (0..downloads)
        .filter(|_| started.recv_timeout(Duration::from_secs(10)).unwrap_or(false))
        .count();
    let watch = Watch::start(&daemon, &site.addr);
    let open = std::fs::File::open(site.sandbox.path("public/far/big.bin")).unwrap();
    mount.hang();
    // SAFETY: advice on an open descriptor; it only drops cached pages.
    unsafe { libc::posix_fadvise(open.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    std::mem::forget(open); // its close would wait for the stopped server
    for _ in 0..downloads {
        resume_tx.send(()).unwrap();
    }
    let (writes, failed) = writing(&daemon, scale(10, 6), |i| {
        site.sandbox.write(&format!("drop/{i}.txt"), "x");
    });
    let measured = watch.finish(&mut case, Duration::from_millis(500));
    let drop_jobs = listener(&daemon, "drop");
    let ran = drop_jobs["jobs_started"].as_u64().unwrap_or(0);
    let finished = ran.saturating_sub(drop_jobs["jobs_running"].as_u64().unwrap_or(0));
    case.set("downloads_under_way", under_way);
    case.set("writes", writes);
    case.set("jobs_started", ran);
    case.set("status_failed_or_slow", failed);
    drop(mount); // the server answers again: the downloads end, the daemon can exit
    for client in clients {
        let _ = client.join();
    }
    daemon.signal(libc::SIGTERM);
    let (exit, took) = exited(&mut daemon, Duration::from_secs(15));
    case.set_ms("exit_ms", ms(took));
    let p99 = measured.probe.latencies.pct_ms(0.99);
    case.check(
        under_way == downloads,
        format!("{under_way} of {downloads} downloads under way"),
    );
    case.check(
        failed == 0,
        format!("{failed} `status` runs failed or took over 1 s"),
    );
    case.check(p99 < 100.0, format!("HTTP probe p99 {p99:.1} ms (limit 100 ms)"));
    case.check(
        finished >= writes,
        format!("{finished} jobs finished for {writes} writes while the downloads waited"),
    );
    case.check(exit == Some(0), format!("exit code {exit:?} after SIGTERM"));
    drop(daemon);
    case.finish();
}
