//! A file system that stops answering under a route (a dead NFS server; here a
//! FUSE server stopped with SIGSTOP, root only): the listener's start waits on it,
//! but the daemon stays reachable, says which listener is stuck and why, and
//! stops at once when asked.

use crate::support::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A sandbox with its `src` on a FUSE mount that can be hung; `None` (after saying
/// why) when not root or without bindfs. The mount goes first when both are dropped.
fn mounted() -> Option<(Sandbox, HungMount)> {
    let sandbox = Sandbox::new();
    let mount = HungMount::mount(&sandbox)?;
    Some((sandbox, mount))
}

/// Two listeners: `nfs` on a folder under the hung mount, `docs` on a plain one.
fn two_listeners(sandbox: &Sandbox) -> PathBuf {
    std::fs::create_dir_all(sandbox.path("plain")).unwrap();
    sandbox.config(
        "[[listener]]\nname = \"nfs\"\n  [[listener.route]]\n  path = \"src/sub\"\n  run = [\"true\"]\n\
         [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"plain\"\n  run = [\"true\"]\n",
    )
}

/// The daemon, once its control socket answers (before it is ready).
fn spawned(sandbox: &Sandbox, config: &std::path::Path) -> Daemon {
    let daemon = Daemon::spawn(sandbox, config);
    eventually("the control socket", || {
        ask(&daemon, r#"{"cmd":"status"}"#, Duration::from_secs(5))
    });
    daemon
}

/// The reply to `request`, which must come within `limit` (a daemon stuck on the file
/// system fails the test, it does not hang it); `None` when the socket refused it.
fn ask(daemon: &Daemon, request: &str, limit: Duration) -> Option<serde_json::Value> {
    match daemon.request_within(request, limit) {
        Ok(reply) => Some(reply),
        Err(e) if e.contains("not answered") => panic!("{e}"),
        Err(_) => None,
    }
}

/// `listeners`, answered within `limit`, as (name, state, error) triples.
fn states(daemon: &Daemon, limit: Duration) -> Vec<(String, String, String)> {
    let reply = ask(daemon, r#"{"cmd":"listeners"}"#, limit).expect("the control socket");
    let field = |l: &serde_json::Value, k: &str| l[k].as_str().unwrap_or_default().to_owned();
    let listeners = reply["listeners"].as_array().unwrap_or_else(|| panic!("{reply}"));
    listeners
        .iter()
        .map(|l| (field(l, "name"), field(l, "state"), field(l, "error")))
        .collect()
}

/// Sends SIGTERM and asserts the daemon exits 0 within `limit`, having logged `logged`.
fn terminates(daemon: &mut Daemon, limit: Duration, logged: &str) {
    daemon.signal(libc::SIGTERM);
    let (status, took) = daemon.wait_exit();
    let log = daemon.log();
    assert!(
        status.success() && took < limit,
        "{status:?} after {took:?}\n{log}"
    );
    assert!(log.contains(logged) && log.contains("shutdown complete"), "{log}");
}

/// The state and error of listener `name` in `states`.
fn state_of(states: Vec<(String, String, String)>, name: &str) -> (String, String) {
    let (_, state, error) = states.into_iter().find(|(n, ..)| n == name).unwrap();
    (state, error)
}

#[test]
fn a_listener_stuck_on_a_hung_file_system_is_reported_and_shutdown_does_not_wait_for_it() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    mount.hang();
    let config = two_listeners(&sandbox);
    let mut daemon = spawned(&sandbox, &config);
    // The other listener runs; the stuck one says it is starting, then that it is slow.
    // `listeners` answers although a route path cannot be resolved (links left out).
    let slow = eventually_within(Duration::from_secs(30), "nfs reported slow", || {
        let states = states(&daemon, Duration::from_secs(5));
        let docs = states.iter().any(|(n, s, _)| n == "docs" && s == "running");
        let (state, error) = state_of(states, "nfs");
        (docs && state == "starting" && error.contains("slow or hung")).then_some(error)
    });
    assert!(slow.contains("src/sub"), "{slow}");
    assert!(daemon.log().contains("slow or hung?"), "{}", daemon.log());
    // Not ready while a listener is still starting.
    daemon.notify.drain();
    assert_eq!(daemon.notify.count("READY=1"), 0);
    // SIGTERM is not held up by the stuck start: it is abandoned, the rest stops.
    terminates(&mut daemon, Duration::from_secs(5), "start abandoned");
}

#[test]
fn stopping_a_listener_stuck_on_a_hung_file_system_abandons_its_start() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    mount.hang();
    let config = two_listeners(&sandbox);
    let mut daemon = spawned(&sandbox, &config);
    eventually("nfs starting", || {
        let states = states(&daemon, Duration::from_secs(5));
        states
            .iter()
            .any(|(n, s, _)| n == "nfs" && s == "starting")
            .then_some(())
    });
    let stopped = ask(
        &daemon,
        r#"{"cmd":"stop","listener":"nfs"}"#,
        Duration::from_secs(2),
    );
    assert_eq!(stopped, Some(serde_json::json!({"ok": true, "changed": true})));
    // Every autostart listener has started or been let go: the daemon is ready.
    daemon.notify.wait_for("READY=1");
    let states = states(&daemon, Duration::from_secs(5));
    assert!(
        states.iter().any(|(n, s, _)| n == "nfs" && s == "stopped"),
        "{states:?}"
    );
    assert!(daemon.log().contains("start abandoned"), "{}", daemon.log());
    terminates(&mut daemon, Duration::from_secs(5), "");
}

#[test]
fn a_watcher_stuck_on_a_hung_file_system_stalls_only_its_own_listener() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    std::fs::create_dir_all(sandbox.path("plain")).unwrap();
    std::fs::create_dir_all(sandbox.path("out")).unwrap();
    // `nfs` is polled (a FUSE mount) every 200 ms: its watcher soon runs into the hang.
    let config = sandbox.config(
        "[[listener]]\nname = \"nfs\"\n  [[listener.route]]\n  path = \"src/sub\"\n  poll_ms = 200\n  run = [\"true\"]\n\
         [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"plain\"\n  debounce_ms = 0\n  \
         shell = 'echo \"$EXECLIB_NAME\" >> ../out/log'\n",
    );
    let mut daemon = Daemon::start(&sandbox, &config);
    mount.hang();
    // The stuck listener says so; the daemon answers meanwhile and the other listener
    // runs its jobs.
    let stuck = eventually_within(Duration::from_secs(30), "nfs reported stuck", || {
        let (state, error) = state_of(states(&daemon, Duration::from_secs(5)), "nfs");
        (state == "degraded" && error.contains("busy in one step")).then_some(error)
    });
    assert!(stuck.contains("not answering"), "{stuck}");
    sandbox.write("plain/a.txt", "1");
    eventually("docs's job", || {
        sandbox.read("out/log").filter(|l| l.contains("a.txt"))
    });
    // SIGTERM: the stuck watcher is left behind after STUCK_WATCH (2 s), the rest stops.
    terminates(&mut daemon, Duration::from_secs(6), "did not stop within 2 s");
}

