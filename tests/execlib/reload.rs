//! Reload (`reload` command and SIGHUP): only the difference is applied, an invalid
//! config keeps the running one, and systemd hears RELOADING=1 then READY=1.

use crate::support::web::{LrClient, get};
use crate::support::*;
use std::time::Duration;

/// A listener `name` on `src_NAME` whose job appends "`tag` FILE" to `out/log`.
fn listener(name: &str, tag: &str, debounce_ms: u64) -> String {
    std::format!(
        "[[listener]]\nname = \"{name}\"\n  [[listener.route]]\n  path = \"src_{name}\"\n  debounce_ms = {debounce_ms}\n  delay_ms = 0\n  shell = 'echo \"{tag} $EXECLIB_NAME\" >> ../out/log'\n"
    )
}

fn reload(daemon: &Daemon) -> serde_json::Value {
    daemon.request(r#"{"cmd":"reload"}"#)
}

#[test]
fn reload_applies_only_the_difference() {
    let sandbox = Sandbox::new();
    let v1 = [
        listener("keep", "keep", 0),
        listener("change", "old", 0),
        listener("gone", "gone", 0),
    ];
    for dir in ["src_keep", "src_change", "src_gone", "src_added"] {
        std::fs::create_dir_all(sandbox.path(dir)).unwrap();
    }
    let config = sandbox.config(&v1.concat());
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src_keep/a", "x");
    wait_log(&sandbox, "keep a");
    let events = daemon.listener("keep")["events"].as_u64().unwrap();
    assert!(events >= 1);

    let v2 = [
        listener("keep", "keep", 0),
        listener("change", "new", 0),
        listener("added", "add", 0),
    ];
    sandbox.config(&v2.concat());
    let reply = reload(&daemon);
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        reply["listeners"]["unchanged"],
        serde_json::json!(["keep"]),
        "{reply}"
    );
    assert_eq!(reply["listeners"]["changed"], serde_json::json!(["change"]));
    assert_eq!(reply["listeners"]["added"], serde_json::json!(["added"]));
    assert_eq!(reply["listeners"]["removed"], serde_json::json!(["gone"]));
    assert_eq!(reply["server"], "unchanged");

    let keep = daemon.listener("keep");
    assert_eq!(keep["state"], "running");
    assert!(
        keep["events"].as_u64().unwrap() >= events,
        "the unchanged listener kept running (its counters were not reset): {keep}"
    );
    let names: Vec<_> = daemon.request(r#"{"cmd":"listeners"}"#)["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["keep", "change", "added"]);
    sandbox.write("src_change/b", "x");
    sandbox.write("src_added/c", "x");
    sandbox.write("src_keep/d", "x");
    sandbox.write("src_gone/e", "x");
    for line in ["new b", "add c", "keep d"] {
        wait_log(&sandbox, line);
    }
    // A sentinel written after every change above: once its run is logged, and the
    // log has been quiet for a while, a run of the old or the removed listener
    // would be there too.
    sandbox.write("src_keep/sentinel", "x");
    wait_log(&sandbox, "keep sentinel");
    let lines = settled("the log", Duration::from_millis(500), || log_lines(&sandbox));
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("old") || l.starts_with("gone")),
        "{lines:?}"
    );
}

#[test]
fn an_invalid_config_is_refused_with_its_position_and_the_old_one_keeps_running() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("src_docs")).unwrap();
    let config = sandbox.config(&listener("docs", "old", 0));
    let daemon = Daemon::start(&sandbox, &config);
    let broken = sandbox.config("[[listener]]\nname = \"docs\"\nbogus = 1\n");
    let text = std::fs::read_to_string(&broken).unwrap();
    let line = text.lines().position(|l| l.starts_with("bogus")).unwrap() as u64 + 1;
    let reply = reload(&daemon);
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_config");
    assert_eq!(
        (reply["error"]["line"].as_u64(), reply["error"]["column"].as_u64()),
        (Some(line), Some(1))
    );
    let out = daemon.ctl(&["reload"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&std::format!("site.toml:{line}:1")), "{stderr}");
    assert!(daemon.log().contains("reload failed, keeping the running config"));
    sandbox.write("src_docs/a", "x");
    wait_log(&sandbox, "old a");
    assert_eq!(daemon.listener("docs")["state"], "running");
}

