//! Metrics and "is it keeping up" on the real daemon: a scripted scenario moves each
//! metric (events, runs by outcome, the duration histogram, runs queued and running,
//! watches and the limit, polled directories, LiveReload, HTTP responses, control
//! requests; overflows and rescans under a small inotify queue), the output passes
//! Python's OpenMetrics parser, `/metrics` serves the same, and `status` and
//! `listeners` show the same figures.

use crate::support::web::*;
use crate::support::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// Listener `docs` (max_jobs 1): route `pages` on `src/*.md` (names starting `fail`
/// exit 3, `slow` sleep past a 1 s timeout) and route `long` on `src/*.hang` (sleeps);
/// listener `mirror` polls `polled/`.
const LISTENERS: &str = r#"
[metrics]
listen = "127.0.0.1:0"

[[listener]]
name = "docs"
max_jobs = 1
  [[listener.route]]
  name = "pages"
  path = "src"
  glob = "*.md"
  debounce_ms = 0
  delay_ms = 0
  timeout_ms = 1000
  kill_grace_ms = 100
  shell = 'case "$EXECLIB_NAME" in fail*) exit 3;; slow*) exec sleep 30;; esac'
  [[listener.route]]
  name = "long"
  path = "src"
  glob = "*.hang"
  debounce_ms = 0
  delay_ms = 0
  shell = 'exec sleep 30'

[[listener]]
name = "mirror"
  [[listener.route]]
  name = "copy"
  path = "polled"
  poll = "always"
  poll_ms = 200
  shell = 'true'
"#;