#[test]
fn requests_under_a_hung_site_root_get_503_once_the_lookup_places_are_taken() {
    use std::io::{Read, Write};
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    sandbox.write("real/page.html", "page");
    std::fs::create_dir_all(sandbox.path("plain")).unwrap();
    std::fs::create_dir_all(sandbox.path("out")).unwrap();
    let config = sandbox.config(
        "[daemon]\nshutdown_grace_ms = 2000\n[server]\nlisten = \"127.0.0.1:0\"\nroot = \"src\"\nlivereload = false\n\
         [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"plain\"\n  debounce_ms = 0\n  \
         shell = 'echo \"$EXECLIB_NAME\" >> ../out/log'\n",
    );
    let mut daemon = Daemon::start(&sandbox, &config);
    let addr = crate::support::web::http_addr(&daemon);
    assert_eq!(crate::support::web::get(&addr, "/page.html", &[]).status, 200);
    mount.hang();
    // More requests than there are places (64): those holding one wait for the file
    // system; the rest are told 503 once they have waited 2 s for a place.
    let asked = Instant::now();
    let requests: Vec<_> = (0..72)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(&addr).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
                let head =
                    format!("GET /page.html?{i} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                stream.write_all(head.as_bytes()).unwrap();
                let mut reply = [0u8; 12];
                match stream.read_exact(&mut reply) {
                    Ok(()) => Some(String::from_utf8_lossy(&reply[9..]).into_owned()),
                    Err(_) => None, // still waiting on the file system
                }
            })
        })
        .collect();
    // Meanwhile the daemon answers and the other listener runs its jobs.
    sandbox.write("plain/a.txt", "1");
    eventually("docs's job", || {
        sandbox.read("out/log").filter(|l| l.contains("a.txt"))
    });
    assert!(
        daemon
            .request_within(r#"{"cmd":"status"}"#, Duration::from_secs(2))
            .is_ok()
    );
    let replies: Vec<Option<String>> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    let refused = replies.iter().filter(|r| r.as_deref() == Some("503")).count();
    let waiting = replies.iter().filter(|r| r.is_none()).count();
    assert_eq!(
        (refused, waiting),
        (8, 64),
        "{replies:?} after {:?}",
        asked.elapsed()
    );
    assert!(
        daemon.log().contains("have not been answered"),
        "{}",
        daemon.log()
    );
    terminates(&mut daemon, Duration::from_secs(6), "");
}

/// Whether one of `pid`'s threads waits on a FUSE request (its server stopped).
fn waits_on_fuse(pid: i32) -> bool {
    threads_on_fuse(pid) > 0
}

#[test]
fn livereload_watching_a_hung_site_root_does_not_hold_up_the_daemon() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    sandbox.write("real/page.html", "page");
    let config = sandbox.config(
        "[daemon]\nshutdown_grace_ms = 2000\n[server]\nlisten = \"127.0.0.1:0\"\nroot = \"src\"\nlivereload = true\n",
    );
    let mut daemon = Daemon::start(&sandbox, &config);
    mount.hang();
    // LiveReload's watcher polls the FUSE root: it is soon waiting on it.
    eventually_within(Duration::from_secs(15), "a thread waiting on the mount", || {
        waits_on_fuse(daemon.pid()).then_some(())
    });
    assert!(
        daemon
            .request_within(r#"{"cmd":"status"}"#, Duration::from_secs(2))
            .is_ok()
    );
    terminates(&mut daemon, Duration::from_secs(7), "did not stop within 2 s");
}

/// `nfs` (no autostart) on the hung mount and `docs` on a plain folder; `docs` runs.
fn nfs_started_by_request(sandbox: &Sandbox) -> Daemon {
    std::fs::create_dir_all(sandbox.path("plain")).unwrap();
    let config = sandbox.config(
        "[[listener]]\nname = \"nfs\"\nautostart = false\n  [[listener.route]]\n  path = \"src/sub\"\n  poll_ms = 200\n  run = [\"true\"]\n\
         [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"plain\"\n  run = [\"true\"]\n",
    );
    Daemon::start(sandbox, &config)
}