#[test]
fn regression_a_reload_to_deeply_nested_glob_alternates_is_refused_and_the_daemon_lives() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("src_docs")).unwrap();
    let config = sandbox.config(&listener("docs", "old", 0));
    let daemon = Daemon::start(&sandbox, &config);
    // 4,000 levels overflowed the stack of the thread the config is loaded on,
    // aborting the daemon; a glob this long is refused before it is compiled.
    let deep = std::format!("{}b{}", "{a,".repeat(4_000), "}".repeat(4_000));
    let text =
        listener("docs", "new", 0).replace("  delay_ms", &std::format!("  glob = \"{deep}\"\n  delay_ms"));
    sandbox.config(&text);
    let out = daemon.ctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("site.toml:10:10: invalid glob \"{a,{a,"),
        "{stderr}"
    );
    assert!(stderr.contains("at most 4096 are allowed"), "{stderr}");
    sandbox.write("src_docs/a", "x");
    wait_log(&sandbox, "old a");
    assert_eq!(daemon.listener("docs")["state"], "running");
}

#[test]
fn sighup_reloads_between_reloading_and_ready() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("src_docs")).unwrap();
    let config = sandbox.config(&listener("docs", "old", 0));
    let mut daemon = Daemon::start(&sandbox, &config);
    sandbox.config(&listener("docs", "new", 0));
    daemon.signal(libc::SIGHUP);
    let reloading = daemon.notify.wait_for("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    eventually("READY=1 after the reload", || {
        daemon.notify.poll();
        (daemon.notify.count("READY=1") == 2).then_some(())
    });
    let reloading_at = daemon
        .notify
        .messages
        .iter()
        .position(|m| m.contains("RELOADING=1"));
    let ready_at = daemon.notify.messages.iter().rposition(|m| m.contains("READY=1"));
    assert!(reloading_at < ready_at, "{:?}", daemon.notify.messages);
    sandbox.write("src_docs/a", "x");
    wait_log(&sandbox, "new a");
}

#[test]
fn a_change_pending_in_a_replaced_listener_runs_in_the_new_one() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("src_docs")).unwrap();
    let config = sandbox.config(&listener("docs", "old", 60_000));
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src_docs/a", "x");
    eventually("the change to reach the listener", || {
        (daemon.listener("docs")["events"].as_u64()? >= 1).then_some(())
    });
    sandbox.config(&listener("docs", "new", 0));
    assert_eq!(
        reload(&daemon)["listeners"]["changed"],
        serde_json::json!(["docs"])
    );
    wait_log(&sandbox, "new a");
    assert_eq!(log_lines(&sandbox), ["new a"]);
}

#[test]
fn regression_a_pending_create_handed_to_a_new_listener_was_lost_or_became_a_modify() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("src_docs")).unwrap();
    // One route takes creates only; the other logs the kinds its run is for.
    let config = |tag: &str| {
        format!(
            "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  name = \"new-files\"\n  path = \"src_docs\"\n  events = [\"create\"]\n  debounce_ms = 60000\n  delay_ms = 0\n  shell = 'echo \"{tag} created $EXECLIB_NAME $EXECLIB_EVENT\" >> ../out/log'\n\
             [[listener.route]]\n  name = \"all\"\n  path = \"src_docs\"\n  debounce_ms = 60000\n  delay_ms = 0\n  shell = 'echo \"{tag} all $EXECLIB_NAME $EXECLIB_EVENT\" >> ../out/log'\n"
        )
    };
    sandbox.config(&config("old"));
    let daemon = Daemon::start(&sandbox, &sandbox.path("site.toml"));
    sandbox.write("src_docs/a", "x");
    eventually("the change pending in both routes", || {
        let jobs = daemon.request(r#"{"cmd":"jobs"}"#);
        (jobs["jobs"].as_array()?.len() == 2).then_some(())
    });
    sandbox.config(&config("new").replace("60000", "0"));
    assert_eq!(
        reload(&daemon)["listeners"]["changed"],
        serde_json::json!(["docs"])
    );
    wait_log(&sandbox, "new created a create");
    wait_log(&sandbox, "new all a create,modify");
    let mut lines = log_lines(&sandbox);
    lines.sort();
    assert_eq!(lines, ["new all a create,modify", "new created a create"]);
}

#[test]
fn the_http_server_restarts_only_when_server_changes() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("public")).unwrap();
    std::fs::create_dir_all(sandbox.path("src_docs")).unwrap();
    sandbox.write("public/index.html", "<p>hi</p>");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = std::format!("127.0.0.1:{port}");
    let server =
        |delay: u32| std::format!("[server]\nlisten = \"{addr}\"\nroot = \"public\"\ndelay_ms = {delay}\n");
    let config = sandbox.config(&(server(20) + &listener("docs", "old", 0)));
    let daemon = Daemon::start(&sandbox, &config);
    let mut client = LrClient::on_page(&addr, "/");

    sandbox.config(&(server(20) + &listener("docs", "new", 0)));
    assert_eq!(reload(&daemon)["server"], "unchanged");
    sandbox.write("public/index.html", "<p>changed</p>");
    let message = client.recv().expect("the client survived the reload");
    assert_eq!(message["command"], "reload", "{message}");

    sandbox.config(&(server(50) + &listener("docs", "new", 0)));
    assert_eq!(reload(&daemon)["server"], "restarted");
    assert_eq!(
        client.close_code(),
        Some(1001),
        "the old server's clients were told it went away"
    );
    assert_eq!(get(&addr, "/", &[]).status, 200);
    assert_eq!(
        daemon.request(r#"{"cmd":"status"}"#)["server"]["listen"],
        addr.as_str()
    );
}

