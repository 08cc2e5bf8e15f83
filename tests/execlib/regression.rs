//! Regression tests, each named for the bug it pins.

use crate::support::*;
use std::os::unix::ffi::OsStrExt;

#[test]
fn background_child_of_a_finished_job_is_terminated() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("sleep 300 & echo $! > ../out/bg", ""));
    let _daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    let pid: i32 = sandbox.wait_out("bg").trim().parse().unwrap();
    eventually("the job's stray child to be gone", || (!alive(pid)).then_some(()));
}

#[test]
fn non_utf8_file_names_reach_jobs_byte_for_byte() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route(r#"printf '%s' "$EXECLIB_NAME" > ../out/name"#, ""));
    let _daemon = Daemon::start(&sandbox, &config);
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.md");
    std::fs::write(sandbox.path("src").join(name), "x").unwrap();
    let got = wait_content(&sandbox.path("out/name"));
    assert_eq!(got, b"caf\xe9.md");
}

#[test]
fn listeners_reply_survives_a_non_utf8_path() {
    let sandbox = Sandbox::new();
    // A config in a directory whose name is not UTF-8: its route path is not either.
    let base = sandbox.dir.path().join(std::ffi::OsStr::from_bytes(b"site-\xff"));
    std::fs::create_dir_all(base.join("src")).unwrap();
    let socket = sandbox.socket();
    let body = format!("[control]\nsocket = {socket:?}\n\n{}", one_route("true", ""));
    std::fs::write(base.join("site.toml"), body).unwrap();
    let daemon = Daemon::start(&sandbox, &base.join("site.toml"));
    let reply = daemon.request(r#"{"cmd":"listeners"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let hex: String = base
        .join("src")
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        reply["listeners"][0]["paths"][0]["hex"],
        hex.as_str(),
        "lossless: {reply}"
    );
    let table = String::from_utf8(daemon.ctl(&["listeners"]).stdout).unwrap();
    assert!(table.contains("site-\\xff/src"), "{table}");
}

#[test]
fn file_names_cannot_forge_log_lines() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("echo done >> ../out/runs", ""));
    let daemon = Daemon::start(&sandbox, &config);
    let forged = "2026-01-01T00:00:00.000000Z ERROR inotify queue overflowed: rescan found 999 changed files";
    let name = format!("x\n{forged}\ry\tz\u{1b}[31m");
    sandbox.write(&format!("src/{name}"), "1");
    sandbox.wait_out("runs");
    eventually("the job's end in the log", || {
        daemon.log().contains("job finished").then_some(())
    });
    let log = daemon.log();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a file name started a log line:\n{log}"
    );
    assert!(
        log.contains(&format!("x\\n{forged}\\ry\\tz\\u{{1b}}[31m")),
        "{log}"
    );
    assert!(!log.contains('\r') && !log.contains('\u{1b}'), "{log}");
}

