//! Readiness, the control socket's life, and the ordered shutdown.

use crate::support::*;
use std::time::Duration;

#[test]
fn ready_is_sent_once_watches_are_in_place() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("echo seen > ../out/$EXECLIB_NAME", ""));
    let mut daemon = Daemon::start(&sandbox, &config);
    // Written the instant READY=1 arrived: it must not be missed.
    sandbox.write("src/first.txt", "x");
    assert_eq!(sandbox.wait_out("first.txt"), "seen\n");
    let ready = daemon.notify.wait_for("READY=1");
    assert!(
        ready.contains("STATUS=1/1 listeners running, 1 watches"),
        "{ready}"
    );
}

#[test]
fn watchdog_is_pinged_at_half_the_period_systemd_asks_for() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    // WatchdogSec=1s: a ping is due every 500 ms.
    let env = [("WATCHDOG_USEC", "1000000".to_owned())];
    let mut daemon = Daemon::spawn_env(&sandbox, &config, &[], Some("text"), &env);
    daemon.notify.wait_for("READY=1");
    let mut pings = Vec::new();
    while pings.len() < 7 {
        let (message, at) = daemon.notify.next().expect("a watchdog ping");
        if message.lines().any(|l| l == "WATCHDOG=1") {
            pings.push(at);
        }
    }
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    // Over six periods a late reading (the test is scheduled late under load) at
    // either end moves the mean by a sixth of it: ±100 ms holds up to 300 ms late.
    let mean = (pings[6] - pings[0]) / 6;
    assert!(
        mean >= Duration::from_millis(400) && mean <= Duration::from_millis(600),
        "pings every {mean:?} on average, not 500 ms: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g < Duration::from_secs(1)),
        "a gap of a whole period would have systemd kill the daemon: {gaps:?}"
    );
}

#[test]
fn no_watchdog_pings_when_not_asked() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let mut daemon = Daemon::start(&sandbox, &config);
    daemon.ctl(&["shutdown"]);
    daemon.notify.wait_for("STOPPING=1");
    assert!(
        !daemon.notify.messages.iter().any(|m| m.contains("WATCHDOG")),
        "{:?}",
        daemon.notify.messages
    );
}

#[test]
fn shutdown_command_is_answered_then_stops_in_order() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let mut daemon = Daemon::start(&sandbox, &config);
    let out = daemon.ctl(&["shutdown"]);
    assert!(out.status.success(), "{out:?}");
    daemon.notify.wait_for("STOPPING=1");
    let (status, _) = daemon.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(
        !sandbox.socket().exists(),
        "the control socket is removed on exit"
    );
    let log = daemon.log();
    let order = [
        "stopping listeners",
        "inotify closed",
        "listeners stopped",
        "no HTTP server to stop",
        "control socket closed and removed",
        "shutdown complete",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|step| {
            log.find(step)
                .unwrap_or_else(|| panic!("no {step:?} in log:\n{log}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "steps out of order:\n{log}"
    );
}

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let sandbox = Sandbox::new();
        let config = sandbox.config(&one_route("true", ""));
        let mut daemon = Daemon::start(&sandbox, &config);
        daemon.signal(signal);
        daemon.notify.wait_for("STOPPING=1");
        let (status, _) = daemon.wait_exit();
        assert_eq!(status.code(), Some(0), "signal {signal}");
        assert!(!sandbox.socket().exists());
    }
}

#[test]
fn job_trapping_sigterm_gets_it_and_daemon_exits_within_grace() {
    let sandbox = Sandbox::new();
    let job =
        "trap 'echo term > ../out/term; exit 0' TERM; echo up > ../out/started; while :; do sleep 0.05; done";
    let config = sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 5000\n{}",
        one_route(job, "")
    ));
    let mut daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a.txt", "x");
    sandbox.wait_out("started");
    daemon.signal(libc::SIGTERM);
    let (status, took) = daemon.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        sandbox.read("out/term").as_deref(),
        Some("term\n"),
        "the job got SIGTERM"
    );
    assert!(
        took < Duration::from_secs(4),
        "exited in {took:?}, well within the 5 s grace"
    );
}

#[test]
fn job_ignoring_sigterm_is_killed_after_the_grace() {
    let sandbox = Sandbox::new();
    let job = "trap '' TERM; echo $$ > ../out/pid; while :; do sleep 0.05; done";
    let config = sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 600\n{}",
        one_route(job, "")
    ));
    let mut daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a.txt", "x");
    let pid: i32 = sandbox.wait_out("pid").trim().parse().unwrap();
    assert!(alive(pid));
    daemon.signal(libc::SIGTERM);
    let (status, took) = daemon.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(600),
        "the grace was given: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "then SIGKILL: {took:?}");
    eventually("the job to be gone", || (!alive(pid)).then_some(()));
    assert!(daemon.log().contains("job outlived its grace: SIGKILL"));
}

#[test]
fn second_daemon_on_the_same_socket_refuses_to_start() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let _first = Daemon::start(&sandbox, &config);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_execlibd"))
        .args(["--log-format=text", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another execlibd is already running on"),
        "{stderr}"
    );
    assert!(sandbox.socket().exists(), "the live daemon's socket is untouched");
}

#[test]
fn stale_socket_is_replaced_but_other_files_are_not() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    // A socket file nobody listens on, as a crashed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(sandbox.socket()).unwrap());
    let mut daemon = Daemon::start(&sandbox, &config);
    assert_eq!(daemon.request(r#"{"cmd":"status"}"#)["ok"], true);
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit();

    std::fs::write(sandbox.socket(), "precious").unwrap();
    let mut daemon = Daemon::spawn(&sandbox, &config);
    let (status, _) = daemon.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(
        daemon.log().contains("exists and is not a socket"),
        "{}",
        daemon.log()
    );
    assert_eq!(sandbox.read("control.sock").as_deref(), Some("precious"));
}

#[test]
fn socket_gets_the_configured_group_as_root() {
    use std::os::unix::fs::MetadataExt;
    if skip_unless_root("give the socket to another group") {
        return;
    }
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[control]\n", "[control]\ngroup = \"nogroup\"\n"),
    )
    .unwrap();
    let _daemon = Daemon::start(&sandbox, &config);
    assert_eq!(std::fs::metadata(sandbox.socket()).unwrap().gid(), 65534);
}

#[test]
fn socket_gets_the_configured_mode() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[control]\n", "[control]\nmode = \"0600\"\n");
    std::fs::write(&config, text).unwrap();
    let _daemon = Daemon::start(&sandbox, &config);
    let mode = std::fs::metadata(sandbox.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