/// The exposition, as `execlibctl metrics` prints it.
fn scrape(daemon: &Daemon) -> String {
    let out = daemon.ctl(&["metrics"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the series written exactly `series` (name and labels), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `series` has `want`.
fn wait_value(daemon: &Daemon, series: &str, want: f64) -> String {
    eventually(&format!("{series} = {want}"), || {
        let text = scrape(daemon);
        (value(&text, series) == Some(want)).then_some(text)
    })
}

fn run_series(route: &str, outcome: &str) -> String {
    format!("execlib_runs_finished_total{{listener=\"docs\",route=\"{route}\",outcome=\"{outcome}\"}}")
}

/// Checks `text` with Python's `prometheus_client` OpenMetrics parser (strict: types,
/// names, label escaping, histogram buckets, `# EOF`); returns the families' count.
/// `None` (after [`skip`], which fails under `TESTS_NO_SKIP=1`) without the parser.
fn parse_with_python(text: &str) -> Option<usize> {
    const SCRIPT: &str = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
        print(len(list(parse(sys.stdin.read()))))\n";
    let python = ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(python) = python else {
        skip("needs Python's prometheus_client (apt-get install python3-prometheus-client)");
        return None;
    };
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refuses the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

fn start_site() -> (Sandbox, Daemon, String) {
    let sandbox = Sandbox::new();
    std::fs::create_dir(sandbox.path("polled")).unwrap();
    sandbox.write("public/index.html", "v1");
    let config = site_config(&sandbox, "", LISTENERS);
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    (sandbox, daemon, addr)
}

#[test]
fn metrics_move_as_the_daemon_works_and_pass_a_real_parser() {
    let (sandbox, daemon, addr) = start_site();
    let before = scrape(&daemon);
    // Only the parser needs Python: every movement below is checked without it.
    if let Some(families) = parse_with_python(&before) {
        assert!(families >= 12, "{families} families:\n{before}");
    }
    // Gauges: watches, polled directories, the kernel's limit, LiveReload clients.
    assert!(
        value(&before, "execlib_watches{listener=\"docs\"}").unwrap() >= 1.0,
        "{before}"
    );
    assert_eq!(
        value(&before, "execlib_polled_directories{listener=\"docs\"}"),
        Some(0.0)
    );
    assert!(value(&before, "execlib_polled_directories{listener=\"mirror\"}").unwrap() >= 1.0);
    let limit = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches").unwrap();
    assert_eq!(
        value(&before, "execlib_inotify_max_user_watches"),
        Some(limit.trim().parse().unwrap())
    );
    assert_eq!(value(&before, "execlib_livereload_clients"), Some(0.0));

    // Control requests by command and result.
    let unknown = daemon.request(r#"{"cmd":"start","listener":"nope"}"#);
    assert_eq!(unknown["error"]["code"], "unknown_listener");
    daemon.request(r#"{"cmd":"fly"}"#);
    let text = scrape(&daemon);
    let control = |command: &str, result: &str| {
        value(
            &text,
            &format!("execlib_control_requests_total{{command=\"{command}\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(control("start", "unknown_listener"), Some(1.0), "{text}");
    assert_eq!(control("invalid", "unknown_command"), Some(1.0), "{text}");
    // The first scrape is counted; this one, once it is answered.
    assert_eq!(control("metrics", "ok"), Some(1.0), "{text}");

    // HTTP responses by class, LiveReload clients and reloads sent.
    let class =
        |text: &str, c: &str| value(text, &format!("execlib_http_responses_total{{class=\"{c}\"}}")).unwrap();
    assert_eq!(get(&addr, "/index.html", &[]).status, 200);
    assert_eq!(get(&addr, "/missing.html", &[]).status, 404);
    // A head hyper refuses by itself, before any handler of ours: counted as well.
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let mut client = LrClient::on_page(&addr, "/index.html");
    let text = wait_value(&daemon, "execlib_livereload_clients", 1.0);
    assert_eq!(class(&text, "2xx") - class(&before, "2xx"), 1.0, "{text}");
    assert_eq!(class(&text, "4xx") - class(&before, "4xx"), 2.0, "{text}");
    assert_eq!(
        class(&text, "1xx") - class(&before, "1xx"),
        1.0,
        "the upgrade: {text}"
    );
    sandbox.write("public/index.html", "v2");
    assert_eq!(client.recv().expect("a reload")["command"], "reload");
    wait_value(&daemon, "execlib_livereload_reloads_sent_total", 1.0);

    // Runs: one succeeds, one fails, one times out; events by kind; the histogram.
    for name in ["a.md", "fail.md", "slow.md"] {
        sandbox.write(&format!("src/{name}"), "x");
    }
    wait_value(&daemon, &run_series("pages", "timed_out"), 1.0);
    let text = wait_value(&daemon, &run_series("pages", "failed"), 1.0);
    assert_eq!(
        value(&text, &run_series("pages", "succeeded")),
        Some(1.0),
        "{text}"
    );
    let pages = "listener=\"docs\",route=\"pages\"";
    assert_eq!(
        value(&text, &format!("execlib_runs_started_total{{{pages}}}")),
        Some(3.0)
    );
    assert_eq!(
        value(&text, &format!("execlib_run_duration_seconds_count{{{pages}}}")),
        Some(3.0)
    );
    let inf = format!("execlib_run_duration_seconds_bucket{{le=\"+Inf\",{pages}}}");
    assert_eq!(value(&text, &inf), Some(3.0), "{text}");
    let one = format!("execlib_run_duration_seconds_bucket{{le=\"1.0\",{pages}}}");
    assert!(
        value(&text, &one).unwrap() <= 2.0,
        "the timed-out run took over 1 s: {text}"
    );
    let kind = |text: &str, k: &str| {
        value(
            text,
            &format!("execlib_events_total{{listener=\"docs\",kind=\"{k}\"}}"),
        )
        .unwrap()
    };
    assert!(kind(&text, "create") >= 3.0, "{text}");
    assert_eq!(kind(&text, "delete"), 0.0, "{text}");

    // Running and queued: max_jobs 1, two runs of `long`.
    sandbox.write("src/x.hang", "x");
    wait_value(&daemon, "execlib_runs_running{listener=\"docs\"}", 1.0);
    sandbox.write("src/y.hang", "x");
    wait_value(&daemon, "execlib_runs_queued{listener=\"docs\"}", 1.0);
    // A stop cancels the running one (the queued one never starts).
    assert!(daemon.ctl(&["stop", "docs"]).status.success());
    let text = scrape(&daemon);
    assert_eq!(
        value(&text, &run_series("long", "cancelled")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "execlib_runs_running{listener=\"docs\"}"), Some(0.0));
    assert_eq!(value(&text, "execlib_runs_queued{listener=\"docs\"}"), Some(0.0));
    assert_eq!(
        value(&text, "execlib_watches{listener=\"docs\"}"),
        Some(0.0),
        "{text}"
    );

    // Counters outlive a listener's stop and start; a deletion counts as its kind.
    assert!(daemon.ctl(&["start", "docs"]).status.success());
    std::fs::remove_file(sandbox.path("src/a.md")).unwrap();
    let text = eventually("a delete event", || {
        let text = scrape(&daemon);
        (kind(&text, "delete") == 1.0).then_some(text)
    });
    assert!(kind(&text, "create") >= 3.0, "{text}");
    parse_with_python(&text);

    // /metrics on its own port serves the same, in the OpenMetrics media type.
    let status = daemon.request(r#"{"cmd":"status"}"#);
    let metrics_addr = status["metrics"].as_str().expect("status says where /metrics is");
    assert_ne!(metrics_addr, addr, "never the site's port");
    let reply = get(metrics_addr, "/metrics", &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(
        reply.text().contains("execlib_runs_finished_total{"),
        "{}",
        reply.text()
    );
    parse_with_python(&reply.text());
    assert_eq!(get(metrics_addr, "/", &[]).status, 404);
    assert_eq!(request(metrics_addr, "POST /metrics HTTP/1.1").status, 405);
    // The site's port does not serve them.
    assert_eq!(get(&addr, "/metrics", &[]).status, 404);
}

#[test]
fn status_and_listeners_say_whether_it_keeps_up() {
    let (sandbox, daemon, _addr) = start_site();
    sandbox.write("src/fail.md", "x");
    let last = eventually("docs's last run", || {
        let l = daemon.listener("docs");
        (!l["last_run"].is_null()).then(|| l["last_run"].clone())
    });
    assert_eq!(last["route"], "pages");
    assert_eq!(last["outcome"], "failed");
    assert_eq!(last["reason"], "exit code 3");
    assert_eq!(last["file"], sandbox.path("src/fail.md").to_str().unwrap());
    sandbox.write("src/x.hang", "x");
    sandbox.write("src/y.hang", "x");
    let status = eventually("a queued run", || {
        let s = daemon.request(r#"{"cmd":"status"}"#);
        (s["jobs_queued"] == 1).then_some(s)
    });
    let limit: u64 = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(status["watches"]["limit"], limit, "{status}");
    let listeners = daemon.request(r#"{"cmd":"listeners"}"#);
    let in_use: u64 = listeners["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["watches"].as_u64().unwrap())
        .sum();
    assert_eq!(status["watches"]["in_use"], in_use, "{status}");
    assert_eq!(listeners["watches"]["in_use"], in_use, "{listeners}");
    assert!(
        status["polled_directories"].as_u64().unwrap() >= 1,
        "mirror polls: {status}"
    );
    assert_eq!(status["overflows"], 0);
    assert!(status["last_overflow_ms"].is_null());
    assert_eq!(status["last_runs"]["docs"]["outcome"], "failed", "{status}");
    // For people: the same, in words.
    let text = String::from_utf8(daemon.ctl(&["status"]).stdout).unwrap();
    for needle in [
        &format!("watches  {in_use} in use of {limit} (fs.inotify.max_user_watches)"),
        "queued   1 runs",
        "overflows 0",
        "last run docs: pages ",
        ": failed (exit code 3) after ",
        "metrics  http://127.0.0.1:",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let text = String::from_utf8(daemon.ctl(&["listeners"]).stdout).unwrap();
    assert!(
        text.contains("\ndocs: queued 1, open for writing 0, polled 0, overflows 0, last run: pages "),
        "{text}"
    );
    assert!(
        text.contains("\nmirror: queued 0, open for writing 0, polled 1, overflows 0, last run: none"),
        "{text}"
    );
    assert!(
        text.contains(&format!("\nwatches: {in_use} in use of {limit}")),
        "{text}"
    );
}

#[test]
fn status_says_the_watch_limit_is_unreadable_where_proc_sys_is_hidden() {
    if skip_unless_root("hide /proc/sys in a private mount namespace") {
        return;
    }
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    // As under the hardened unit's ProcSubset=pid: /proc/sys cannot be read.
    let hide = "mount -t tmpfs none /proc/sys && exec \"$0\" \"$@\"";
    let wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c", hide].map(String::from);
    let mut daemon = Daemon::spawn_with(&sandbox, &config, &wrapper, "text");
    daemon.notify.wait_for("READY=1");
    let status = daemon.request(r#"{"cmd":"status"}"#);
    assert!(status["watches"]["limit"].is_null(), "{status}");
    assert_eq!(status["watches"]["in_use"], 1, "{status}");
    let text = String::from_utf8(daemon.ctl(&["status"]).stdout).unwrap();
    assert!(text.contains("watches  1 in use; limit unreadable"), "{text}");
    let metrics = scrape(&daemon);
    assert!(
        !metrics.contains("max_user_watches"),
        "no made-up limit: {metrics}"
    );
    assert!(daemon.ctl(&["shutdown"]).status.success());
    assert!(daemon.wait_exit().0.success());
}

#[test]
fn sysctl_overflows_and_rescans_are_counted_and_dated() {
    if skip_unless_root("lower fs.inotify.max_queued_events") {
        return;
    }
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", "glob = \"*.md\""));
    let daemon = {
        let _small_queue = Sysctl::set("max_queued_events", 16);
        Daemon::start(&sandbox, &config)
    };
    // Frozen, the daemon reads nothing: the 16-event queue surely overflows.
    daemon.freeze();
    for i in 0..200 {
        sandbox.write(&format!("src/f{i}.txt"), "x");
    }
    daemon.thaw();
    let text = eventually("a rescan", || {
        let text = scrape(&daemon);
        (value(&text, "execlib_rescans_total{listener=\"docs\"}")? >= 1.0).then_some(text)
    });
    assert!(
        value(&text, "execlib_overflows_total{listener=\"docs\"}").unwrap() >= 1.0,
        "{text}"
    );
    let docs = daemon.listener("docs");
    assert!(docs["overflows"].as_u64().unwrap() >= 1, "{docs}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let at = docs["last_overflow_ms"]
        .as_u64()
        .expect("the last overflow's time");
    assert!(at <= now_ms && now_ms - at < 60_000, "{docs}");
    let text = String::from_utf8(daemon.ctl(&["status"]).stdout).unwrap();
    assert!(text.contains(" s ago") && text.contains("overflows "), "{text}");
    let overflows = daemon.request(r#"{"cmd":"status"}"#)["overflows"].clone();
    assert_eq!(overflows, docs["overflows"]);
}

#[test]
fn metrics_listener_refuses_big_heads_and_closes_silent_connections() {
    use std::io::Read;
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\nhead_timeout_ms = 1000\n{}",
        one_route("true", "")
    ));
    let daemon = Daemon::start(&sandbox, &config);
    let status = daemon.request(r#"{"cmd":"status"}"#);
    let addr = status["metrics"].as_str().unwrap().to_owned();
    // A head over 16 KiB: 431, as on the site's port.
    let big = format!("GET /metrics HTTP/1.1\r\nX-Big: {}", "a".repeat(20 * 1024));
    assert_eq!(request(&addr, &big).status, 431);
    // A connection that sends nothing is closed at the head timeout (1 s here).
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let opened = std::time::Instant::now();
    let _ = silent.read_to_end(&mut Vec::new());
    let took = opened.elapsed();
    assert!(
        (900..=4000).contains(&took.as_millis()),
        "closed after {took:?}, not at the 1 s head timeout"
    );
    // Meanwhile and after, scrapes are answered.
    assert_eq!(get(&addr, "/metrics", &[]).status, 200);
}

/// The daemon with `listeners` and `[metrics]` on 127.0.0.1, and where it serves them.
fn with_metrics_on_loopback(sandbox: &Sandbox, listeners: &str) -> (Daemon, String) {
    let config = sandbox.config(&format!("[metrics]\nlisten = \"127.0.0.1:0\"\n{listeners}"));
    let daemon = Daemon::start(sandbox, &config);
    let addr = daemon.request(r#"{"cmd":"status"}"#)["metrics"]
        .as_str()
        .unwrap()
        .to_owned();
    (daemon, addr)
}

#[test]
fn a_changed_metrics_section_applies_at_the_next_start() {
    let sandbox = Sandbox::new();
    let listeners = one_route("true", "");
    let (daemon, addr) = with_metrics_on_loopback(&sandbox, &listeners);
    sandbox.config(&listeners);
    let reloaded = daemon.request(r#"{"cmd":"reload"}"#);
    assert_eq!(
        reloaded["restart_needed"],
        serde_json::json!(["[metrics]"]),
        "{reloaded}"
    );
    // Still served where it was bound, until the next start.
    assert_eq!(get(&addr, "/metrics", &[]).status, 200);
    assert_eq!(daemon.request(r#"{"cmd":"status"}"#)["metrics"], addr.as_str());
}

#[test]
fn regression_a_changed_metrics_section_is_reported_at_every_reload_until_the_next_start() {
    let sandbox = Sandbox::new();
    let listeners = one_route("true", "");
    let (daemon, addr) = with_metrics_on_loopback(&sandbox, &listeners);
    sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 1234\n[metrics]\nlisten = \"127.0.0.2:0\"\n{listeners}"
    ));
    // Reported at the second reload too: the first used to forget it.
    for _ in 0..2 {
        let out = daemon.ctl(&["--json", "reload"]);
        let reloaded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            reloaded["restart_needed"],
            serde_json::json!(["[daemon]", "[metrics]"]),
            "{reloaded}"
        );
    }
    assert_eq!(get(&addr, "/metrics", &[]).status, 200);
    assert_eq!(daemon.request(r#"{"cmd":"status"}"#)["metrics"], addr.as_str());
}

#[test]
fn events_follow_refusals_are_counted_as_refusals_not_ok() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    let unknown = daemon.request(r#"{"cmd":"events","listener":"nope","follow":true}"#);
    assert_eq!(unknown["error"]["code"], "unknown_listener", "{unknown}");
    let followers: Vec<Client> = (0..8)
        .map(|_| {
            let mut client = Client::connect(&daemon.socket);
            client.send_line(br#"{"cmd":"events","follow":true}"#);
            let first = client.reply().expect("a first reply");
            assert_eq!(first["following"], true, "{first}");
            client
        })
        .collect();
    let busy = daemon.request(r#"{"cmd":"events","follow":true}"#);
    assert_eq!(busy["error"]["code"], "busy", "{busy}");
    let text = scrape(&daemon);
    let events = |result: &str| {
        value(
            &text,
            &format!("execlib_control_requests_total{{command=\"events\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(events("ok"), Some(8.0), "{text}");
    assert_eq!(events("busy"), Some(1.0), "{text}");
    assert_eq!(events("unknown_listener"), Some(1.0), "{text}");
    drop(followers);
}