#[test]
fn non_utf8_names_are_lossless_in_replies_logs_and_trigger() {
    let sandbox = Sandbox::new();
    let job = r#"printf '%s' "$EXECLIB_NAME" > "../out/$EXECLIB_NAME.name"; sleep 2"#;
    let config = sandbox.config(&one_route(job, ""));
    let daemon = Daemon::start(&sandbox, &config);
    let (a, b) = (&b"bad\xff\xfe.txt"[..], &b"bad\xfe\xff.txt"[..]);
    for name in [a, b] {
        std::fs::write(sandbox.path("src").join(std::ffi::OsStr::from_bytes(name)), "x").unwrap();
    }
    let reply = eventually("both jobs running", || {
        let reply = daemon.request(r#"{"cmd":"jobs"}"#);
        (reply["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["state"] == "running")
            .count()
            == 2)
            .then_some(reply)
    });
    let hexes: Vec<&str> = reply["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["file"]["hex"].as_str().unwrap())
        .collect();
    let hex = |bytes: &[u8]| -> String {
        let path = sandbox.path("src").join(std::ffi::OsStr::from_bytes(bytes));
        path.as_os_str()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert!(
        hexes.contains(&hex(a).as_str()) && hexes.contains(&hex(b).as_str()),
        "{reply}"
    );
    let table = String::from_utf8(daemon.ctl(&["jobs"]).stdout).unwrap();
    assert!(
        table.contains("src/bad\\xff\\xfe.txt") && table.contains("src/bad\\xfe\\xff.txt"),
        "{table}"
    );
    eventually("the names in the log", || {
        let log = daemon.log();
        (log.contains("bad\\xff\\xfe.txt") && log.contains("bad\\xfe\\xff.txt")).then_some(())
    });
    // `trigger` takes any bytes, from the command line and over the protocol.
    std::fs::remove_dir_all(sandbox.path("out")).unwrap();
    std::fs::create_dir(sandbox.path("out")).unwrap();
    let arg = std::ffi::OsStr::from_bytes(b"src/bad\xff\xfe.txt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_execlibctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("trigger")
        .arg("docs")
        .arg(arg)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 route matched",
        "{out:?}"
    );
    let got = wait_content(
        &sandbox
            .path("out")
            .join(std::ffi::OsStr::from_bytes(b"bad\xff\xfe.txt.name")),
    );
    assert_eq!(got, a);
    let nul = daemon.request(r#"{"cmd":"trigger","listener":"docs","path":"src/a\u0000b"}"#);
    assert_eq!(nul["error"]["code"], "bad_request", "{nul}");
}

#[test]
fn trigger_resolves_a_relative_path_against_the_config_directory() {
    let sandbox = Sandbox::new();
    sandbox.write("src/content/t1.md", "x");
    let config = sandbox.config(&one_route(r#"echo "$EXECLIB_PATH" >> ../out/paths"#, ""));
    let daemon = Daemon::start(&sandbox, &config);
    // `src/content/t1.md` from the config's directory, not `src/src/content/t1.md`.
    let reply = daemon.request(r#"{"cmd":"trigger","listener":"docs","path":"src/content/t1.md"}"#);
    assert_eq!(reply["matched"], 1, "{reply}");
    let want = sandbox.path("src/content/t1.md");
    assert_eq!(sandbox.wait_out("paths").trim(), want.to_str().unwrap());
    // A path under no route that way is taken relative to the route's path.
    let reply = daemon.request(r#"{"cmd":"trigger","listener":"docs","path":"content/t1.md"}"#);
    assert_eq!(reply["matched"], 1, "{reply}");
    eventually("the second run", || {
        let paths = sandbox.read("out/paths").unwrap_or_default();
        (paths.lines().count() == 2).then_some(())
    });
    let paths = sandbox.read("out/paths").unwrap();
    assert!(paths.lines().all(|l| l == want.to_str().unwrap()), "{paths}");
}

#[test]
fn blank_lines_do_not_keep_an_idle_connection_open() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    let mut client = Client::connect(&daemon.socket);
    let start = std::time::Instant::now();
    // Idle timeout is 1 s in tests; keep sending blank lines for longer.
    let reply = loop {
        client.send_line(b"");
        client
            .reader
            .get_ref()
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        if let Some(reply) = client.reply() {
            break reply;
        }
        assert!(start.elapsed() < DEADLINE, "never timed out");
    };
    assert_eq!(reply["error"]["code"], "timeout");
    assert!(start.elapsed() < std::time::Duration::from_secs(3));
}

#[test]
fn silent_connections_cannot_lock_out_other_clients() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("idle_timeout_ms = 1000", "idle_timeout_ms = 30000");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&sandbox, &config);
    let mut silent: Vec<Client> = (0..64).map(|_| Client::connect(&daemon.socket)).collect();
    // Every slot is taken by a silent client; a newcomer is still answered at once...
    let start = std::time::Instant::now();
    let out = daemon.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    // ...because the longest idle gave its slot up, and was told so.
    let evicted = silent[0].reply().expect("a reply to the evicted client");
    assert_eq!(evicted["error"]["code"], "busy", "{evicted}");
    assert!(
        evicted["error"]["message"]
            .as_str()
            .unwrap()
            .contains("make room"),
        "{evicted}"
    );
}

#[test]
fn regression_a_blank_line_after_a_request_held_its_slot_until_the_idle_timeout() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::start(&sandbox, &sandbox.config(&one_route("true", "")));
    // 64 clients each send a request followed by a blank line, read the reply and
    // go silent: every slot is then idle, and a newcomer takes one.
    let mut silent: Vec<Client> = (0..64)
        .map(|_| {
            let mut c = Client::connect(&daemon.socket);
            c.send_line(b"{\"cmd\":\"status\"}\n");
            c
        })
        .collect();
    for c in &mut silent {
        assert!(c.reply().is_some_and(|r| r["ok"] == true));
    }
    let out = daemon.ctl(&["status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn busy_reply_reaches_execlibctl_after_it_wrote_its_request() {
    let sandbox = Sandbox::new();
    // A job that ignores SIGTERM: a stop waits out the 8 s grace, and every other
    // stop waits behind it, so 64 connections are all being answered.
    let job = "trap '' TERM; echo started > ../out/started; sleep 30";
    let config = sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 8000\n{}",
        one_route(job, "")
    ));
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    sandbox.wait_out("started");
    let stoppers: Vec<Client> = (0..64)
        .map(|_| {
            let mut c = Client::connect(&daemon.socket);
            c.send_line(br#"{"cmd":"stop","listener":"docs"}"#);
            c
        })
        .collect();
    // The daemon accepts connections in the order they were made, so this one comes
    // after every stopper, each with its request written: whether still in its socket,
    // read into its task's buffer or being answered, none is idle, so none gives way.
    let out = daemon.ctl(&["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "busy is the daemon's answer, not 'no daemon': {stderr}"
    );
    assert!(stderr.contains("busy"), "{stderr}");
    drop(stoppers);
}

#[test]
fn directory_moved_out_and_recreated_at_once_is_watched() {
    let sandbox = Sandbox::new();
    sandbox.write("src/a/old", "1");
    std::fs::create_dir(sandbox.path("outside")).unwrap();
    let config = sandbox.config(&log_route(""));
    let daemon = Daemon::start(&sandbox, &config);
    let src = sandbox.path("src");
    let script = "mv a ../outside/ && mkdir a && echo x > a/f";
    assert!(
        std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(&src)
            .status()
            .unwrap()
            .success()
    );
    wait_log(&sandbox, "a/old delete");
    // `create` from the scan, plus `modify` if the write landed after the new watch.
    eventually("a run for a/f", || {
        log_lines(&sandbox)
            .iter()
            .any(|l| l.starts_with("a/f create"))
            .then_some(())
    });
    sandbox.write("src/a/g", "later");
    wait_log(&sandbox, "a/g create,modify");
    assert_eq!(daemon.listener("docs")["watches"], 2, "src and the new src/a");
}

#[test]
fn root_replaced_reports_exactly_what_differs() {
    let sandbox = Sandbox::new();
    sandbox.write("src/kept", "same");
    sandbox.write("src/gone", "1");
    let config = sandbox.config(&log_route(""));
    let daemon = Daemon::start(&sandbox, &config);
    std::fs::rename(sandbox.path("src"), sandbox.path("src.old")).unwrap();
    eventually("degraded", || {
        (daemon.listener("docs")["state"] == "degraded").then_some(())
    });
    std::fs::create_dir(sandbox.path("src")).unwrap();
    std::fs::write(sandbox.path("src/kept"), "same").unwrap();
    std::fs::write(sandbox.path("src/new"), "1").unwrap();
    wait_log(&sandbox, "gone delete");
    wait_log(&sandbox, "new create");
    wait_log(&sandbox, "kept modify"); // a new file (new inode) under the old name
}

#[test]
fn catch_up_keeps_a_change_still_waiting_out_its_delay_at_shutdown() {
    let sandbox = Sandbox::new();
    sandbox.write("src/f", "v1");
    let route = log_route("").replace("delay_ms = 10", "delay_ms = 3000");
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\n{}",
        route.replacen("name = \"docs\"\n", "name = \"docs\"\ncatch_up = true\n", 1)
    );
    let config = sandbox.config(&body);
    let mut daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/f", "v2, longer");
    eventually("the change to be seen", || {
        (daemon.listener("docs")["events"].as_u64() > Some(0)).then_some(())
    });
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit();
    assert!(log_lines(&sandbox).is_empty(), "its run had not started");
    let _daemon = Daemon::start(&sandbox, &config);
    wait_log(&sandbox, "f modify");
}

#[test]
fn a_post_command_running_at_shutdown_ends_after_the_grace() {
    let sandbox = Sandbox::new();
    let body = one_route(r#"echo "job $EXECLIB_NAME" >> ../out/log"#, "")
        + "  [[listener.post]]\n  shell = 'echo post started >> out/log; exec sleep 60'\n";
    let config = sandbox.config(&format!("[daemon]\nshutdown_grace_ms = 500\n{body}"));
    let mut daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a.md", "x");
    wait_log(&sandbox, "post started");
    daemon.signal(libc::SIGTERM);
    let (status, took) = daemon.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "a hanging post held the shutdown for {took:?}"
    );
    assert!(
        daemon.log().contains("grace over: terminating post commands"),
        "{}",
        daemon.log()
    );
}

#[test]
fn busy_reply_is_read_even_when_writing_the_request_fails() {
    // A daemon that answers `busy` and closes without reading: a large request's write
    // then fails (EPIPE), but the reply is there to read and must be reported.
    let sandbox = Sandbox::new();
    let socket = sandbox.path("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .write_all(b"{\"ok\":false,\"error\":{\"code\":\"busy\",\"message\":\"64 requests are being answered\"}}\n")
            .unwrap();
    });
    // Two arguments under the kernel's 128 KiB cap each, together over the socket's buffer.
    let long = "x".repeat(120 * 1024);
    let out = ctl(
        &["--socket", socket.to_str().unwrap()],
        &["trigger", &long, &long],
    );
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("busy: 64 requests are being answered"),
        "{stderr}"
    );
}

/// Every process whose process group is one of `groups`.
fn processes_in(groups: &[i32]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            proc_stat_field(pid, 5)
                .and_then(|pgrp| pgrp.parse::<i32>().ok())
                .is_some_and(|pgrp| groups.contains(&pgrp))
        })
        .filter(|&pid| alive(pid))
        .collect()
}

#[test]
fn no_overlapping_runs_after_a_sigkill_restart() {
    let sandbox = Sandbox::new();
    let _reap = ReapJobs(&sandbox);
    // Each run holds a lock on its file's lock file for as long as any process of it
    // lives; a run that cannot take it overlaps an earlier run of the same file.
    let job = r#"exec 9>>"../out/$EXECLIB_NAME.lock"; flock -n 9 || echo "$EXECLIB_NAME" >> ../out/overlaps; echo $$ >> ../out/pids; sleep 1000"#;
    let config = sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 2000\n{}",
        one_route(job, "").replacen(
            "name = \"docs\"\n",
            "name = \"docs\"\ncatch_up = true\nmax_jobs = 64\n",
            1
        )
    ));
    let mut first = Daemon::start(&sandbox, &config);
    for i in 0..50 {
        sandbox.write(&format!("src/f{i}"), "x");
    }
    let pids = |n: usize| {
        eventually(&format!("{n} job pids"), || {
            let text = sandbox.read("out/pids").unwrap_or_default();
            let pids: Vec<i32> = text.lines().filter_map(|l| l.parse().ok()).collect();
            (pids.len() >= n).then_some(pids)
        })
    };
    let old = pids(50);
    first.signal(libc::SIGKILL);
    first.wait_exit();
    assert_eq!(
        processes_in(&old).len(),
        100,
        "the old jobs (sh and sleep) outlive the daemon"
    );
    let _second = Daemon::start(&sandbox, &config);
    assert!(
        processes_in(&old).is_empty(),
        "old jobs ended before READY: {:?}",
        processes_in(&old)
    );
    let all = pids(100);
    assert_eq!(sandbox.read("out/overlaps"), None, "two runs of one file at once");
    assert_eq!(all.len(), 100);
}