/// Asks for `nfs` to start, on a thread of its own (the reply waits for the mount).
fn start_nfs(daemon: &Daemon) -> std::thread::JoinHandle<Result<serde_json::Value, String>> {
    let socket = daemon.socket.clone();
    let start = std::thread::spawn(move || {
        request_within(
            &socket,
            r#"{"cmd":"start","listener":"nfs"}"#,
            Duration::from_secs(30),
        )
    });
    eventually("nfs starting", || {
        let states = states(daemon, Duration::from_secs(5));
        states
            .iter()
            .any(|(n, s, _)| n == "nfs" && s == "starting")
            .then_some(())
    });
    start
}

#[test]
fn a_start_stuck_on_a_hung_file_system_does_not_hold_up_other_listeners_requests() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    mount.hang();
    let daemon = nfs_started_by_request(&sandbox);
    let start = start_nfs(&daemon);
    for request in [
        r#"{"cmd":"stop","listener":"docs"}"#,
        r#"{"cmd":"start","listener":"docs"}"#,
    ] {
        let reply = daemon.request_within(request, Duration::from_secs(3));
        assert_eq!(
            reply.map(|r| r["ok"].clone()),
            Ok(serde_json::json!(true)),
            "{request}"
        );
    }
    let stopped = daemon.request_within(r#"{"cmd":"stop","listener":"nfs"}"#, Duration::from_secs(3));
    assert_eq!(stopped.map(|r| r["changed"].clone()), Ok(serde_json::json!(true)));
    let answer = start.join().unwrap().unwrap();
    assert!(answer["error"].to_string().contains("abandoned"), "{answer}");
}

#[test]
fn sigterm_during_a_reload_stuck_on_a_hung_file_system_stops_the_daemon() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    mount.hang();
    let mut daemon = nfs_started_by_request(&sandbox);
    // The reload adds a listener on the hung mount: its start waits on it.
    let config = std::fs::read_to_string(sandbox.path("site.toml")).unwrap();
    let added =
        "[[listener]]\nname = \"more\"\n  [[listener.route]]\n  path = \"src/sub\"\n  run = [\"true\"]\n";
    std::fs::write(sandbox.path("site.toml"), format!("{config}{added}")).unwrap();
    daemon.signal(libc::SIGHUP);
    // (Not in `listeners` until the reload is applied.)
    eventually("the reload's start waiting on the mount", || {
        waits_on_fuse(daemon.pid()).then_some(())
    });
    terminates(&mut daemon, Duration::from_secs(5), "");
}

#[test]
fn a_listener_stopped_while_its_watcher_was_stuck_stays_stopped_when_the_mount_answers_again() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    let daemon = nfs_started_by_request(&sandbox);
    let started = daemon.request_within(r#"{"cmd":"start","listener":"nfs"}"#, Duration::from_secs(10));
    assert_eq!(started.map(|r| r["changed"].clone()), Ok(serde_json::json!(true)));
    mount.hang();
    // Polled every 200 ms: its watcher is soon waiting on the mount.
    eventually_within(
        Duration::from_secs(10),
        "the watcher waiting on the mount",
        || waits_on_fuse(daemon.pid()).then_some(()),
    );
    let stopped = daemon.request_within(r#"{"cmd":"stop","listener":"nfs"}"#, Duration::from_secs(6));
    assert_eq!(stopped.map(|r| r["changed"].clone()), Ok(serde_json::json!(true)));
    drop(mount); // the server goes on (SIGCONT) and is unmounted: the stuck call returns
    // The watcher left behind finishes now; the listener it was stays as it was left.
    eventually("the watcher's thread gone", || {
        (!waits_on_fuse(daemon.pid())).then_some(())
    });
    let before = states(&daemon, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500)); // more than a beat: nothing may change
    let after = states(&daemon, Duration::from_secs(5));
    assert_eq!(before, after);
    let (state, error) = state_of(after, "nfs");
    assert_eq!(state, "failed", "{error}");
    assert!(error.contains("did not stop"), "{error}");
}

#[test]
fn ready_goes_out_after_ready_timeout_with_a_listener_stuck_on_a_hung_file_system() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    mount.hang();
    let config = two_listeners(&sandbox);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("[daemon]\nready_timeout_ms = 1000\n{text}")).unwrap();
    let mut daemon = Daemon::spawn(&sandbox, &config);
    daemon.notify.wait_for("READY=1");
    let states = states(&daemon, Duration::from_secs(5));
    assert_eq!(state_of(states.clone(), "docs").0, "running", "{states:?}");
    assert_eq!(state_of(states, "nfs").0, "starting");
    assert!(
        daemon
            .log()
            .contains("listeners still setting up their watches: nfs"),
        "{}",
        daemon.log()
    );
    terminates(&mut daemon, Duration::from_secs(5), "start abandoned");
}

