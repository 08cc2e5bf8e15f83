//! Version-control operations settle first: the due runs of a route inside a git
//! work tree wait while git is at work on it (its index lock, a merge in progress),
//! `hold_while` names other tools' locks or none, and `max_vcs_hold_ms` bounds the wait.

use crate::support::*;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs git in `dir` with a fixed identity and no user or system config; panics on failure.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=execlib",
            "-c",
            "user.email=execlib@example.invalid",
        ])
        .args(["-c", "gc.auto=0", "-c", "advice.detachedHead=false"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "git {args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Whether git is installed; says why the test skips when it is not.
fn have_git() -> bool {
    let found = std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        skip("git is not installed");
    }
    found
}

/// A file's time stamp (mtime or ctime) in nanoseconds.
fn stamp(seconds: i64, nanos: i64) -> i128 {
    seconds as i128 * 1_000_000_000 + nanos as i128
}

/// `src/` as a repository with branches `one` and `two` (checked out: `one`): 2,000
/// files changed between them in 20 directories, 20 only in `one`, 20 only in `two`
/// in a directory of their own. Returns the changed paths, relative to `src/`.
fn two_branches(sandbox: &Sandbox) -> BTreeSet<String> {
    let src = sandbox.path("src");
    let write_all = |branch: &str| {
        for d in 0..20 {
            for f in 0..100 {
                sandbox.write(&format!("src/d{d:02}/f{f:03}"), &format!("{branch} {d} {f}\n"));
            }
        }
    };
    git(&src, &["init", "-q", "-b", "one"]);
    write_all("one");
    for i in 0..20 {
        sandbox.write(&format!("src/d00/gone{i:02}"), "only on one\n");
    }
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "one"]);
    git(&src, &["checkout", "-q", "-b", "two"]);
    write_all("two");
    for i in 0..20 {
        std::fs::remove_file(sandbox.path(&format!("src/d00/gone{i:02}"))).unwrap();
        sandbox.write(&format!("src/new/n{i:02}"), "only on two\n");
    }
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "two"]);
    git(&src, &["checkout", "-q", "one"]);
    git(&src, &["diff", "--name-only", "one", "two"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Two routes on `src/` with no debounce or delay at all, so any coalescing is the
/// hold's: `each` appends its file's name to `out/each`, `batch` its paths to
/// `out/batch.paths` and its count to `out/batch.runs`. Each run first creates a
/// marker in `out/started/`, whose mtime says when it started.
const CHECKOUT_ROUTES: &str = r#"
[[listener]]
name = "docs"
  [[listener.route]]
  name = "each"
  path = "src"
  debounce_ms = 0
  delay_ms = 0
  shell = '''n=$EXECLIB_NAME; : > "../out/started/${n%%/*}_${n#*/}"; echo "$n" >> ../out/each'''
  [[listener.route]]
  name = "batch"
  path = "src"
  mode = "batch"
  debounce_ms = 0
  delay_ms = 0
  shell = ''': > ../out/started/batch-$$; cat >> ../out/batch.paths; echo "$EXECLIB_COUNT" >> ../out/batch.runs'''
"#;

/// The issue's case: a checkout of 2,040 paths, with a post-checkout hook that sleeps
/// a second. "After the checkout" is after git has written the work tree and the index
/// and renamed `index.lock` to `index` (the index's ctime): the tree is whole from then
/// on. The hook runs after that, and the runs do not wait for it (nothing on disk says
/// a hook is running); its second of sleep is a pause in which nothing may fire again.
#[test]
fn a_checkout_gives_a_batch_one_run_with_every_path_and_each_file_one_run_after_it() {
    if !have_git() {
        return;
    }
    let sandbox = Sandbox::new();
    let changed = two_branches(&sandbox);
    assert_eq!(changed.len(), 2040);
    let hook = sandbox.path("src/.git/hooks/post-checkout");
    std::fs::write(&hook, "#!/bin/sh\nsleep 1\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir(sandbox.path("out/started")).unwrap();
    let daemon = Daemon::start(&sandbox, &sandbox.config(CHECKOUT_ROUTES));
    let checkout = Instant::now();
    git(&sandbox.path("src"), &["checkout", "-q", "two"]);
    let took = checkout.elapsed();
    assert!(took >= Duration::from_secs(1), "the hook ran: {took:?}");
    let index = std::fs::metadata(sandbox.path("src/.git/index")).unwrap();
    let checked_out = stamp(index.ctime(), index.ctime_nsec());

    // 2,041 jobs, two at a time: about 3 s alone, up to 4 times that beside a busy CPU.
    eventually_within(Duration::from_secs(60), "a run for every changed file", || {
        let each = sandbox.read("out/each").unwrap_or_default();
        (each.lines().count() >= changed.len()).then_some(())
    });
    let runs = settled("the runs", Duration::from_secs(1), || {
        let each = sandbox.read("out/each").unwrap_or_default().lines().count();
        (each, sandbox.read("out/batch.runs"))
    });
    assert_eq!(
        runs.1.as_deref(),
        Some("2040\n"),
        "exactly one batch run, of every path"
    );
    let src = sandbox.path("src");
    let expected: BTreeSet<String> = changed
        .iter()
        .map(|n| src.join(n).display().to_string())
        .collect();
    let batch = sandbox.read("out/batch.paths").unwrap();
    assert_eq!(
        batch.lines().map(str::to_owned).collect::<BTreeSet<_>>(),
        expected
    );
    let each = sandbox.read("out/each").unwrap();
    let mut names: Vec<&str> = each.lines().collect();
    names.sort();
    assert_eq!(
        names,
        changed.iter().map(String::as_str).collect::<Vec<_>>(),
        "one run per file"
    );

    let mut early = Vec::new();
    for marker in std::fs::read_dir(sandbox.path("out/started")).unwrap() {
        let marker = marker.unwrap();
        let meta = marker.metadata().unwrap();
        if stamp(meta.mtime(), meta.mtime_nsec()) < checked_out {
            early.push(marker.file_name());
        }
    }
    assert!(
        early.is_empty(),
        "runs started before the checkout ended: {early:?}"
    );
    let log = daemon.log();
    assert!(
        log.contains("runs held: an operation is at work on git work tree"),
        "{log}"
    );
    assert!(log.contains("runs released"), "{log}");
}

/// `jobs` entries of `route` in state `state`, by file name.
fn jobs_in(daemon: &Daemon, route: &str, state: &str) -> Vec<String> {
    let reply = daemon.request(r#"{"cmd":"jobs"}"#);
    let jobs = reply["jobs"].as_array().cloned().unwrap_or_default();
    let matching = jobs.iter().filter(|j| j["route"] == route && j["state"] == state);
    matching
        .map(|j| j["file"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A merge stopped on conflicts (`MERGE_HEAD` in the git directory) holds the routes
/// in the work tree, shown `held` in `jobs`; `hold_while = []` turns it off.
#[test]
fn a_merge_in_progress_holds_runs_unless_hold_while_is_empty() {
    if !have_git() {
        return;
    }
    let sandbox = Sandbox::new();
    git(&sandbox.path("src"), &["init", "-q"]);
    let merge_head = sandbox.path("src/.git/MERGE_HEAD");
    std::fs::write(&merge_head, "0000000000000000000000000000000000000000\n").unwrap();
    let free = one_route(r#"echo "free $EXECLIB_NAME" >> ../out/log"#, "hold_while = []");
    let held = "  [[listener.route]]\n  name = \"held\"\n  path = \"src\"\n  debounce_ms = 0\n  \
                shell = 'echo \"held $EXECLIB_NAME\" >> ../out/log'\n";
    let daemon = Daemon::start(&sandbox, &sandbox.config(&format!("{free}{held}")));
    sandbox.write("src/a.md", "x");
    wait_log(&sandbox, "free a.md");
    let a = sandbox.path("src/a.md").display().to_string();
    eventually("the held run in jobs", || {
        (jobs_in(&daemon, "held", "held") == [a.clone()]).then_some(())
    });
    assert_eq!(log_lines(&sandbox), ["free a.md"]);
    std::fs::remove_file(&merge_head).unwrap();
    wait_log(&sandbox, "held a.md");
    let log = daemon.log();
    assert!(log.contains("(route held)"), "{log}");
}

/// `hold_while` names another tool's lock (relative to the config file's directory);
/// `max_vcs_hold_ms` lets the runs go ahead with a warning, and the lock left behind
/// holds nothing more until it is gone.
#[test]
fn hold_while_names_a_lock_and_max_vcs_hold_ms_bounds_the_wait() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&log_route(
        "hold_while = [\"deploy.lock\"]\n  max_vcs_hold_ms = 1500",
    ));
    let daemon = Daemon::start(&sandbox, &config);
    let lock = sandbox.path("deploy.lock");
    std::fs::write(&lock, "").unwrap();
    sandbox.write("src/a.md", "x");
    let a = sandbox.path("src/a.md").display().to_string();
    eventually("a.md held", || {
        (jobs_in(&daemon, "pages", "held") == [a.clone()]).then_some(())
    });
    std::fs::remove_file(&lock).unwrap();
    wait_log(&sandbox, "a.md create,modify");

    std::fs::write(&lock, "").unwrap(); // left behind by a deploy that crashed
    let written = Instant::now();
    sandbox.write("src/b.md", "x");
    wait_log(&sandbox, "b.md create,modify");
    assert!(
        written.elapsed() >= Duration::from_millis(1500),
        "held for max_vcs_hold_ms"
    );
    sandbox.write("src/c.md", "x"); // the stale lock holds it no more
    wait_log(&sandbox, "c.md create,modify");
    let log = daemon.log();
    assert_eq!(log.matches("runs held:").count(), 2, "a.md and b.md only: {log}");
    assert_eq!(log.matches("runs released").count(), 1, "{log}");
    assert!(log.contains("held runs go ahead after max_vcs_hold_ms"), "{log}");
    assert!(log.contains(lock.to_str().unwrap()), "the lock is named: {log}");
}
