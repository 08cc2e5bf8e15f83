//! `execlibctl history`, `explain` and `events` on the real daemon: runs recorded
//! with every outcome and read back after a restart, every reason `explain` gives,
//! and the event stream receiving a live event and ending at shutdown.

use crate::support::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// A route per outcome, by the file's extension: `.ok` exits 0, `.fail` 3, `.sig`
/// is killed by SIGKILL, `.slow` passes its 200 ms timeout, `.none` cannot start,
/// `.long` runs until its listener stops. Each prints two lines first.
fn outcomes() -> String {
    let route = |name: &str, glob: &str, extra: &str, command: &str| {
        format!(
            "  [[listener.route]]\n  name = \"{name}\"\n  path = \"src\"\n  glob = \"{glob}\"\n  debounce_ms = 20\n  delay_ms = 10\n  {extra}\n  {command}\n"
        )
    };
    let say = "echo \"start $EXECLIB_NAME\"; echo \"to stderr\" >&2;";
    [
        "[daemon]\nshutdown_grace_ms = 2000\n[[listener]]\nname = \"docs\"\n".to_owned(),
        route("ok", "*.ok", "", &format!("shell = '{say} exit 0'")),
        route("fail", "*.fail", "stage = 1", &format!("shell = '{say} exit 3'")),
        route("sig", "*.sig", "", &format!("shell = '{say} kill -9 $$'")),
        route(
            "slow",
            "*.slow",
            "timeout_ms = 200\n  kill_grace_ms = 100",
            &format!("shell = '{say} exec sleep 30'"),
        ),
        route("none", "*.none", "", "run = [\"/nonexistent/prog\"]"),
        route(
            "long",
            "*.long",
            "",
            &format!("shell = '{say} echo started > ../out/long; exec sleep 30'"),
        ),
    ]
    .concat()
}

/// `execlibctl --json ARGS` parsed.
/// `execlibctl --json ARGS` run in the config's directory (where the socket is).
fn json(daemon: &Daemon, args: &[&str]) -> Value {
    json_in(daemon, daemon.socket.parent().unwrap(), args)
}