#[test]
fn a_reload_replacing_a_listener_whose_watcher_is_stuck_keeps_its_pending_runs() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    std::fs::create_dir_all(sandbox.path("plain")).unwrap();
    std::fs::create_dir_all(sandbox.path("out")).unwrap();
    let plain = "[[listener]]\nname = \"mix\"\n  [[listener.route]]\n  name = \"plain\"\n  path = \"plain\"\n  \
                 debounce_ms = 4000\n  shell = 'echo \"$EXECLIB_NAME\" >> ../out/log'\n";
    let nfs =
        "  [[listener.route]]\n  name = \"nfs\"\n  path = \"src/sub\"\n  poll_ms = 200\n  run = [\"true\"]\n";
    let config = sandbox.config(&format!("{plain}{nfs}"));
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("plain/a.txt", "1");
    eventually("a.txt pending", || {
        let jobs = daemon.request(r#"{"cmd":"jobs"}"#).to_string();
        jobs.contains("a.txt").then_some(())
    });
    mount.hang();
    eventually_within(
        Duration::from_secs(10),
        "the watcher waiting on the mount",
        || waits_on_fuse(daemon.pid()).then_some(()),
    );
    // The reload drops the route on the mount: the old listener's watcher is left
    // behind, and the run it had pending goes to the new one.
    sandbox.config(plain);
    let reply = daemon
        .request_within(r#"{"cmd":"reload"}"#, Duration::from_secs(8))
        .unwrap();
    assert_eq!(
        reply["listeners"]["changed"],
        serde_json::json!(["mix"]),
        "{reply}"
    );
    eventually_within(Duration::from_secs(10), "a.txt's run", || {
        sandbox.read("out/log").filter(|l| l.contains("a.txt"))
    });
}

#[test]
fn a_site_root_that_does_not_answer_at_start_holds_the_start_for_a_bounded_time() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    mount.hang();
    let config = sandbox.config(
        "[daemon]\nshutdown_grace_ms = 2000\n[server]\nlisten = \"127.0.0.1:0\"\nroot = \"src\"\nlivereload = true\n",
    );
    let started = Instant::now();
    let mut daemon = Daemon::spawn(&sandbox, &config);
    // Resolving the root, then LiveReload's watch of it: 5 s each at most. (The
    // resolving may not wait at all: whether the root may be cached is read from the
    // mount table, which says it is FUSE, without asking the dead server.)
    let ready = eventually_within(Duration::from_secs(30), "READY=1", || {
        daemon.notify.poll();
        (daemon.notify.count("READY=1") > 0).then(|| started.elapsed())
    });
    assert!(ready < Duration::from_secs(15), "ready after {ready:?}");
    let log = daemon.log();
    assert!(
        log.contains("LiveReload: watching the site root takes over 5 s"),
        "{log}"
    );
    assert!(
        daemon
            .request_within(r#"{"cmd":"status"}"#, Duration::from_secs(2))
            .is_ok()
    );
    terminates(&mut daemon, Duration::from_secs(5), "");
}

/// How many of `pid`'s threads wait on a FUSE request (its server stopped), or on
/// a page of a file that such a request is to read.
fn threads_on_fuse(pid: i32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.path().join("wchan")).ok())
        .filter(|wchan| wchan == "request_wait_answer" || wchan.starts_with("folio_wait"))
        .count()
}

#[test]
fn regression_each_reload_on_a_hung_site_root_left_one_more_thread_caught_by_it() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    let config = sandbox.config(
        "[daemon]\nshutdown_grace_ms = 2000\n[server]\nlisten = \"127.0.0.1:0\"\nroot = \"src/sub\"\nlivereload = false\n",
    );
    let mut daemon = Daemon::start(&sandbox, &config);
    mount.hang();
    // Each reload asks where the root resolves now: once the kernel's cache of the
    // mount's attributes has expired, the question waits its 5 s and keeps its thread.
    let reload = || {
        let asked = Instant::now();
        let reply = daemon
            .request_within(r#"{"cmd":"reload"}"#, Duration::from_secs(8))
            .expect("reload answered");
        assert_eq!(reply["ok"], true, "{reply}");
        asked.elapsed()
    };
    eventually_within(Duration::from_secs(30), "a reload waiting on the root", || {
        (reload() > Duration::from_secs(4)).then_some(())
    });
    // One more question may wait (two places); the others are not asked at all.
    let took: Vec<Duration> = (0..3).map(|_| reload()).collect();
    let waited = took.iter().filter(|t| **t > Duration::from_secs(2)).count();
    assert!(waited <= 1, "{took:?}");
    // Those two threads wait on the mount (one may wait in the kernel behind the other
    // rather than on the FUSE request itself); before, one more per reload did.
    let caught = threads_on_fuse(daemon.pid());
    assert!(
        (1..=2).contains(&caught),
        "{caught} threads on the mount after {took:?}"
    );
    terminates(&mut daemon, Duration::from_secs(6), "");
}

#[test]
fn regression_stop_waited_for_ever_behind_a_reload_whose_start_was_stuck_on_a_hung_file_system() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    std::fs::create_dir_all(sandbox.path("real/other")).unwrap();
    mount.hang();
    let mut daemon = nfs_started_by_request(&sandbox);
    let config = std::fs::read_to_string(sandbox.path("site.toml")).unwrap();
    let stop = |name: &str| {
        let request = format!(r#"{{"cmd":"stop","listener":"{name}"}}"#);
        let reply = daemon.request_within(&request, Duration::from_secs(3));
        assert_eq!(
            reply.map(|r| r["changed"].clone()),
            Ok(serde_json::json!(true)),
            "{name}"
        );
    };
    let state = |name: &str| state_of(states(&daemon, Duration::from_secs(3)), name).0;
    // A reload adds a listener on the hung mount: its start waits on it, and the reload
    // with it; `stop more` abandons that start (before, it waited behind the reload).
    let added =
        "[[listener]]\nname = \"more\"\n  [[listener.route]]\n  path = \"src/sub\"\n  run = [\"true\"]\n";
    std::fs::write(sandbox.path("site.toml"), format!("{config}{added}")).unwrap();
    daemon.signal(libc::SIGHUP);
    eventually("the added listener's start waiting on the mount", || {
        (threads_on_fuse(daemon.pid()) >= 1).then_some(())
    });
    stop("more");
    eventually("the reload done, `more` stopped", || {
        (state("more") == "stopped").then_some(())
    });
    // The same for a listener the reload changes: `docs` moves onto the mount (another
    // folder there: a second lookup of src/sub could wait behind the first one).
    let moved = format!("{config}{added}").replace("path = \"plain\"", "path = \"src/other\"");
    std::fs::write(sandbox.path("site.toml"), moved).unwrap();
    daemon.signal(libc::SIGHUP);
    eventually("the changed listener being replaced", || {
        daemon
            .log()
            .contains("definition changed: replacing the listener")
            .then_some(())
    });
    stop("docs");
    eventually("the reload done, `docs` stopped", || {
        (state("docs") == "stopped").then_some(())
    });
    terminates(&mut daemon, Duration::from_secs(5), "");
}

