//! Jobs: what a file change runs, with which environment, and how often.

use crate::support::*;
use std::time::Duration;

#[test]
fn change_runs_the_job_with_the_documented_environment() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route(
        "env | grep ^EXECLIB_ | sort > ../out/env",
        "env = { EXTRA = \"1\" }",
    ));
    std::fs::create_dir(sandbox.path("src/sub")).unwrap();
    let _daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/sub/page.md", "x");
    let env = sandbox.wait_out("env");
    let src = sandbox.path("src");
    let expected = [
        "EXECLIB_ENDPOINT=".to_owned() + src.to_str().unwrap(),
        "EXECLIB_EVENT=create,modify".to_owned(),
        "EXECLIB_INSTANCE=site".to_owned(),
        "EXECLIB_LISTENER=docs".to_owned(),
        "EXECLIB_NAME=sub/page.md".to_owned(),
        "EXECLIB_PATH=".to_owned() + src.join("sub/page.md").to_str().unwrap(),
        "EXECLIB_ROUTE=pages".to_owned(),
    ];
    assert_eq!(env.lines().collect::<Vec<_>>(), expected, "{env}");
}

#[test]
fn file_names_reach_jobs_only_through_the_environment() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route(r#"printf '%s' "$EXECLIB_NAME" > ../out/name"#, ""));
    let _daemon = Daemon::start(&sandbox, &config);
    let hostile = "$(touch pwned); `touch pwned2` 'q\" x.md";
    sandbox.write(&format!("src/{hostile}"), "x");
    assert_eq!(sandbox.wait_out("name"), hostile);
    assert!(!sandbox.path("src/pwned").exists() && !sandbox.path("pwned").exists());
}

#[test]
fn run_is_an_argv_without_shell() {
    let sandbox = Sandbox::new();
    let out = sandbox.path("out/argv");
    let body = format!(
        "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"src\"\n  debounce_ms = 0\n  run = [\"/bin/cp\", \"src/a.txt\", \"{}\"]\n  workdir = \".\"\n",
        out.display()
    );
    let config = sandbox.config(&body);
    let _daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a.txt", "copied");
    eventually("the copy", || {
        (sandbox.read("out/argv").as_deref() == Some("copied")).then_some(())
    });
}

#[test]
fn burst_of_changes_gives_one_run_and_the_last_content_is_seen() {
    let sandbox = Sandbox::new();
    let job = "echo run >> ../out/runs; cat a.txt > ../out/last";
    let config = sandbox.config(&one_route(job, "debounce_ms = 300").replace("  debounce_ms = 50\n", ""));
    let _daemon = Daemon::start(&sandbox, &config);
    for i in 0..20 {
        sandbox.write("src/a.txt", &i.to_string());
    }
    eventually("the last content", || {
        (sandbox.read("out/last").as_deref() == Some("19")).then_some(())
    });
    // A second run, if one were wrongly scheduled, would come within the 300 ms window
    // after the first: count once no run has come for well over that.
    let runs = settled("the runs", Duration::from_millis(1500), || {
        sandbox.read("out/runs").unwrap_or_default().lines().count()
    });
    assert_eq!(runs, 1, "one run for the burst");
}

#[test]
fn job_that_cannot_start_is_a_failed_job_and_the_listener_goes_on() {
    let sandbox = Sandbox::new();
    let body = "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  name = \"broken\"\n  path = \"src\"\n  glob = \"*.bad\"\n  debounce_ms = 0\n  run = [\"/nonexistent/tool\"]\n  [[listener.route]]\n  name = \"good\"\n  path = \"src\"\n  glob = \"*.ok\"\n  debounce_ms = 0\n  shell = \"echo x > ../out/ok\"\n";
    let config = sandbox.config(body);
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a.bad", "x");
    eventually("the failure to be counted", || {
        (daemon.listener("docs")["jobs_failed"] == 1).then_some(())
    });
    assert!(
        daemon.log().contains("cannot start \"/nonexistent/tool\""),
        "{}",
        daemon.log()
    );
    sandbox.write("src/b.ok", "x");
    sandbox.wait_out("ok");
    assert_eq!(daemon.listener("docs")["state"], "running");
}