/// Kills, when the test ends however it ends, every process of the job groups
/// listed in `out/pids`.
struct ReapJobs<'a>(&'a Sandbox);

impl Drop for ReapJobs<'_> {
    fn drop(&mut self) {
        let text = self.0.read("out/pids").unwrap_or_default();
        let groups: Vec<i32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        for pid in processes_in(&groups) {
            // SAFETY: signalling the test's own leftover processes.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_grandchild_that_escapes_its_job_is_ended_at_shutdown() {
    let sandbox = Sandbox::new();
    // A daemonizing double fork: the grandchild leaves the job's process group (setsid)
    // and outlives the job; the parent that started it exits at once. It also clears
    // its environment, so its listener's stop cannot tell it came from there.
    let job = "setsid env -i sh -c 'sleep 300 & echo $! > ../out/escaped' & wait";
    let config = sandbox.config(&one_route(job, ""));
    let mut daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    let pid: i32 = sandbox.wait_out("escaped").trim().parse().unwrap();
    eventually("the job's end", || {
        daemon.log().contains("job finished").then_some(())
    });
    assert!(alive(pid), "process groups cannot catch it: it outlives its job");
    let status = String::from_utf8(daemon.ctl(&["status"]).stdout).unwrap();
    assert!(status.contains("subreaper"), "{status}");
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit();
    assert!(!alive(pid), "adopted and ended at shutdown");
    assert!(
        daemon
            .log()
            .contains("terminating processes that escaped their jobs")
    );
}

#[test]
fn regression_processes_several_sessions_deep_are_all_ended_at_shutdown() {
    // Each level calls `setsid` and starts the next: killing one orphans the next,
    // in a session of its own. Shutdown collected the escapees once, so each pass
    // (the listener's stop, then the daemon's) ended one level and the rest lived on.
    let sandbox = Sandbox::new();
    let script = sandbox.path("levels.sh");
    std::fs::write(
        &script,
        "echo $$ >> \"$2\"\nif [ \"$1\" -gt 0 ]; then setsid sh \"$0\" $(($1 - 1)) \"$2\" & fi\nexec sleep 300\n",
    )
    .unwrap();
    let pids = sandbox.path("out/pids");
    // The job waits (at most 5 s) until every level has its own session: one still in
    // the job's process group when the job ends is ended with it, as it should be.
    let job = format!(
        "setsid -f sh {script} 4 {pids}; for i in $(seq 500); do [ \"$(cat {pids} 2>/dev/null | wc -l)\" -ge 5 ] && break; sleep 0.01; done",
        script = script.display(),
        pids = pids.display()
    );
    let config = sandbox.config(&one_route(&job, ""));
    let mut daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    let levels: Vec<i32> = eventually("five levels running", || {
        let text = sandbox.read("out/pids")?;
        let levels: Vec<i32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        (levels.len() == 5 && levels.iter().all(|&p| alive(p))).then_some(levels)
    });
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit();
    let left: Vec<i32> = levels.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        left.is_empty(),
        "still running after shutdown: {left:?} of {levels:?}"
    );
}