#[test]
fn regression_jobs_whose_working_directory_was_on_a_hung_mount_froze_the_daemon() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    std::fs::create_dir_all(sandbox.path("plain")).unwrap();
    std::fs::create_dir_all(sandbox.path("out")).unwrap();
    // `nfs`'s jobs work in a folder on the mount; `docs` has nothing to do with it.
    let config = sandbox.config(
        "[daemon]\nshutdown_grace_ms = 2000\n\
         [[listener]]\nname = \"nfs\"\nmax_jobs = 4\n  [[listener.route]]\n  path = \"plain/nfs\"\n  debounce_ms = 0\n  delay_ms = 0\n  workdir = \"src/sub\"\n  run = [\"true\"]\n\
         [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"plain/docs\"\n  debounce_ms = 0\n  delay_ms = 0\n  \
         shell = 'echo \"$EXECLIB_NAME\" >> ../../out/log'\n",
    );
    std::fs::create_dir_all(sandbox.path("plain/nfs")).unwrap();
    std::fs::create_dir_all(sandbox.path("plain/docs")).unwrap();
    let mut daemon = Daemon::start(&sandbox, &config);
    mount.hang();
    // Each job's process waits on the mount to enter its working directory.
    four_wait_on_the_mount_while_docs_runs(&sandbox, &daemon);
    assert!(daemon.log().contains("before it started"), "{}", daemon.log());
    terminates(&mut daemon, Duration::from_secs(5), "");
}

/// Four files for `nfs`, whose four jobs' starts then wait on the stopped mount; the
/// daemon answers and `docs` runs its job meanwhile; `nfs`'s stop kills the four.
fn four_wait_on_the_mount_while_docs_runs(sandbox: &Sandbox, daemon: &Daemon) {
    for i in 0..4 {
        sandbox.write(&format!("plain/nfs/{i}.txt"), "x");
    }
    eventually_within(Duration::from_secs(15), "the jobs waiting on the mount", || {
        (processes_on_fuse(daemon.pid()) == 4).then_some(())
    });
    assert!(
        daemon
            .request_within(r#"{"cmd":"status"}"#, Duration::from_secs(3))
            .is_ok()
    );
    docs_runs_meanwhile(sandbox);
    // A stop gives up on those starts and kills what waits on the mount.
    stopping_frees_the_mount(daemon, "nfs");
}

#[test]
fn regression_jobs_reaching_a_hung_mount_through_a_link_or_their_path_froze_the_daemon() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    for dir in ["plain/path", "plain/link", "plain/docs", "plain/work", "out"] {
        std::fs::create_dir_all(sandbox.path(dir)).unwrap();
    }
    std::os::unix::fs::symlink("../src/sub", sandbox.path("plain/into")).unwrap();
    // `path` looks its program up on a PATH whose first folder is on the mount (the
    // daemon does that lookup); `link` works in a folder on it reached by a link.
    let config = sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 2000\n\
         [[listener]]\nname = \"path\"\nmax_jobs = 2\n  [[listener.route]]\n  path = \"plain/path\"\n  debounce_ms = 0\n  delay_ms = 0\n  \
         workdir = \"plain/work\"\n  env = {{ PATH = \"{}/bin:/usr/bin:/bin\" }}\n  run = [\"true\"]\n\
         [[listener]]\nname = \"link\"\nmax_jobs = 20\n  [[listener.route]]\n  path = \"plain/link\"\n  debounce_ms = 0\n  delay_ms = 0\n  \
         workdir = \"plain/into\"\n  run = [\"true\"]\n\
         [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"plain/docs\"\n  debounce_ms = 0\n  delay_ms = 0\n  \
         shell = 'echo \"$EXECLIB_NAME\" >> ../../out/log'\n",
        sandbox.path("src").display()
    ));
    let mut daemon = Daemon::start(&sandbox, &config);
    mount.hang();
    let answers = |daemon: &Daemon| {
        daemon
            .request_within(r#"{"cmd":"status"}"#, Duration::from_secs(3))
            .map(|_| ())
    };
    // Two lookups on the mount: two of the daemon's threads wait there, not its workers.
    for i in 0..2 {
        sandbox.write(&format!("plain/path/{i}.txt"), "x");
    }
    eventually_within(
        Duration::from_secs(15),
        "the lookups waiting on the mount",
        || (threads_on_fuse(daemon.pid()) == 2).then_some(()),
    );
    assert_eq!(answers(&daemon), Ok(()));
    // Twenty starts through the link: with the lookups, 16 wait on the mount at most.
    for i in 0..20 {
        sandbox.write(&format!("plain/link/{i}.txt"), "x");
    }
    eventually_within(
        Duration::from_secs(15),
        "14 starts on the mount, 6 waiting their turn",
        || {
            let turns = daemon.log().matches("this one waits its turn").count();
            (processes_on_fuse(daemon.pid()) == 14 && turns == 6).then_some(())
        },
    );
    assert_eq!(answers(&daemon), Ok(()));
    docs_runs_meanwhile(&sandbox);
    // A stop gives up on every start through the link, waiting or not.
    stopping_frees_the_mount(&daemon, "link");
    eventually("every start given up, and logged", || {
        (daemon.log().matches("before it started").count() == 20).then_some(())
    });
    terminates(&mut daemon, Duration::from_secs(5), "");
}