#[test]
fn job_past_its_timeout_is_killed_with_its_grandchildren() {
    let sandbox = Sandbox::new();
    let job = "sleep 300 & echo $! > ../out/grandchild; echo $$ > ../out/main; trap '' TERM; while :; do sleep 0.05; done";
    let config = sandbox.config(&one_route(job, "timeout_ms = 300\n  kill_grace_ms = 200"));
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    let main: i32 = sandbox.wait_out("main").trim().parse().unwrap();
    let grandchild: i32 = sandbox.wait_out("grandchild").trim().parse().unwrap();
    eventually("the timeout to count as a failure", || {
        (daemon.listener("docs")["jobs_failed"] == 1).then_some(())
    });
    assert!(!alive(main) && !alive(grandchild), "no process left behind");
    let log = daemon.log();
    assert!(
        log.contains("job timed out") && log.contains("exit_code=\"timeout\""),
        "{log}"
    );
}

#[test]
fn regression_a_job_printing_without_pause_still_times_out() {
    // Its output never runs dry, so reading it never has to wait: the reading must
    // still yield, or the listener's task never gets to the job's timeout.
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("echo $$ > ../out/main; exec yes", "timeout_ms = 500"));
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    let main: i32 = sandbox.wait_out("main").trim().parse().unwrap();
    // 0.5 s, and some slack for a loaded machine: the timeout is not held up by the
    // reading of thousands of lines per read either.
    eventually_within(Duration::from_secs(3), "the timeout to end the job", || {
        (daemon.listener("docs")["jobs_failed"] == 1).then_some(())
    });
    assert!(!alive(main), "the job is gone");
    assert!(daemon.log().contains("job timed out"));
}

#[test]
fn a_job_writing_100_mb_leaves_the_daemon_memory_flat() {
    let sandbox = Sandbox::new();
    // 100 MB: 7,000 lines of 10,000 bytes (each cut to 8 KiB in the log), then one
    // 30 MB line: a reader that kept whole lines (or the whole output) would grow past the bound.
    let job = "yes \"$(head -c 9999 /dev/zero | tr '\\0' x)\" | head -c 70000000; head -c 30000000 /dev/zero | tr '\\0' y; echo; echo done > ../out/done";
    let config = sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 1000\n{}",
        one_route(job, "")
    ));
    let daemon = Daemon::start(&sandbox, &config);
    let before = status_kib(daemon.pid(), "VmRSS");
    // The peak from here on, not the RSS after: memory freed at the end still counts.
    reset_peak_rss(daemon.pid());
    sandbox.write("src/a", "x");
    eventually_long("the job to finish", || {
        (daemon.listener("docs")["jobs_started"] == 1 && daemon.listener("docs")["jobs_running"] == 0)
            .then_some(())
    });
    let peak = status_kib(daemon.pid(), "VmHWM");
    assert!(
        peak < before + 20 * 1024,
        "peak RSS {peak} KiB while the job ran, from {before} KiB before"
    );
    assert!(daemon.log().contains("[line cut at 8 KiB]"));
}

#[test]
fn three_hundred_files_changed_at_once_give_one_batch_run() {
    let sandbox = Sandbox::new();
    let job = r#"wc -l > ../out/stdin-count; echo "$EXECLIB_COUNT" > ../out/count; printf '%s' "$EXECLIB_PATHS" | wc -l > ../out/env-lines; echo run >> ../out/runs"#;
    let config =
        sandbox.config(&one_route(job, "mode = \"batch\"").replace("debounce_ms = 50", "debounce_ms = 300"));
    let _daemon = Daemon::start(&sandbox, &config);
    for i in 0..300 {
        sandbox.write(&format!("staging/f{i:03}.md"), "x");
    }
    // As a `git pull` lands them: renamed into place.
    std::fs::rename(sandbox.path("staging"), sandbox.path("src/pulled")).unwrap();
    assert_eq!(sandbox.wait_out("count").trim(), "300");
    assert_eq!(sandbox.wait_out("stdin-count").trim(), "300");
    assert_eq!(
        sandbox.wait_out("env-lines").trim(),
        "299",
        "newline-separated, no trailing newline"
    );
    settle_runs(&sandbox);
}

