//! `execlibctl` and the control commands: listeners, start, stop, status, exit codes.

use crate::support::*;

#[test]
fn stop_stops_reacting_and_start_resumes() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("echo x > ../out/$EXECLIB_NAME", ""));
    let daemon = Daemon::start(&sandbox, &config);

    let out = daemon.ctl(&["stop", "docs"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "stopped docs");
    assert_eq!(
        daemon.request(r#"{"cmd":"stop","listener":"docs"}"#)["changed"],
        false
    );
    assert_eq!(daemon.listener("docs")["state"], "stopped");
    assert_eq!(daemon.listener("docs")["watches"], 0);
    sandbox.write("src/while-stopped", "x");

    assert_eq!(
        daemon.request(r#"{"cmd":"start","listener":"docs"}"#)["changed"],
        true
    );
    assert_eq!(
        String::from_utf8_lossy(&daemon.ctl(&["start", "docs"]).stdout).trim(),
        "docs was already running"
    );
    sandbox.write("src/after-start", "x");
    sandbox.wait_out("after-start");
    assert!(
        sandbox.read("out/while-stopped").is_none(),
        "no job ran for a change made while stopped"
    );
    assert_eq!(daemon.listener("docs")["state"], "running");
}

#[test]
fn listeners_reports_state_and_counters() {
    let sandbox = Sandbox::new();
    let body = format!(
        "{}\n[[listener]]\nname = \"idle\"\nautostart = false\n  [[listener.route]]\n  path = \"src\"\n  shell = \"true\"\n",
        one_route("echo x > ../out/done", "")
    );
    let config = sandbox.config(&body);
    let daemon = Daemon::start(&sandbox, &config);
    std::fs::create_dir(sandbox.path("src/sub")).unwrap();
    sandbox.write("src/sub/x", "1");
    sandbox.wait_out("done");
    let docs = eventually("counters", || {
        let l = daemon.listener("docs");
        (l["jobs_started"] == 1 && l["jobs_running"] == 0).then_some(l)
    });
    assert_eq!(docs["state"], "running");
    assert_eq!(docs["watches"], 2, "src and the new src/sub");
    assert_eq!(docs["routes"], 1);
    assert_eq!(docs["paths"][0], sandbox.path("src").to_str().unwrap());
    assert!(docs["events"].as_u64().unwrap() >= 1);
    assert_eq!(docs["jobs_failed"], 0);
    assert_eq!(daemon.listener("idle")["state"], "stopped");

    let table = String::from_utf8_lossy(&daemon.ctl(&["listeners"]).stdout).into_owned();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("docs") && l.contains("running")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("idle") && l.contains("stopped")),
        "{table}"
    );

    let status = daemon.request(r#"{"cmd":"status"}"#);
    assert_eq!(status["instance"], "site");
    assert_eq!(status["pid"], daemon.pid());
    assert_eq!(status["listeners"]["running"], 1);
    assert_eq!(status["listeners"]["total"], 2);
    assert!(status["server"].is_null());
}

#[test]
fn ctl_exit_codes_and_json() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    let out = daemon.ctl(&["--json", "status"]);
    assert_eq!(out.status.code(), Some(0));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["ok"], true);
    let out = daemon.ctl(&["stop", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_listener"));
    assert_eq!(daemon.ctl(&["frobnicate"]).status.code(), Some(2));
    let missing = sandbox.path("nobody.sock");
    let out = ctl(&["--socket", missing.to_str().unwrap()], &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(missing.to_str().unwrap()));
}

#[test]
fn trigger_runs_the_matching_routes() {
    let sandbox = Sandbox::new();
    let body = r#"[[listener]]
name = "docs"
  [[listener.route]]
  name = "pages"
  path = "src"
  glob = "**/*.md"
  debounce_ms = 0
  shell = 'echo "pages $EXECLIB_NAME $EXECLIB_EVENT" >> ../out/log'
  [[listener.route]]
  name = "text"
  path = "src"
  glob = "**/*.txt"
  debounce_ms = 0
  shell = 'echo "text $EXECLIB_NAME" >> ../out/log'
"#;
    let config = sandbox.config(body);
    sandbox.write("src/sub/a.md", "x");
    let daemon = Daemon::start(&sandbox, &config);
    let reply = daemon.request(r#"{"cmd":"trigger","listener":"docs","path":"sub/a.md"}"#);
    assert_eq!(reply["matched"], 1, "{reply}");
    wait_log(&sandbox, "pages sub/a.md modify");
    // Relative to the config's directory, and absolute, work too.
    let out = daemon.ctl(&["trigger", "docs", "src/sub/a.md"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 route matched");
    let absolute = sandbox.path("src/b.txt");
    let reply = daemon.request(&format!(
        r#"{{"cmd":"trigger","listener":"docs","path":{:?}}}"#,
        absolute.to_str().unwrap()
    ));
    assert_eq!(reply["matched"], 1);
    wait_log(&sandbox, "text b.txt");
    assert_eq!(
        daemon.request(r#"{"cmd":"trigger","listener":"docs","path":"c.png"}"#)["matched"],
        0
    );
    let reply = daemon.request(r#"{"cmd":"trigger","listener":"docs","path":"../site.toml"}"#);
    assert_eq!(reply["error"]["code"], "bad_request");
    daemon.ctl(&["stop", "docs"]);
    let reply = daemon.request(r#"{"cmd":"trigger","listener":"docs","path":"sub/a.md"}"#);
    assert_eq!(reply["error"]["code"], "not_running", "{reply}");
    let reply = daemon.request(r#"{"cmd":"trigger","listener":"nope","path":"a.md"}"#);
    assert_eq!(reply["error"]["code"], "unknown_listener");
}

#[test]
fn jobs_lists_running_and_queued_and_listeners_the_last_failure() {
    let sandbox = Sandbox::new();
    let body = r#"[daemon]
shutdown_grace_ms = 500
[[listener]]
name = "docs"
max_jobs = 1
  [[listener.route]]
  name = "slow"
  path = "src"
  debounce_ms = 0
  delay_ms = 0
  shell = 'echo $$ > ../out/pid-$EXECLIB_NAME; exec sleep 5'
[[listener]]
name = "broken"
  [[listener.route]]
  name = "fails"
  path = "other"
  debounce_ms = 0
  shell = 'exit 3'
"#;
    std::fs::create_dir(sandbox.path("other")).unwrap();
    let config = sandbox.config(body);
    let mut daemon = Daemon::start(&sandbox, &config);
    // Each file arrives by rename: one event, so each is queued exactly once.
    for name in ["a", "b", "c"] {
        sandbox.write(&format!("staging/{name}"), "x");
        std::fs::rename(
            sandbox.path(&format!("staging/{name}")),
            sandbox.path(&format!("src/{name}")),
        )
        .unwrap();
    }
    let jobs = eventually("one running and two waiting", || {
        let jobs = daemon.request(r#"{"cmd":"jobs"}"#)["jobs"].as_array().cloned()?;
        let states: Vec<&str> = jobs.iter().map(|j| j["state"].as_str().unwrap()).collect();
        (states == ["running", "waiting", "waiting"] && jobs[0]["pid"].is_u64()).then_some(jobs)
    });
    let running = &jobs[0];
    assert_eq!(
        (running["listener"].as_str(), running["route"].as_str()),
        (Some("docs"), Some("slow"))
    );
    let file = running["file"].as_str().unwrap();
    let name = file.rsplit('/').next().unwrap();
    assert_eq!(
        sandbox.wait_out(&format!("pid-{name}")).trim(),
        running["pid"].to_string()
    );
    assert!(running["running_ms"].is_u64());
    assert_eq!(daemon.listener("docs")["jobs_queued"], 2);
    let table = String::from_utf8_lossy(&daemon.ctl(&["jobs"]).stdout).into_owned();
    assert!(
        table.starts_with("LISTENER") && table.contains("running") && table.contains("waiting"),
        "{table}"
    );

    sandbox.write("other/x", "x");
    let failure = eventually("the failure", || {
        let f = daemon.listener("broken")["last_failure"].clone();
        (!f.is_null()).then_some(f)
    });
    assert_eq!(failure["route"], "fails");
    assert_eq!(failure["file"], sandbox.path("other/x").to_str().unwrap());
    assert_eq!(failure["reason"], "exit code 3");
    assert!(failure["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(daemon.listener("docs")["last_failure"].is_null());
    daemon.ctl(&["shutdown"]);
    daemon.wait_exit();
}

/// The run intervals the jobs recorded: lines "start PID NS" and "end PID NS".
fn run_intervals(text: &str) -> Vec<(u128, u128)> {
    let mut starts = std::collections::HashMap::new();
    let mut runs = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (pid, at) = (fields[1], fields[2].parse::<u128>().unwrap());
        match fields[0] {
            "start" => assert!(starts.insert(pid, at).is_none(), "{text}"),
            _ => runs.push((starts.remove(pid).expect("a start before the end"), at)),
        }
    }
    assert!(starts.is_empty(), "runs without an end: {starts:?}");
    runs.sort();
    runs
}

#[test]
fn max_jobs_1_never_runs_two_jobs_at_once() {
    let sandbox = Sandbox::new();
    // Each run writes its own start and end, in nanoseconds, around a sleep: two runs
    // at once would show as overlapping intervals.
    let job = r#"echo "start $$ $(date +%s%N)" >> ../out/runs; sleep 0.05; echo "end $$ $(date +%s%N)" >> ../out/runs"#;
    let config = sandbox.config(&one_route(job, "").replacen(
        "name = \"docs\"\n",
        "name = \"docs\"\nmax_jobs = 1\n",
        1,
    ));
    let _daemon = Daemon::start(&sandbox, &config);
    for i in 0..20 {
        sandbox.write(&format!("src/f{i}"), "x");
    }
    let text = eventually("20 runs ended", || {
        let text = sandbox.read("out/runs").unwrap_or_default();
        (text.lines().filter(|l| l.starts_with("end ")).count() >= 20).then_some(text)
    });
    let text = settled("the runs", std::time::Duration::from_millis(500), || {
        sandbox.read("out/runs").unwrap_or(text.clone())
    });
    let runs = run_intervals(&text);
    for pair in runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "a run started before the previous one ended: {pair:?} in\n{text}"
        );
    }
}

/// `execlibctl --socket SOCKET ARGS` with `stdout` as its standard output; its
/// exit code and standard error once it exits.
fn ctl_to(daemon: &Daemon, args: &[&str], stdout: std::process::Stdio) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_execlibctl"))
        .args(["--socket", daemon.socket.to_str().unwrap()])
        .args(args)
        .stdout(stdout)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn regression_execlibctl_exits_quietly_when_its_reader_went_away() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    for (args, code) in [
        (&["status"][..], 0),
        (&["metrics"], 0),
        (&["events"], 0),
        (&["--json", "events", "--follow"], 0),
        (&["--json", "stop", "nope"], 1),
    ] {
        // A pipe whose reader is gone (`execlibctl status | true`): EPIPE at once.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let (status, stderr) = ctl_to(&daemon, args, writer.into());
        assert_eq!((status, stderr.as_str()), (Some(code), ""), "{args:?}");
    }
}

#[test]
fn regression_execlibctl_says_it_cannot_write_its_output() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    for args in [&["status"][..], &["metrics"], &["--json", "events", "--follow"]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let (status, stderr) = ctl_to(&daemon, args, full.into());
        assert_eq!(status, Some(4), "{args:?}: {stderr}");
        assert_eq!(
            stderr, "execlibctl: cannot write output: No space left on device (os error 28)\n",
            "{args:?}"
        );
    }
}

#[test]
fn regression_a_pending_batch_run_showed_no_file_in_jobs() {
    let sandbox = Sandbox::new();
    let config = sandbox
        .config(&one_route("true", "mode = \"batch\"").replace("debounce_ms = 50", "debounce_ms = 60000"));
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    let job = eventually("the batch pending", || {
        let jobs = daemon.request(r#"{"cmd":"jobs"}"#)["jobs"].as_array().cloned()?;
        jobs.into_iter().find(|j| j["state"] == "pending")
    });
    let src = std::fs::canonicalize(sandbox.path("src")).unwrap();
    assert_eq!(
        job["file"],
        src.to_str().unwrap(),
        "the route's path, as when running: {job}"
    );
}
