//! Family 1: files and folders under the site root swapped with symlinks to the
//! outside (`renameat2(RENAME_EXCHANGE)`, so both names always exist) while clients
//! ask for them, cached and not, on fresh and keep-alive connections. Not one
//! response may carry the outside's secret.

use crate::common::*;
use crate::support::Daemon;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The paths asked for: warm (cached before the swaps start) and cold (a cache key never warmed).
const PATHS: [&str; 3] = ["/race/shadow", "/race-file", "/race//shadow"];

/// `public/race/shadow` and `public/race-file` say PUBLIC; `outside/` holds the secret,
/// and `public/race-link`, `public/race-file-link` point there.
fn layout() -> (Site, String) {
    let site = site("", "");
    let s = &site.sandbox;
    let nanos = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_nanos();
    let secret = format!("SECRET-{nanos:x}{:x}", std::process::id());
    s.write("public/race/shadow", "PUBLIC");
    s.write("public/race-file", "PUBLIC");
    s.write("outside/shadow", &secret);
    s.write("outside/secret", &secret);
    symlink(s.path("outside"), s.path("public/race-link")).unwrap();
    symlink(s.path("outside/secret"), s.path("public/race-file-link")).unwrap();
    // Quiet for long enough that the server's one-second rule lets it cache them.
    age(&s.path("public/race/shadow"), 10);
    age(&s.path("public/race-file"), 10);
    (site, secret)
}

/// Asks for the warm paths until the server caches them (ctime must be a second old
/// too, and it cannot be set back); returns `cached_files`.
fn warm(daemon: &Daemon, addr: &str) -> u64 {
    std::thread::sleep(Duration::from_millis(1100));
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        for path in &PATHS[..2] {
            let _ = get_once(addr, path, Duration::from_secs(3));
        }
        let cached = daemon.request(r#"{"cmd":"status"}"#)["server"]["cached_files"]
            .as_u64()
            .unwrap_or(0);
        if cached >= 2 || Instant::now() > end {
            return cached;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Swaps `real` and `link` in a tight loop; every 8 rounds, while the symlink sits at
/// `link`, points it at the other spelling of its target (absolute, `../outside`).
fn swapper(real: PathBuf, link: PathBuf, targets: [PathBuf; 2], stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let pair = Exchange::new(&real, &link);
        let name = link.file_name().unwrap().to_string_lossy();
        let tmp = link.with_file_name(format!(".{name}.new"));
        let mut rounds = 0u64;
        while !stop.load(Ordering::Relaxed) {
            pair.swap().expect("renameat2(RENAME_EXCHANGE)");
            pair.swap().expect("renameat2(RENAME_EXCHANGE)");
            rounds += 1;
            if rounds.is_multiple_of(8) {
                let _ = std::fs::remove_file(&tmp);
                symlink(&targets[(rounds / 8 % 2) as usize], &tmp).unwrap();
                std::fs::rename(&tmp, &link).unwrap();
            }
        }
        rounds * 2
    })
}

#[derive(Default, Debug)]
struct Tally {
    requests: u64,
    ok: u64,
    not_found: u64,
    other: u64,
    io_errors: u64,
    /// Per path of [`PATHS`].
    leaks: [u64; 3],
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.not_found += other.not_found;
        self.other += other.other;
        self.io_errors += other.io_errors;
        for (mine, theirs) in self.leaks.iter_mut().zip(other.leaks) {
            *mine += theirs;
        }
    }
}

/// Cycles through [`PATHS`] until `stop`, on fresh connections or one kept alive.
fn client(addr: String, keep_alive: bool, stop: Arc<AtomicBool>) -> JoinHandle<Tally> {
    std::thread::spawn(move || {
        let mut tally = Tally::default();
        let mut conn = KeepAlive::new(&addr);
        for (i, path) in PATHS.iter().enumerate().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let reply = match keep_alive {
                true => conn.get(path),
                false => get_once(&addr, path, Duration::from_secs(5)),
            };
            tally.requests += 1;
            match reply {
                Err(_) => tally.io_errors += 1,
                Ok(r) => {
                    if r.body.windows(6).any(|w| w == b"SECRET") {
                        tally.leaks[i] += 1;
                    }
                    match r.status {
                        200 => tally.ok += 1,
                        404 => tally.not_found += 1,
                        _ => tally.other += 1,
                    }
                }
            }
        }
        tally
    })
}

fn attack(site: &Site, run: Duration) -> (Tally, u64, u64) {
    let s = &site.sandbox;
    let stop = Arc::new(AtomicBool::new(false));
    let dirs = swapper(
        s.path("public/race"),
        s.path("public/race-link"),
        [s.path("outside"), PathBuf::from("../outside")],
        stop.clone(),
    );
    let files = swapper(
        s.path("public/race-file"),
        s.path("public/race-file-link"),
        [s.path("outside/secret"), PathBuf::from("../outside/secret")],
        stop.clone(),
    );
    let clients: Vec<_> = (0..4)
        .map(|i| client(site.addr.clone(), i % 2 == 1, stop.clone()))
        .collect();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for c in clients {
        tally.add(&c.join().unwrap());
    }
    (tally, dirs.join().unwrap(), files.join().unwrap())
}

#[test]
fn static_files_never_leave_root_under_symlink_swaps() {
    let mut case = Case::new("static_files_never_leave_root_under_symlink_swaps");
    let (site, secret) = layout();
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let cached = warm(&daemon, &site.addr);
    let watch = Watch::start(&daemon, &site.addr);
    let (tally, dir_swaps, file_swaps) = attack(&site, Duration::from_secs(10));
    watch.finish(&mut case, Duration::from_millis(500));
    for (key, value) in [
        ("warm_cached", cached),
        ("requests", tally.requests),
        ("status_200", tally.ok),
        ("status_404", tally.not_found),
        ("status_other", tally.other),
        ("io_errors", tally.io_errors),
        ("secret_leaks", tally.leaks.iter().sum()),
        ("leaks_warm_dir", tally.leaks[0]),
        ("leaks_warm_file", tally.leaks[1]),
        ("leaks_cold_dir", tally.leaks[2]),
        ("dir_swaps", dir_swaps),
        ("file_swaps", file_swaps),
    ] {
        case.set(key, value);
    }
    case.set("errors", tally.io_errors + tally.other);
    let leaks: u64 = tally.leaks.iter().sum();
    case.check(leaks == 0, format!("{leaks} responses carried {secret}"));
    case.check(
        tally.ok > 0,
        "no request was answered 200: the attack did not exercise the server",
    );
    case.check(crate::support::alive(daemon.pid()), "the daemon died");
    drop(daemon);
    case.finish();
}