/// `execlibctl --json ARGS` run in `dir`.
fn json_in(daemon: &Daemon, dir: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = daemon.ctl_in(dir, &all);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

fn runs(daemon: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["history"];
    all.extend_from_slice(args);
    json(daemon, &all)["runs"].as_array().unwrap().clone()
}

fn route_of(run: &Value) -> &str {
    run["route"].as_str().unwrap()
}

#[test]
fn history_records_every_outcome_and_survives_a_restart() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&outcomes());
    let mut daemon = Daemon::start(&sandbox, &config);
    for file in ["a.ok", "b.fail", "c.sig", "d.slow", "e.none", "f.long"] {
        sandbox.write(&format!("src/{file}"), "x");
    }
    sandbox.wait_out("long");
    eventually("five runs recorded", || {
        (runs(&daemon, &[]).len() == 5).then_some(())
    });
    assert_eq!(daemon.ctl(&["stop", "docs"]).status.code(), Some(0));
    let all = runs(&daemon, &["-n", "100"]);
    let outcome = |route: &str| {
        let run = all
            .iter()
            .find(|r| route_of(r) == route)
            .unwrap_or_else(|| panic!("no {route} run in {all:?}"));
        run["outcome"].clone()
    };
    assert_eq!(outcome("ok"), serde_json::json!({"kind": "exited", "code": 0}));
    assert_eq!(outcome("fail"), serde_json::json!({"kind": "exited", "code": 3}));
    assert_eq!(
        outcome("sig"),
        serde_json::json!({"kind": "signaled", "signal": 9})
    );
    assert_eq!(outcome("slow"), serde_json::json!({"kind": "timeout"}));
    assert_eq!(outcome("none")["kind"], "not_started");
    assert_eq!(outcome("long"), serde_json::json!({"kind": "cancelled"}));
    let ids: Vec<u64> = all.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let fail = all.iter().find(|r| route_of(r) == "fail").unwrap();
    assert_eq!(fail["stage"], 1);
    assert_eq!(fail["files"][0], sandbox.path("src/b.fail").to_str().unwrap());
    assert_eq!(fail["count"], 1);
    assert!(fail["duration_ms"].is_u64() && fail["started_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(fail.get("output").is_none(), "the list leaves the output out");
    assert!(
        fail["cpu_usec"].is_u64() && fail["memory_peak"].as_u64() > Some(0),
        "{fail}"
    );

    // `history show`: the run with its output's last lines.
    let id = fail["id"].as_u64().unwrap().to_string();
    let show = daemon.ctl(&["history", "show", &id]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{show:?}");
    assert!(text.contains("outcome  exit code 3"), "{text}");
    assert!(
        text.contains("    start b.fail") && text.contains("    to stderr"),
        "{text}"
    );
    let shown = json(&daemon, &["history", "show", &id]);
    assert_eq!(shown["run"]["output"].as_array().unwrap().len(), 2, "{shown}");
    let missing = daemon.ctl(&["history", "show", "999999"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("unknown_run"),
        "{missing:?}"
    );

    // Across a restart: the same records, and new ids after theirs.
    assert!(daemon.ctl(&["shutdown"]).status.success());
    daemon.wait_exit();
    let daemon = Daemon::start(&sandbox, &config);
    assert_eq!(runs(&daemon, &["-n", "100"]), all, "read back as written");
    sandbox.write("src/g.ok", "x");
    let newest = eventually("a run after the restart", || {
        let runs = runs(&daemon, &[]);
        (runs.len() == 7).then(|| runs[0].clone())
    });
    assert_eq!(newest["files"][0], sandbox.path("src/g.ok").to_str().unwrap());
    assert!(newest["id"].as_u64().unwrap() > ids[0]);

    // The filters.
    let failed: Vec<_> = runs(&daemon, &["--failed"])
        .iter()
        .map(|r| route_of(r).to_owned())
        .collect();
    assert_eq!(failed.len(), 5, "{failed:?}");
    assert!(!failed.contains(&"ok".to_owned()));
    let by_file = runs(&daemon, &["--file", "src/b.fail"]);
    assert_eq!(by_file.len(), 1, "relative to execlibctl's directory");
    let raw = daemon.request(r#"{"cmd":"history","file":"b.fail"}"#);
    assert_eq!(
        raw["runs"].as_array().unwrap(),
        &by_file,
        "a raw request: relative to the route's path"
    );
    assert_eq!(runs(&daemon, &["docs", "--route", "ok"]).len(), 2);
    assert_eq!(runs(&daemon, &["-n", "1"]), [newest]);
    let table = String::from_utf8_lossy(&daemon.ctl(&["history", "--failed", "-n", "2"]).stdout).into_owned();
    assert_eq!(table.lines().count(), 3, "a header and two runs: {table}");
    let unknown = daemon.ctl(&["history", "nope"]);
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
}

#[test]
fn a_hostile_history_file_is_dropped_with_a_warning() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", "glob = \"*.ok\""));
    std::fs::create_dir_all(sandbox.path("state/history")).unwrap();
    let mut junk = b"{\"id\":18446744073709551615,\"listener\":\"docs\"}\n\xff\xfe\n[[[[".to_vec();
    junk.extend(vec![b'{'; 300_000]);
    // Complete records: one whose id would wrap the next ids around, one whose
    // route and reason carry terminal escapes.
    let record = |id: &str, route: &str| {
        format!(
            "\n{{\"id\":{id},\"listener\":\"docs\",\"route\":\"{route}\",\"stage\":0,\"files\":[\"/x\"],\"count\":1,\"started_ms\":0,\"duration_ms\":1,\"outcome\":{{\"kind\":\"not_started\",\"reason\":\"\\u001b[2Jgone\"}}}}"
        )
    };
    junk.extend(record("18446744073709551615", "wrap").as_bytes());
    junk.extend(record("5", "\\u001b]0;owned\\u0007").as_bytes());
    junk.push(b'\n');
    std::fs::write(sandbox.path("state/history/docs.jsonl"), &junk).unwrap();
    let daemon = Daemon::start(&sandbox, &config);
    assert!(
        daemon
            .log()
            .contains("history file partly unusable: 4 line(s) dropped"),
        "{}",
        daemon.log()
    );
    let table = daemon.ctl(&["history"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{table:?}");
    assert!(
        text.contains("\\u{1b}]0;owned\\u{7}") && !text.contains('\u{1b}'),
        "{text}"
    );
    sandbox.write("src/a.ok", "x");
    let run = eventually("a run", || {
        runs(&daemon, &[])
            .into_iter()
            .find(|r| route_of(r) != "\u{1b}]0;owned\u{7}")
    });
    assert_eq!(run["id"], 6, "ids go on after the usable record's");
    assert_eq!(runs(&daemon, &[])[0], run, "the new run is the newest");
}

/// A listener with every case `explain` tells apart.
fn explain_config(sandbox: &Sandbox) -> std::path::PathBuf {
    std::fs::create_dir(sandbox.path("polled")).unwrap();
    sandbox.config(
        "[[listener]]\nname = \"docs\"\n\
           [[listener.route]]\n  name = \"pages\"\n  path = \"src\"\n  glob = \"**/*.md\"\n  ignore = [\"**/draft-*\"]\n  debounce_ms = 20\n  delay_ms = 10\n  shell = \"echo x > ../out/ran\"\n\
           [[listener.route]]\n  name = \"deletes\"\n  path = \"src\"\n  events = [\"delete\"]\n  shell = \"true\"\n\
         [[listener]]\nname = \"idle\"\nautostart = false\n  [[listener.route]]\n  name = \"all\"\n  path = \"src\"\n  shell = \"true\"\n\
         [[listener]]\nname = \"waits\"\n  [[listener.route]]\n  name = \"gone\"\n  path = \"missing\"\n  shell = \"true\"\n\
         [[listener]]\nname = \"nfs\"\n  [[listener.route]]\n  name = \"slow\"\n  path = \"polled\"\n  poll = \"always\"\n  poll_ms = 500\n  shell = \"true\"\n",
    )
}

/// `explain`'s verdicts by "listener/route": (runs, reason, detail, last run).
fn explain(
    daemon: &Daemon,
    args: &[&str],
) -> std::collections::HashMap<String, (bool, String, String, Value)> {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    let reply = json(daemon, &all);
    reply["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .iter()
        .map(|v| {
            let key = format!(
                "{}/{}",
                v["listener"].as_str().unwrap(),
                v["route"].as_str().unwrap()
            );
            let detail = v["detail"].as_str().unwrap().to_owned();
            (
                key,
                (
                    v["runs"] == true,
                    v["reason"].as_str().unwrap().to_owned(),
                    detail,
                    v["last_run"].clone(),
                ),
            )
        })
        .collect()
}

#[test]
fn explain_gives_every_reason_and_the_last_run() {
    let sandbox = Sandbox::new();
    let config = explain_config(&sandbox);
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a.md", "x");
    sandbox.wait_out("ran");
    let id = eventually("the run recorded", || {
        runs(&daemon, &[]).first().map(|r| r["id"].clone())
    });

    let v = explain(&daemon, &["src/a.md"]);
    assert_eq!(v.len(), 5, "every route of every listener: {v:?}");
    let (runs_, reason, detail, last) = &v["docs/pages"];
    assert!(*runs_ && reason == "runs" && detail.contains("**/*.md"), "{v:?}");
    assert_eq!(last["id"], id, "{last}");
    assert_eq!(last["outcome"]["code"], 0);
    let (runs_, reason, detail, last) = &v["docs/deletes"];
    assert!(
        !runs_ && reason == "event_kind" && detail.contains("takes delete"),
        "{detail}"
    );
    assert!(last.is_null());
    let (runs_, reason, detail, _) = &v["idle/all"];
    assert!(
        !runs_ && reason == "listener_stopped" && detail.contains("stopped"),
        "{detail}"
    );
    assert_eq!(v["waits/gone"].1, "outside_path");
    assert!(v["waits/gone"].2.contains("missing"), "names the route's path");

    let v = explain(&daemon, &["src/d/draft-2.md"]);
    assert_eq!(
        (v["docs/pages"].1.as_str(), v["docs/pages"].2.as_str()),
        ("ignored", "ignored by **/draft-*")
    );
    let v = explain(&daemon, &["--event", "delete", "src/notes.txt"]);
    assert_eq!(v["docs/pages"].1, "not_included");
    assert!(v["docs/deletes"].0, "a delete of any file runs the deletes route");
    let v = explain(&daemon, &[sandbox.path("src").to_str().unwrap()]);
    assert_eq!(v["docs/pages"].1, "route_dir");
    let v = explain(&daemon, &[sandbox.path("missing/x").to_str().unwrap()]);
    let (runs_, reason, detail, _) = &v["waits/gone"];
    assert!(
        !runs_ && reason == "unwatched" && detail.contains("does not exist"),
        "{detail}"
    );
    let v = explain(&daemon, &["polled/x"]);
    let (runs_, reason, detail, _) = &v["nfs/slow"];
    assert!(
        *runs_ && reason == "polled" && detail.contains("poll = \"always\""),
        "{detail}"
    );

    // In a raw request, a relative path under no route from the config's directory:
    // each route's own.
    let raw = daemon.request(r#"{"cmd":"explain","path":"a.md"}"#);
    assert_eq!(raw["routes"][0]["last_run"]["id"], id, "{raw}");
    // Through a symlinked directory: the file the route's watcher names.
    std::os::unix::fs::symlink(sandbox.path("src"), sandbox.path("alias")).unwrap();
    let v = explain(&daemon, &[sandbox.path("alias/a.md").to_str().unwrap()]);
    assert!(
        v["docs/pages"].0 && v["docs/pages"].2.contains("through a symlink"),
        "{v:?}"
    );
    // Any bytes: carried as hex, shown escaped.
    let odd = daemon.request(&format!(
        "{{\"cmd\":\"explain\",\"path\":{{\"hex\":\"{}\"}}}}",
        b"src/x\x1b\n\xff.md"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    assert_eq!(odd["routes"][0]["reason"], "runs", "{odd}");
    let text = String::from_utf8_lossy(&daemon.ctl(&["explain", "src/x\u{1b}.md"]).stdout).into_owned();
    assert!(text.contains("x\\u{1b}.md") && !text.contains('\u{1b}'), "{text}");
    let out = daemon.ctl(&["explain", "src/../src/a.md"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("src/../src/a.md may not contain `..`"),
        "{out:?}"
    );
    for bad in [r#""""#, r#""a\u0000b""#, "3"] {
        let reply = daemon.request(&format!("{{\"cmd\":\"explain\",\"path\":{bad}}}"));
        assert_eq!(reply["error"]["code"], "bad_request", "{bad}: {reply}");
    }
    let here = sandbox.path("");
    let text = String::from_utf8_lossy(&daemon.ctl_in(&here, &["explain", "src/a.md"]).stdout).into_owned();
    assert!(text.contains("docs/pages: runs: matches **/*.md"), "{text}");
    assert!(
        text.contains("idle/all: does not run (listener_stopped)"),
        "{text}"
    );
}

/// The config is in the sandbox's root; the user is in `src/sub`, where `a.md` is
/// `src/sub/a.md` (the daemon alone would take it as `src/a.md`, relative to the
/// route's path, for it lies under no route from the config's directory).
#[test]
fn explain_and_history_file_take_a_relative_path_from_the_users_directory() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("echo x > ../out/ran", "glob = \"**/*.md\""));
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a.md", "top");
    sandbox.wait_out("ran");
    let top = eventually("the top run", || runs(&daemon, &[]).first().cloned());
    std::fs::remove_file(sandbox.path("out/ran")).unwrap();
    sandbox.write("src/sub/a.md", "sub");
    sandbox.wait_out("ran");
    let sub = eventually("the sub run", || {
        let all = runs(&daemon, &[]);
        (all.len() == 2).then(|| all[0].clone())
    });
    let here = sandbox.path("src/sub");
    let explained = json_in(&daemon, &here, &["explain", "a.md"]);
    assert_eq!(explained["path"], sandbox.path("src/sub/a.md").to_str().unwrap());
    assert_eq!(explained["routes"][0]["last_run"]["id"], sub["id"], "{explained}");
    let up = json_in(&daemon, &here, &["explain", "../a.md"]);
    assert_eq!(up["routes"][0]["last_run"]["id"], top["id"], "{up}");
    let history = json_in(&daemon, &here, &["history", "--file", "a.md"]);
    assert_eq!(history["runs"].as_array().unwrap(), &[sub], "{history}");
}

/// Starts following over a raw connection: the first reply has been read, so the
/// subscription is in place.
fn follow(daemon: &Daemon, listener: Option<&str>) -> Client {
    let mut client = Client::connect(&daemon.socket);
    let request = match listener {
        Some(l) => format!("{{\"cmd\":\"events\",\"listener\":\"{l}\",\"follow\":true}}"),
        None => "{\"cmd\":\"events\",\"follow\":true}".to_owned(),
    };
    client.send_line(request.as_bytes());
    let first = client.reply().expect("a first reply");
    assert_eq!(
        (first["ok"].clone(), first["following"].clone()),
        (Value::Bool(true), Value::Bool(true)),
        "{first}"
    );
    client
}

#[test]
fn events_follow_receives_live_events_and_ends_at_shutdown() {
    let sandbox = Sandbox::new();
    let config = explain_config(&sandbox);
    let mut daemon = Daemon::start(&sandbox, &config);
    let mut raw = follow(&daemon, Some("docs"));
    sandbox.write("src/live.md", "x");
    let event = eventually("the live event", || {
        let line = raw.reply()?;
        (line["event"]["kind"] == "create").then_some(line)
    });
    assert_eq!(
        event["event"]["path"],
        sandbox.path("src/live.md").to_str().unwrap()
    );
    assert_eq!(event["event"]["routes"], serde_json::json!(["pages"]));

    // execlibctl: every event on a line, as it comes.
    let mut ctl = Command::new(env!("CARGO_BIN_EXE_execlibctl"))
        .args(["--socket", daemon.socket.to_str().unwrap(), "events", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = BufReader::new(ctl.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Written until execlibctl shows one: it may not have subscribed yet.
    let mut seen = Vec::new();
    let mut n = 0;
    eventually("execlibctl to print a live event", || {
        n += 1;
        sandbox.write(&format!("src/draft-{n}.md"), "x");
        std::thread::sleep(std::time::Duration::from_millis(50));
        seen.extend(lines.try_iter());
        seen.iter()
            .find(|l| l.contains("draft-") && l.ends_with("-> no route"))
            .cloned()
    });
    assert!(daemon.ctl(&["shutdown"]).status.success());
    let status = eventually("execlibctl to exit", || ctl.try_wait().unwrap());
    reader.join().unwrap();
    seen.extend(lines.try_iter());
    assert!(status.success(), "{status:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("the daemon stopped: the daemon is shutting down"),
        "{seen:?}"
    );
    let end = eventually("the end line", || {
        let line = raw.reply()?;
        line.get("end").is_some().then_some(line)
    });
    assert_eq!(end["end"], "the daemon is shutting down");
    assert!(raw.reply().is_none(), "then the connection closes");
    daemon.wait_exit();
}

#[test]
fn events_lists_recent_events_and_followers_are_capped() {
    let sandbox = Sandbox::new();
    let config = explain_config(&sandbox);
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/one.md", "x");
    let recent = eventually("the event in the recent list", || {
        let reply = json(&daemon, &["events", "docs"]);
        let events = reply["events"].as_array()?.clone();
        events
            .iter()
            .any(|e| e["path"] == sandbox.path("src/one.md").to_str().unwrap())
            .then_some(events)
    });
    assert!(recent.iter().all(|e| e["listener"] == "docs"));
    assert_eq!(json(&daemon, &["events", "nfs"])["events"], serde_json::json!([]));
    let text = String::from_utf8_lossy(&daemon.ctl(&["events"]).stdout).into_owned();
    assert!(text.lines().any(|l| l.ends_with("src/one.md -> pages")), "{text}");
    assert_eq!(daemon.ctl(&["events", "nope"]).status.code(), Some(1));

    // Eight followers at most (`feed::MAX_SUBSCRIBERS`); one more is told busy.
    let mut followers: Vec<Client> = (0..8).map(|_| follow(&daemon, None)).collect();
    let mut ninth = Client::connect(&daemon.socket);
    ninth.send_line(b"{\"cmd\":\"events\",\"follow\":true}");
    let refused = ninth.reply().unwrap();
    assert_eq!(refused["error"]["code"], "busy", "{refused}");
    let out = daemon.ctl(&["events", "--follow"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        daemon.ctl(&["status"]).status.success(),
        "other requests are still served"
    );
    // A follower that leaves (Ctrl-C closes its connection) frees its slot.
    drop(followers.pop());
    eventually("a slot for a new follower", || {
        let mut client = Client::connect(&daemon.socket);
        client.send_line(b"{\"cmd\":\"events\",\"follow\":true}");
        (client.reply()?["ok"] == true).then_some(())
    });
}

/// `[control] idle_timeout_ms` is 1000 in the sandbox: a follower that reads nothing
/// on a quiet daemon must give its slot back within twice that (it used to keep it
/// for as long as its socket buffer had room, so forever on a quiet daemon).
#[test]
fn followers_that_read_nothing_on_a_quiet_daemon_free_their_slots() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    let started = std::time::Instant::now();
    let stalled: Vec<Client> = (0..8).map(|_| follow(&daemon, None)).collect();
    let busy = daemon.request(r#"{"cmd":"events","follow":true}"#);
    assert_eq!(busy["error"]["code"], "busy", "{busy}");
    let bound = std::time::Duration::from_millis(2 * 1000 + 1000);
    let mut reader = eventually_within(bound, "a slot freed by a stalled follower", || {
        let mut client = Client::connect(&daemon.socket);
        client.send_line(br#"{"cmd":"events","follow":true}"#);
        (client.reply()?["ok"] == true).then_some(client)
    });
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1000),
        "not before the idle timeout"
    );
    drop(stalled);
    // execlibctl does not show keepalives, even with --json.
    let mut ctl = Command::new(env!("CARGO_BIN_EXE_execlibctl"))
        .args([
            "--socket",
            daemon.socket.to_str().unwrap(),
            "--json",
            "events",
            "--follow",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // A follower that reads is kept: a keepalive line after each quiet second.
    for _ in 0..2 {
        assert_eq!(reader.reply(), Some(serde_json::json!({"keepalive": true})));
    }
    sandbox.write("src/a", "x");
    let event = reader.reply().expect("still following");
    assert_eq!(
        event["event"]["path"],
        sandbox.path("src/a").to_str().unwrap(),
        "{event}"
    );
    assert!(daemon.ctl(&["shutdown"]).status.success());
    eventually("execlibctl to exit", || ctl.try_wait().unwrap());
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut ctl.stdout.take().unwrap(), &mut printed).unwrap();
    assert!(printed.contains("\"event\":{"), "{printed}");
    assert!(!printed.contains("keepalive"), "{printed}");
}

#[test]
fn history_keeps_a_batchs_first_files_and_its_count_and_records_post_commands() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(
        "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  name = \"all\"\n  path = \"src\"\n  mode = \"batch\"\n  debounce_ms = 300\n  delay_ms = 10\n  shell = \"cat > /dev/null\"\n\
           [[listener.post]]\n  name = \"publish\"\n  shell = \"echo published\"\n",
    );
    let daemon = Daemon::start(&sandbox, &config);
    for i in 0..12 {
        sandbox.write(&format!("src/f{i:02}"), "x");
    }
    let all = eventually("the batch and its post command recorded", || {
        let runs = runs(&daemon, &[]);
        (runs.len() == 2).then_some(runs)
    });
    let (post, batch) = (&all[0], &all[1]);
    assert_eq!(
        (route_of(batch), batch["count"].clone(), batch["stage"].clone()),
        ("all", 12.into(), 0.into()),
        "{batch}"
    );
    let files: Vec<&str> = batch["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 8, "the first 8 of the batch's files");
    assert!(
        files[0].ends_with("src/f00") && files[7].ends_with("src/f07"),
        "{files:?}"
    );
    assert_eq!(
        (route_of(post), post["stage"].clone()),
        ("publish", Value::Null),
        "{post}"
    );
    let shown = json(&daemon, &["history", "show", &post["id"].to_string()]);
    assert_eq!(shown["run"]["output"], serde_json::json!(["published"]));
    let table = String::from_utf8_lossy(&daemon.ctl(&["history", "--route", "all"]).stdout).into_owned();
    assert!(table.contains("src/f00 (+11 more)"), "{table}");
    // A listener removed by a reload keeps its runs.
    sandbox.config(
        "[[listener]]\nname = \"other\"\n  [[listener.route]]\n  path = \"src\"\n  shell = \"true\"\n",
    );
    assert!(daemon.ctl(&["reload"]).status.success());
    assert_eq!(runs(&daemon, &["docs"]).len(), 2);
    assert_eq!(
        daemon.ctl(&["history", "other"]).status.code(),
        Some(0),
        "a listener with no runs yet"
    );
    assert_eq!(daemon.ctl(&["history", "never"]).status.code(), Some(1));
}

#[test]
fn status_and_listeners_still_show_the_last_run_after_a_restart() {
    let sandbox = Sandbox::new();
    let body = "[[listener]]\nname = \"docs\"\ncatch_up = false\n  [[listener.route]]\n  name = \"pages\"\n  path = \"src\"\n  debounce_ms = 20\n  delay_ms = 10\n  shell = 'exit 3'\n";
    let config = sandbox.config(body);
    let mut daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a.md", "x");
    let last = eventually("docs's last run", || {
        let l = daemon.listener("docs");
        (!l["last_run"].is_null()).then(|| l["last_run"].clone())
    });
    assert_eq!(last["outcome"], "failed", "{last}");
    assert_eq!(last["reason"], "exit code 3", "{last}");
    assert_eq!(last["file"], sandbox.path("src/a.md").to_str().unwrap());
    let id = runs(&daemon, &[])[0]["id"].clone();
    assert_eq!(last["id"], id, "the history's run");
    assert!(daemon.ctl(&["shutdown"]).status.success());
    daemon.wait_exit();

    let daemon = Daemon::start(&sandbox, &config);
    assert_eq!(daemon.listener("docs")["last_run"], last, "listeners");
    let status = daemon.request(r#"{"cmd":"status"}"#);
    assert_eq!(status["last_runs"]["docs"], last, "{status}");
    let text = String::from_utf8(daemon.ctl(&["status"]).stdout).unwrap();
    assert!(
        text.contains(&format!(
            "last run docs: pages {}: failed (exit code 3) after ",
            sandbox.path("src/a.md").display()
        )),
        "{text}"
    );
}

#[test]
fn a_job_that_exits_non_zero_just_before_its_listener_stops_is_recorded_as_exited_not_cancelled() {
    let sandbox = Sandbox::new();
    // Its main process exits 3 at once, while a stray that ignores SIGTERM holds its
    // output open: the daemon drains the output for 500 ms after the exit, and the
    // stop comes in that window.
    let shell = "echo $$ > ../out/pid; (trap \"\" TERM; exec sleep 5) & exit 3";
    let config = sandbox.config(&one_route(shell, "glob = \"*.md\""));
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a.md", "x");
    let pid = sandbox.wait_out("pid").trim().to_owned();
    eventually("the main process reaped", || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert_eq!(daemon.ctl(&["stop", "docs"]).status.code(), Some(0));
    let run = eventually("the run recorded", || runs(&daemon, &[]).first().cloned());
    assert_eq!(
        run["outcome"],
        serde_json::json!({"kind": "exited", "code": 3}),
        "{run}"
    );
    let last = daemon.listener("docs")["last_run"].clone();
    assert_eq!(
        (&last["outcome"], &last["reason"]),
        (&"failed".into(), &"exit code 3".into()),
        "{last}"
    );
}

#[test]
fn regression_explain_said_runs_for_a_file_reached_through_a_symlinked_folder_in_the_tree() {
    let sandbox = Sandbox::new();
    let config = explain_config(&sandbox);
    std::fs::create_dir_all(sandbox.path("elsewhere")).unwrap();
    std::fs::create_dir_all(sandbox.path("src/real")).unwrap();
    std::os::unix::fs::symlink(sandbox.path("elsewhere"), sandbox.path("src/link")).unwrap();
    let daemon = Daemon::start(&sandbox, &config);
    let v = explain(&daemon, &["src/link/z.md"]);
    let (runs_, reason, detail, _) = &v["docs/pages"];
    assert!(!runs_, "the watcher never follows the link: {v:?}");
    assert_eq!(reason, "through_symlink");
    assert!(detail.contains("elsewhere/z.md"), "{detail}");
    let v = explain(&daemon, &["src/real/z.md"]);
    assert_eq!(v["docs/pages"].1, "runs", "a real folder: {v:?}");
}