#[test]
fn a_grandchild_that_escapes_its_job_is_ended_when_its_listener_stops() {
    let sandbox = Sandbox::new();
    let job = "setsid sh -c 'sleep 300 & echo $! > ../out/escaped' & wait";
    let config = sandbox.config(&one_route(job, ""));
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    let pid: i32 = sandbox.wait_out("escaped").trim().parse().unwrap();
    eventually("the job's end", || {
        daemon.log().contains("job finished").then_some(())
    });
    assert!(alive(pid), "it outlives its job");
    assert!(daemon.ctl(&["stop", "docs"]).status.success());
    eventually("ended with its listener, the daemon still running", || {
        (!alive(pid)).then_some(())
    });
    assert!(
        daemon
            .log()
            .contains("terminating processes that escaped this listener's jobs")
    );
    assert!(daemon.ctl(&["status"]).status.success());
}

#[test]
fn an_escaped_grandchild_that_exits_is_reaped() {
    let sandbox = Sandbox::new();
    let job = "setsid sh -c 'sleep 1 & echo $! > ../out/escaped' & wait";
    let config = sandbox.config(&one_route(job, ""));
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    let pid: i32 = sandbox.wait_out("escaped").trim().parse().unwrap();
    // Adopted by the daemon when its parent exits; reaped (no zombie) when it exits.
    let parent = || proc_stat_field(pid, 4)?.parse::<i32>().ok();
    eventually("adopted by the daemon", || {
        (parent() == Some(daemon.pid())).then_some(())
    });
    eventually("reaped after it exits", || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
}