#[test]
fn a_directory_moved_out_just_before_a_reload_is_reported_gone_by_the_new_listener() {
    let sandbox = Sandbox::new();
    sandbox.write("src_docs/d/f.md", "x");
    let config = sandbox.config(&listener("docs", "old", 60_000));
    let daemon = Daemon::start(&sandbox, &config);
    // The old watcher holds a directory moved out for a moment, waiting for it to
    // arrive elsewhere in the tree; the reload must not lose it.
    std::fs::rename(sandbox.path("src_docs/d"), sandbox.path("outside")).unwrap();
    sandbox.config(&listener("docs", "new", 0));
    assert_eq!(
        reload(&daemon)["listeners"]["changed"],
        serde_json::json!(["docs"])
    );
    wait_log(&sandbox, "new d/f.md");
    assert_eq!(log_lines(&sandbox), ["new d/f.md"]);
}

/// A free port on 127.0.0.1 (bound for a moment, then released).
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[test]
fn a_new_listen_is_bound_before_the_old_server_stops_and_a_failed_bind_keeps_it() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("src_docs")).unwrap();
    sandbox.write("public/index.html", "<p>hi</p>");
    let server = |addr: &str| std::format!("[server]\nlisten = \"{addr}\"\nroot = \"public\"\n");
    let config_for = |addr: &str| sandbox.config(&(server(addr) + &listener("docs", "old", 0)));
    let old = free_addr();
    let daemon = Daemon::start(&sandbox, &config_for(&old));
    let mut client = LrClient::on_page(&old, "/");

    // The new address is taken: the old server is kept, clients and all.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    config_for(&taken_addr);
    let reply = reload(&daemon);
    let server_result = reply["server"].as_str().unwrap_or_default();
    assert!(
        server_result.starts_with("failed:") && server_result.contains(&taken_addr),
        "{reply}"
    );
    assert_eq!(get(&old, "/", &[]).status, 200);
    let status = daemon.request(r#"{"cmd":"status"}"#);
    assert_eq!(status["server"]["listen"], old.as_str(), "{status}");
    sandbox.write("public/index.html", "<p>changed</p>");
    let message = client.recv().expect("the client kept its server");
    assert_eq!(message["command"], "reload", "{message}");

    // A free address: bound first, then the old server stops.
    let new = free_addr();
    config_for(&new);
    assert_eq!(reload(&daemon)["server"], "restarted");
    assert_eq!(client.close_code(), Some(1001));
    assert_eq!(get(&new, "/", &[]).status, 200);
    assert!(
        std::net::TcpStream::connect(&old).is_err(),
        "the old port is released"
    );
    let log = daemon.log();
    let at = |s: &str| log.find(s).unwrap_or_else(|| panic!("no {s:?} in {log}"));
    assert!(
        at(&std::format!("HTTP server listening listen={new}"))
            < at("stopping the HTTP server for the new [server]"),
        "{log}"
    );
}

#[test]
fn regression_a_reload_serves_the_release_a_switched_root_symlink_names() {
    // A site deployed as `public -> releases/1`, switched with `mv -T` to releases/2:
    // the root was resolved once at start, so the old release was served until a
    // restart (and every request was 404 once it was deleted), a reload included.
    let sandbox = Sandbox::new();
    sandbox.write("releases/1/index.html", "one");
    sandbox.write("releases/2/index.html", "two");
    std::os::unix::fs::symlink("releases/1", sandbox.path("public")).unwrap();
    let server = "[server]\nlisten = \"127.0.0.1:0\"\nroot = \"public\"\nlivereload = false\n";
    let config = sandbox.config(server);
    let daemon = Daemon::start(&sandbox, &config);
    let addr = crate::support::web::http_addr(&daemon);
    assert_eq!(get(&addr, "/index.html", &[]).body, b"one");
    std::os::unix::fs::symlink("releases/2", sandbox.path("public.new")).unwrap();
    std::fs::rename(sandbox.path("public.new"), sandbox.path("public")).unwrap();
    std::fs::remove_dir_all(sandbox.path("releases/1")).unwrap();
    let reply = reload(&daemon);
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["server"], "restarted", "{reply}");
    let addr = crate::support::web::http_addr(&daemon);
    assert_eq!(get(&addr, "/index.html", &[]).body, b"two");
    // Nothing moved: the next reload leaves the server alone.
    assert_eq!(reload(&daemon)["server"], "unchanged");
}