#[test]
fn regression_a_script_whose_interpreter_was_on_a_hung_mount_froze_the_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    for dir in ["plain/nfs", "plain/docs", "out"] {
        std::fs::create_dir_all(sandbox.path(dir)).unwrap();
    }
    // A local script whose `#!` names a program on the mount: `execve` opens it.
    std::fs::copy("/bin/true", sandbox.path("real/sub/tool")).unwrap();
    let script = sandbox.path("plain/run.sh");
    std::fs::write(&script, format!("#!{}\n", sandbox.path("src/sub/tool").display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 2000\n\
         [[listener]]\nname = \"nfs\"\nmax_jobs = 4\n  [[listener.route]]\n  path = \"plain/nfs\"\n  debounce_ms = 0\n  delay_ms = 0\n  \
         run = [\"{}\"]\n\
         [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"plain/docs\"\n  debounce_ms = 0\n  delay_ms = 0\n  \
         shell = 'echo \"$EXECLIB_NAME\" >> ../../out/log'\n",
        script.display()
    ));
    let mut daemon = Daemon::start(&sandbox, &config);
    let mount = mount; // dropped before the daemon: a failing test lets the server go first
    mount.hang();
    four_wait_on_the_mount_while_docs_runs(&sandbox, &daemon);
    terminates(&mut daemon, Duration::from_secs(5), "");
}

#[test]
fn regression_hold_paths_on_a_hung_mount_froze_the_daemon() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    std::fs::create_dir_all(sandbox.path("out")).unwrap();
    // Three listeners whose runs wait while a lock on the mount exists: each due run
    // looks at it from the daemon's runtime, which has fewer workers on 2 cores.
    let lock = sandbox.path("src/sub/deploy.lock");
    let mut config = String::from("[daemon]\nshutdown_grace_ms = 2000\n");
    for name in ["a", "b", "c"] {
        std::fs::create_dir_all(sandbox.path(&format!("plain/{name}"))).unwrap();
        config += &format!(
            "[[listener]]\nname = \"{name}\"\n  [[listener.route]]\n  path = \"plain/{name}\"\n  debounce_ms = 0\n  \
             delay_ms = 0\n  hold_while = [\"{}\"]\n  shell = 'echo \"$EXECLIB_NAME\" >> ../../out/log'\n",
            lock.display()
        );
    }
    let config = sandbox.config(&config);
    let mut daemon = Daemon::start(&sandbox, &config);
    let mount = mount; // dropped before the daemon: a failing test lets the server go first
    mount.hang();
    for name in ["a", "b", "c"] {
        sandbox.write(&format!("plain/{name}/{name}.txt"), "x");
    }
    // The runs go ahead (the lock's file system does not answer: taken as absent).
    eventually_within(Duration::from_secs(10), "the three jobs", || {
        let log = sandbox.read("out/log")?;
        ["a.txt", "b.txt", "c.txt"]
            .iter()
            .all(|f| log.contains(f))
            .then_some(())
    });
    assert!(
        daemon
            .request_within(r#"{"cmd":"status"}"#, Duration::from_secs(3))
            .is_ok()
    );
    assert!(daemon.log().contains("taken as absent"), "{}", daemon.log());
    drop(mount);
    terminates(&mut daemon, Duration::from_secs(5), "");
}

#[test]
fn regression_starts_on_one_hung_mount_held_up_jobs_on_another_network_mount() {
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    // A second FUSE mount, which keeps answering.
    let other = Sandbox::new();
    let Some(well) = HungMount::mount(&other) else {
        return;
    };
    for dir in ["plain/hung", "plain/well", "out"] {
        std::fs::create_dir_all(sandbox.path(dir)).unwrap();
    }
    let config = sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 2000\n\
         [[listener]]\nname = \"hung\"\nmax_jobs = 20\n  [[listener.route]]\n  path = \"plain/hung\"\n  debounce_ms = 0\n  \
         delay_ms = 0\n  workdir = \"src/sub\"\n  run = [\"true\"]\n\
         [[listener]]\nname = \"well\"\n  [[listener.route]]\n  path = \"plain/well\"\n  debounce_ms = 0\n  delay_ms = 0\n  \
         workdir = \"{}\"\n  shell = 'echo \"$EXECLIB_NAME\" >> {}'\n",
        other.path("src/sub").display(),
        sandbox.path("out/log").display()
    ));
    let mut daemon = Daemon::start(&sandbox, &config);
    let (mount, well) = (mount, well); // dropped before the daemon
    mount.hang();
    // Seventeen starts on the stopped mount: sixteen wait on it, one for its turn.
    for i in 0..17 {
        sandbox.write(&format!("plain/hung/{i}.txt"), "x");
    }
    eventually_within(
        Duration::from_secs(15),
        "16 starts on the mount, 1 waiting",
        || {
            let turns = daemon
                .log()
                .matches("already wait on this network or FUSE mount")
                .count();
            (processes_on_fuse(daemon.pid()) == 16 && turns == 1).then_some(())
        },
    );
    // Jobs working on the other mount start meanwhile: its places are its own.
    for i in 0..3 {
        sandbox.write(&format!("plain/well/{i}.txt"), "x");
    }
    eventually_within(Duration::from_secs(10), "the other mount's jobs", || {
        let log = sandbox.read("out/log")?;
        (log.lines().count() == 3).then_some(())
    });
    stopping_frees_the_mount(&daemon, "hung");
    drop((mount, well));
    terminates(&mut daemon, Duration::from_secs(5), "");
}