#[test]
fn regression_a_file_name_with_a_newline_cannot_add_a_path_to_a_batch() {
    // A local user made `src/a\n/etc/passwd`: the batch job, reading its stdin line by
    // line as documented, was given `/etc/passwd` to work on.
    let sandbox = Sandbox::new();
    let job = r#"cat > ../out/stdin; printf '%s' "$EXECLIB_PATHS" > ../out/env; echo "$EXECLIB_COUNT" > ../out/count"#;
    let config =
        sandbox.config(&one_route(job, "mode = \"batch\"").replace("debounce_ms = 50", "debounce_ms = 300"));
    let daemon = Daemon::start(&sandbox, &config);
    std::fs::create_dir_all(sandbox.path("src/a\n/etc")).unwrap();
    sandbox.write("src/a\n/etc/passwd", "x");
    assert_eq!(sandbox.wait_out("count").trim(), "1");
    let stdin = sandbox.wait_out("stdin");
    let src = sandbox.path("src").canonicalize().unwrap();
    let quoted = format!("\"{}/a\\n/etc/passwd\"\n", src.display());
    assert_eq!(stdin, quoted, "one line, quoted as git quotes it");
    assert_eq!(sandbox.wait_out("env"), quoted.trim_end());
    assert!(!stdin.lines().any(|l| l == "/etc/passwd"));
    assert!(daemon.log().contains("hold a line break"), "{}", daemon.log());
}

#[test]
fn a_batch_with_list_nul_gets_every_path_as_it_is_each_ended_by_a_nul() {
    use std::os::unix::ffi::OsStrExt;
    let sandbox = Sandbox::new();
    let job = r#"cat > ../out/stdin; echo "$EXECLIB_COUNT" > ../out/count"#;
    let config = sandbox.config(
        &(one_route(job, "mode = \"batch\"\n  list = \"nul\"")
            .replace("debounce_ms = 50", "debounce_ms = 300")
            + "  [[listener.post]]\n  list = \"nul\"\n  shell = 'cat > out/post'\n"),
    );
    let daemon = Daemon::start(&sandbox, &config);
    // A name with a line break and one that is not UTF-8: both reach the job unchanged.
    let strange = std::ffi::OsStr::from_bytes(b"b\xff\tc");
    std::fs::create_dir_all(sandbox.path("src/a\n/etc")).unwrap();
    sandbox.write("src/a\n/etc/passwd", "x");
    std::fs::write(sandbox.path("src").join(strange), "x").unwrap();
    assert_eq!(sandbox.wait_out("count").trim(), "2");
    let stdin = std::fs::read(sandbox.path("out/stdin")).unwrap();
    assert_eq!(stdin.last(), Some(&0), "{stdin:?}");
    let mut paths: Vec<&[u8]> = stdin[..stdin.len() - 1].split(|&b| b == 0).collect();
    paths.sort();
    let src = sandbox.path("src").canonicalize().unwrap();
    let expected = [src.join("a\n/etc/passwd"), src.join(strange)];
    let mut expected: Vec<&[u8]> = expected.iter().map(|p| p.as_os_str().as_bytes()).collect();
    expected.sort();
    assert_eq!(paths, expected);
    // The post command after it gets the frame's paths the same way.
    let post = eventually("the post command's list", || {
        std::fs::read(sandbox.path("out/post"))
            .ok()
            .filter(|b| b.len() == stdin.len())
    });
    let mut posted: Vec<&[u8]> = post[..post.len() - 1].split(|&b| b == 0).collect();
    posted.sort();
    assert_eq!(posted, expected);
    // Only EXECLIB_PATHS is quoted, and the warning says so.
    assert!(
        daemon.log().contains("quoted in EXECLIB_PATHS"),
        "{}",
        daemon.log()
    );
}