/// `docs` runs a job for a new file (while other listeners wait on the mount).
fn docs_runs_meanwhile(sandbox: &Sandbox) {
    sandbox.write("plain/docs/a.txt", "1");
    eventually_within(Duration::from_secs(10), "docs's job", || {
        sandbox.read("out/log").filter(|l| l.contains("a.txt"))
    });
}

/// Stops listener `name`, whose starts wait on the mount: the stop gives them up and
/// kills every process waiting there.
fn stopping_frees_the_mount(daemon: &Daemon, name: &str) {
    let request = format!(r#"{{"cmd":"stop","listener":"{name}"}}"#);
    let reply = daemon.request_within(&request, Duration::from_secs(5));
    assert_eq!(reply.map(|r| r["changed"].clone()), Ok(serde_json::json!(true)));
    eventually("nothing left waiting on the mount", || {
        (processes_on_fuse(daemon.pid()) == 0).then_some(())
    });
}

/// How many children of `parent` wait on a FUSE request (a server stopped).
fn processes_on_fuse(parent: i32) -> usize {
    let procs = std::fs::read_dir("/proc").unwrap().flatten();
    let child = |p: &std::fs::DirEntry| {
        let status = std::fs::read_to_string(p.path().join("status")).unwrap_or_default();
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["PPid:", &parent.to_string()]))
    };
    procs
        .filter(|p| p.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
        .filter(|p| std::fs::read_to_string(p.path().join("wchan")).is_ok_and(|w| w == "request_wait_answer"))
        .filter(child)
        .count()
}