/// Writes a file the batch route also sees, and checks it ran as one more batch.
fn settle_runs(sandbox: &Sandbox) {
    sandbox.write("src/later.md", "x");
    eventually("the second batch", || {
        (sandbox.read("out/runs")?.lines().count() == 2).then_some(())
    });
    assert_eq!(sandbox.read("out/count").unwrap().trim(), "1");
}

#[test]
fn an_each_stage_then_a_batch_stage_run_in_order() {
    let sandbox = Sandbox::new();
    let body = r#"[[listener]]
name = "docs"
  [[listener.route]]
  name = "convert"
  path = "src"
  debounce_ms = 100
  shell = 'sleep 0.2; echo "convert $EXECLIB_NAME" >> ../out/log'
  [[listener.route]]
  name = "index"
  path = "src"
  stage = 1
  mode = "batch"
  debounce_ms = 0
  shell = 'echo "index $EXECLIB_COUNT" >> ../out/log'
  [[listener.post]]
  shell = 'echo "post $EXECLIB_COUNT $EXECLIB_FRAME_STATUS $(wc -l)" >> out/log'
"#;
    let config = sandbox.config(body);
    let _daemon = Daemon::start(&sandbox, &config);
    for name in ["a.md", "b.md", "c.md"] {
        sandbox.write(&format!("staging/{name}"), "x");
    }
    std::fs::rename(sandbox.path("staging"), sandbox.path("src/new")).unwrap();
    wait_log(&sandbox, "post 3 ok 3");
    let lines = log_lines(&sandbox);
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(
        lines[3..],
        ["index 3", "post 3 ok 3"],
        "the index runs after every conversion, then one post for the batch's files: {lines:?}"
    );
}

#[test]
fn cancel_skips_the_later_stage_and_post_sees_failed() {
    let sandbox = Sandbox::new();
    let body = r#"[[listener]]
name = "docs"
  [[listener.route]]
  name = "convert"
  path = "src"
  on_failure = "cancel"
  debounce_ms = 50
  shell = 'case "$EXECLIB_NAME" in bad*) exit 1;; esac; echo "convert $EXECLIB_NAME" >> ../out/log'
  [[listener.route]]
  name = "publish"
  path = "src"
  stage = 1
  debounce_ms = 50
  shell = 'echo "publish $EXECLIB_NAME" >> ../out/log'
  [[listener.post]]
  shell = 'echo "post ${EXECLIB_PATH##*/} $EXECLIB_FRAME_STATUS" >> out/log'
"#;
    let config = sandbox.config(body);
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/bad.md", "x");
    sandbox.write("src/good.md", "x");
    wait_log(&sandbox, "post good.md ok");
    wait_log(&sandbox, "post bad.md failed");
    eventually("the skip to be logged", || {
        daemon.log().contains("later stage skipped").then_some(())
    });
    let mut lines = log_lines(&sandbox);
    lines.sort();
    assert_eq!(
        lines,
        [
            "convert good.md",
            "post bad.md failed",
            "post good.md ok",
            "publish good.md"
        ]
    );
}

#[test]
fn regression_a_script_without_a_shebang_runs_under_sh() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let script = sandbox.path("build");
    std::fs::write(&script, "echo \"ran $1\" > ../out/ran\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let body = format!(
        "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"src\"\n  debounce_ms = 0\n  \
         run = [\"{}\", \"arg\"]\n",
        script.display()
    );
    let config = sandbox.config(&body);
    let _daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    assert_eq!(sandbox.wait_out("ran").trim(), "ran arg");
}