#[test]
fn regression_downloads_from_a_site_root_that_stopped_answering_froze_the_daemon_and_held_up_jobs() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let Some((sandbox, mount)) = mounted() else {
        return;
    };
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(sandbox.path("real/big.bin"), &big).unwrap();
    std::fs::create_dir_all(sandbox.path("plain")).unwrap();
    std::fs::create_dir_all(sandbox.path("out")).unwrap();
    let config = sandbox.config(
        "[daemon]\nshutdown_grace_ms = 2000\n[server]\nlisten = \"127.0.0.1:0\"\nroot = \"src\"\nlivereload = false\n\
         [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"plain\"\n  debounce_ms = 0\n  \
         shell = 'echo \"$EXECLIB_NAME\" >> ../out/log'\n",
    );
    let mut daemon = Daemon::start(&sandbox, &config);
    let mount = mount; // dropped before the daemon: a failing test lets the server go first
    let addr = crate::support::web::http_addr(&daemon);
    // More downloads than the runtime has workers (one per core), each under way
    // (its first MiB read).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (go, started) = std::sync::mpsc::channel();
    let downloads: Vec<_> = (0..workers + 2)
        .map(|_| {
            let (addr, go) = (addr.clone(), go.clone());
            let (resume_tx, resume) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(&addr).unwrap();
                let head = format!("GET /big.bin HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                stream.write_all(head.as_bytes()).unwrap();
                let mut first = vec![0u8; 1 << 20];
                stream.read_exact(&mut first).unwrap();
                go.send(()).unwrap();
                resume.recv().unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest); // ends at the timeout, or closed
                first.len() + rest.len()
            });
            (thread, resume_tx)
        })
        .collect();
    for _ in 0..downloads.len() {
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("a download under way");
    }
    // Opened while the mount answers; its pages dropped once it no longer does, so
    // what is left of each download must be asked of the stopped server.
    let open = std::fs::File::open(sandbox.path("src/big.bin")).unwrap();
    mount.hang();
    // SAFETY: advice on an open descriptor; it only drops cached pages.
    let advised = unsafe { libc::posix_fadvise(open.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(advised, 0);
    std::mem::forget(open); // its close would wait for the stopped server
    for (_, resume) in &downloads {
        resume.send(()).unwrap();
    }
    eventually("a download waiting on the stopped server", || {
        (threads_on_fuse(daemon.pid()) > 0).then_some(())
    });
    // The daemon goes on meanwhile: its control socket answers, and answers again.
    for _ in 0..2 {
        assert!(
            daemon
                .request_within(r#"{"cmd":"listeners"}"#, Duration::from_secs(2))
                .is_ok(),
            "{}",
            daemon.log()
        );
    }
    // And jobs run: the downloads' files, open on the stopped server, are not in
    // their processes' descriptor tables (closing one there waited for the server).
    sandbox.write("plain/a.txt", "1");
    eventually("docs's job", || {
        sandbox.read("out/log").filter(|l| l.contains("a.txt"))
    });
    // Once the server answers again, the downloads go on and the daemon stops as usual.
    drop(mount);
    let got: Vec<usize> = downloads.into_iter().map(|(t, _)| t.join().unwrap()).collect();
    assert!(got.iter().all(|&n| n > 1 << 20), "{got:?}");
    terminates(&mut daemon, Duration::from_secs(8), "");
}

#[test]
fn regression_small_files_on_a_fuse_mount_under_a_local_site_root_were_cached() {
    // The root is local, so its files are cached; a folder under it is a FUSE mount.
    // Its files were cached too, though their `stat` may answer from an attribute
    // cache that lags behind them, and a hit's walk and `fstat` run on the runtime's
    // thread. Now only the root's own file system's files are kept: those on the
    // mount are looked up on the blocking pool, and with its server gone only they
    // wait.
    let sandbox = Sandbox::new();
    let Some(mount) = HungMount::mount_at(&sandbox, "real", "public/shared") else {
        return;
    };
    sandbox.write("public/local.css", "local");
    std::fs::write(sandbox.path("real/remote.css"), "remote").unwrap();
    let config = sandbox.config(
        "[daemon]\nshutdown_grace_ms = 2000\n[server]\nlisten = \"127.0.0.1:0\"\nroot = \"public\"\nlivereload = false\n\
         [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"real\"\n  run = [\"true\"]\n",
    );
    let daemon = Daemon::start(&sandbox, &config);
    let mount = mount; // dropped before the daemon: a failing test lets the server go first
    let addr = crate::support::web::http_addr(&daemon);
    let get = |path: &str| crate::support::web::get(&addr, path, &[]);
    let cached = || {
        ask(&daemon, r#"{"cmd":"status"}"#, Duration::from_secs(2)).unwrap()["server"]["cached_files"]
            .as_u64()
    };
    // Each asked for until the local file is cached (it has been quiet for a second).
    eventually("the local file cached", || {
        assert_eq!(get("/local.css").text(), "local");
        assert_eq!(get("/shared/remote.css").text(), "remote");
        (cached()? >= 1).then_some(())
    });
    assert_eq!(get("/shared/remote.css").text(), "remote");
    assert_eq!(
        cached(),
        Some(1),
        "only the file on the root's own file system is kept"
    );

    requests_wait_on_the_mount_while_the_daemon_answers(
        daemon,
        mount,
        "/shared/remote.css",
        ("/local.css", "local"),
    );
}

#[test]
fn regression_a_hit_on_a_cached_file_under_a_mount_made_since_froze_the_daemon() {
    // `dir/page.css` is cached while `dir` is a plain folder; then a FUSE file system
    // is mounted at `dir`, and its server stops. A hit walked to the file through
    // the mount on the runtime's thread, and each such request held a worker.
    let sandbox = Sandbox::new();
    sandbox.write("public/dir/page.css", "local");
    sandbox.write("public/other.css", "other");
    // Nothing else looks into the mount (a listener on `public` would, and the kernel
    // would then answer the hit's lookups from its own cache for a while).
    std::fs::create_dir_all(sandbox.path("plain")).unwrap();
    let config = sandbox.config(
        "[daemon]\nshutdown_grace_ms = 2000\n[server]\nlisten = \"127.0.0.1:0\"\nroot = \"public\"\nlivereload = false\n\
         [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"plain\"\n  run = [\"true\"]\n",
    );
    let daemon = Daemon::start(&sandbox, &config);
    let addr = crate::support::web::http_addr(&daemon);
    let get = |path: &str| crate::support::web::get(&addr, path, &[]);
    let cached = || {
        ask(&daemon, r#"{"cmd":"status"}"#, Duration::from_secs(2)).unwrap()["server"]["cached_files"]
            .as_u64()
    };
    eventually("both files cached", || {
        assert_eq!(get("/dir/page.css").text(), "local");
        assert_eq!(get("/other.css").text(), "other");
        (cached()? == 2).then_some(())
    });
    // The folder swapped for an empty one (bindfs mounts on empty folders only).
    std::fs::rename(sandbox.path("public/dir"), sandbox.path("dir.old")).unwrap();
    std::fs::create_dir_all(sandbox.path("real")).unwrap();
    std::fs::write(sandbox.path("real/page.css"), "mounted").unwrap();
    let Some(mount) = HungMount::mount_at(&sandbox, "real", "public/dir") else {
        return;
    };
    requests_wait_on_the_mount_while_the_daemon_answers(
        daemon,
        mount,
        "/dir/page.css",
        ("/other.css", "other"),
    );
}

/// Stops `mount`'s server and sends more requests for `stuck` (a file under it) than
/// the runtime has workers; meanwhile the control socket answers and `local`'s
/// cached file is served, twice; then the daemon stops at SIGTERM.
fn requests_wait_on_the_mount_while_the_daemon_answers(
    mut daemon: Daemon,
    mount: HungMount,
    stuck: &'static str,
    (local, text): (&str, &str),
) {
    let mount = mount; // a local, so dropped before the daemon if this fails
    let addr = crate::support::web::http_addr(&daemon);
    mount.hang();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let waiting: Vec<_> = (0..workers + 2)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let _ = crate::support::web::get(&addr, stuck, &[]);
            })
        })
        .collect();
    eventually("requests waiting on the stopped server", || {
        (threads_on_fuse(daemon.pid()) > 0).then_some(())
    });
    for _ in 0..2 {
        assert!(
            ask(&daemon, r#"{"cmd":"status"}"#, Duration::from_secs(2)).is_some(),
            "{}",
            daemon.log()
        );
        assert_eq!(
            crate::support::web::get(&addr, local, &[]).text(),
            text,
            "a hit on a local file meanwhile"
        );
    }
    drop(mount);
    terminates(&mut daemon, Duration::from_secs(10), "HTTP server stopped");
    for thread in waiting {
        thread.join().unwrap();
    }
}
