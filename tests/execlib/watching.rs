//! The watcher never loses a change: new directories, renames, editors' saves,
//! queue overflow, roots that go away, inotify limits and catch-up across restarts.

use crate::support::*;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) fn sh(script: &str, dir: &std::path::Path) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

/// Writes a sentinel file and waits for its run: with [`log_route`]'s `max_jobs = 1`,
/// every run caused by an earlier change has finished by then.
pub(crate) fn settle(sandbox: &Sandbox, name: &str) {
    sandbox.write(&format!("src/{name}"), "sentinel");
    wait_log(sandbox, &format!("{name} create,modify"));
}

/// Adds `key` to the first `[[listener]]` of `body`.
fn listener_key(body: &str, key: &str) -> String {
    body.replacen("name = \"docs\"\n", &format!("name = \"docs\"\n{key}\n"), 1)
}

/// The logged lines, sorted: runs of different files may append in any order.
fn sorted_log(sandbox: &Sandbox) -> Vec<String> {
    let mut lines = log_lines(sandbox);
    lines.sort();
    lines
}

#[test]
fn mkdir_p_then_immediate_writes_are_all_seen() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&log_route(""));
    let _daemon = Daemon::start(&sandbox, &config);
    sh(
        "mkdir -p a/b/c/d && echo 1 > a/b/c/d/f && echo 2 > a/b/g && echo 3 > a/h",
        &sandbox.path("src"),
    );
    for name in ["a/b/c/d/f", "a/b/g", "a/h"] {
        eventually(name, || {
            log_lines(&sandbox)
                .iter()
                .any(|l| l.starts_with(&format!("{name} create")))
                .then_some(())
        });
    }
}

#[test]
fn cp_r_of_a_deep_tree_runs_every_file() {
    let sandbox = Sandbox::new();
    let tree = sandbox.path("tree");
    let mut dir = tree.clone();
    let mut expected = BTreeSet::new();
    let mut rel = String::from("copy");
    for depth in 0..100 {
        dir = dir.join(format!("d{depth}"));
        rel = format!("{rel}/d{depth}");
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..10 {
            std::fs::write(dir.join(format!("f{i}")), "x").unwrap();
            expected.insert(format!("{rel}/f{i}"));
        }
    }
    let config = sandbox.config(&listener_key(
        &one_route(r#"echo "$EXECLIB_NAME" >> ../out/log"#, ""),
        "max_jobs = 4",
    ));
    let _daemon = Daemon::start(&sandbox, &config);
    sh("cp -r ../tree copy", &sandbox.path("src"));
    // 1,000 jobs: 2.2 s alone, 5.3-7.1 s beside two busy loops on two cores; 60 s
    // leaves room for the suite's other test beside it.
    let seen = eventually_within(Duration::from_secs(60), "every copied file's job", || {
        let seen: BTreeSet<String> = log_lines(&sandbox).into_iter().collect();
        (seen.len() >= expected.len()).then_some(seen)
    });
    assert_eq!(seen, expected);
}

#[test]
fn directory_renamed_inside_the_tree_keeps_watching_under_its_new_name() {
    let sandbox = Sandbox::new();
    sandbox.write("src/a/f", "1");
    sandbox.write("src/a/sub/g", "1");
    let config = sandbox.config(&log_route(""));
    let _daemon = Daemon::start(&sandbox, &config);
    std::fs::rename(sandbox.path("src/a"), sandbox.path("src/b")).unwrap();
    for line in ["a/f delete", "a/sub/g delete", "b/f move", "b/sub/g move"] {
        wait_log(&sandbox, line);
    }
    sandbox.write("src/b/sub/g", "2");
    wait_log(&sandbox, "b/sub/g modify");
    settle(&sandbox, "z");
    let lines = log_lines(&sandbox);
    assert_eq!(
        lines.len(),
        6,
        "nothing else, and nothing under the old name: {lines:?}"
    );
}

#[test]
fn file_renamed_inside_the_tree_is_a_delete_and_a_move() {
    let sandbox = Sandbox::new();
    sandbox.write("src/old.md", "1");
    std::fs::create_dir(sandbox.path("src/sub")).unwrap();
    let config = sandbox.config(&log_route(""));
    let _daemon = Daemon::start(&sandbox, &config);
    std::fs::rename(sandbox.path("src/old.md"), sandbox.path("src/sub/new.md")).unwrap();
    settle(&sandbox, "z");
    assert_eq!(
        sorted_log(&sandbox),
        ["old.md delete", "sub/new.md move", "z create,modify"]
    );
}

#[test]
fn directory_moved_in_is_reported_created_and_moved_out_deleted() {
    let sandbox = Sandbox::new();
    sandbox.write("outside/x/f", "1");
    sandbox.write("outside/x/deep/g", "1");
    let config = sandbox.config(&log_route(""));
    let daemon = Daemon::start(&sandbox, &config);
    std::fs::rename(sandbox.path("outside/x"), sandbox.path("src/x")).unwrap();
    wait_log(&sandbox, "x/f create");
    wait_log(&sandbox, "x/deep/g create");
    std::fs::rename(sandbox.path("src/x"), sandbox.path("outside/y")).unwrap();
    wait_log(&sandbox, "x/f delete");
    wait_log(&sandbox, "x/deep/g delete");
    eventually("the moved-out watches to be dropped", || {
        (daemon.listener("docs")["watches"] == 1).then_some(())
    });
    sandbox.write("outside/y/deep/g", "outside now");
    settle(&sandbox, "z");
    assert_eq!(log_lines(&sandbox).len(), 5, "{:?}", log_lines(&sandbox));
}

#[test]
fn sed_in_place_runs_the_target_once_and_nothing_for_its_temporary() {
    let sandbox = Sandbox::new();
    sandbox.write("src/page.md", "hello\n");
    let config = sandbox.config(&log_route(""));
    let _daemon = Daemon::start(&sandbox, &config);
    sh("sed -i s/hello/bye/ page.md", &sandbox.path("src"));
    wait_log(&sandbox, "page.md move");
    settle(&sandbox, "z");
    assert_eq!(sorted_log(&sandbox), ["page.md move", "z create,modify"]);
}

#[test]
fn vim_like_save_runs_the_target_once() {
    let sandbox = Sandbox::new();
    sandbox.write("src/page.md", "v1");
    let config = sandbox.config(&log_route(""));
    let _daemon = Daemon::start(&sandbox, &config);
    // vim: probe the directory with 4913, keep a backup by rename, write anew, drop the backup,
    // with a swap file (.page.md.swp) written throughout.
    sh(
        "echo > .page.md.swp; touch 4913 && rm 4913; mv page.md page.md~; echo v2 > page.md; \
         echo >> .page.md.swp; rm page.md~; rm .page.md.swp",
        &sandbox.path("src"),
    );
    settle(&sandbox, "z");
    assert_eq!(
        log_lines(&sandbox),
        ["page.md create,modify,delete", "z create,modify"]
    );
}

#[test]
fn rsync_like_temporary_then_rename_runs_the_target_once() {
    let sandbox = Sandbox::new();
    sandbox.write("src/page.md", "v1");
    let config = sandbox.config(&log_route(""));
    let _daemon = Daemon::start(&sandbox, &config);
    sh(
        "echo v2 > .page.md.Xy12Ab && mv .page.md.Xy12Ab page.md",
        &sandbox.path("src"),
    );
    settle(&sandbox, "z");
    assert_eq!(sorted_log(&sandbox), ["page.md move", "z create,modify"]);
}

#[test]
fn root_missing_at_start_or_deleted_degrades_and_resumes_when_back() {
    let sandbox = Sandbox::new();
    let body = format!(
        "{}\n  [[listener.route]]\n  name = \"late\"\n  path = \"late\"\n  workdir = \"out\"\n  debounce_ms = 0\n  shell = 'echo \"late/$EXECLIB_NAME $EXECLIB_EVENT\" >> log'\n",
        log_route("")
    );
    let config = sandbox.config(&body);
    let daemon = Daemon::start(&sandbox, &config);
    let docs = daemon.listener("docs");
    assert_eq!(docs["state"], "degraded", "{docs}");
    assert!(
        docs["error"].as_str().unwrap().contains("late does not exist"),
        "{docs}"
    );
    sandbox.write("src/a", "1");
    wait_log(&sandbox, "a create,modify");

    sandbox.write("late/already-there", "1");
    wait_log(&sandbox, "late/already-there create");
    eventually("running again", || {
        (daemon.listener("docs")["state"] == "running").then_some(())
    });

    std::fs::remove_dir_all(sandbox.path("late")).unwrap();
    wait_log(&sandbox, "late/already-there delete");
    let docs = eventually("degraded", || {
        let l = daemon.listener("docs");
        (l["state"] == "degraded").then_some(l)
    });
    assert!(docs["error"].as_str().unwrap().contains("was deleted"), "{docs}");
    sandbox.write("src/b", "1");
    wait_log(&sandbox, "b create,modify");
    sandbox.write("late/new", "1");
    wait_log(&sandbox, "late/new create");
    eventually("running again", || {
        (daemon.listener("docs")["state"] == "running").then_some(())
    });
}

/// Makes `src/d…/d…/…` 25 levels of 200-byte names deep, past `PATH_MAX`: its
/// deepest folders cannot be watched. Returns the name of its first level.
fn too_deep(sandbox: &Sandbox) -> String {
    let name = "d".repeat(200);
    // Made by relative steps (mkdirat, openat), as no absolute path that long can be used.
    let mut dir = std::fs::File::open(sandbox.path("src")).unwrap();
    let c_name = std::ffi::CString::new(name.clone()).unwrap();
    for _ in 0..25 {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: a valid directory descriptor and C string; the new descriptor is owned once.
        unsafe {
            assert_eq!(libc::mkdirat(dir.as_raw_fd(), c_name.as_ptr(), 0o755), 0);
            let fd = libc::openat(
                dir.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            assert!(fd >= 0);
            dir = std::fs::File::from_raw_fd(fd);
        }
    }
    name
}

#[test]
fn regression_a_poll_forgot_the_folders_that_could_not_be_watched() {
    // Each rescan dropped the record of the folders under it that could not be
    // watched: after the first poll the listener said `running` again, though they
    // were still unwatched (and a chmod could no longer bring them back).
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", "poll = \"always\"\n  poll_ms = 100"));
    let daemon = Daemon::start(&sandbox, &config);
    too_deep(&sandbox);
    eventually("degraded", || {
        (daemon.listener("docs")["state"] == "degraded").then_some(())
    });
    // Ten polls and more: it stays so.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let docs = daemon.listener("docs");
        assert_eq!(docs["state"], "degraded", "{docs}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn regression_a_directory_too_deep_to_watch_is_reported_not_skipped_silently() {
    // Folders whose path passed PATH_MAX (4096 bytes) were left unwatched with a
    // debug line only: the listener said `running` and changes there never ran.
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    let name = too_deep(&sandbox);
    let docs = eventually("degraded", || {
        let l = daemon.listener("docs");
        (l["state"] == "degraded").then_some(l)
    });
    let error = docs["error"].as_str().unwrap();
    assert!(
        error.contains("could not be watched") && error.contains("name too long"),
        "{docs}"
    );
    assert!(
        daemon
            .log()
            .contains("not watched, changes under it are not seen")
    );
    // Once they are gone, the listener is running again.
    std::fs::remove_dir_all(sandbox.path("src").join(&name)).unwrap();
    eventually("running again", || {
        (daemon.listener("docs")["state"] == "running").then_some(())
    });
}

#[test]
fn hidden_directories_are_not_watched_and_symlinks_not_followed() {
    let sandbox = Sandbox::new();
    sandbox.write("src/.git/objects/a/b", "1");
    sandbox.write("src/visible/x", "1");
    sandbox.write("elsewhere/y", "1");
    std::os::unix::fs::symlink(sandbox.path("elsewhere"), sandbox.path("src/link")).unwrap();
    let config = sandbox.config(&log_route(""));
    let daemon = Daemon::start(&sandbox, &config);
    assert_eq!(daemon.listener("docs")["watches"], 2, "src and src/visible only");
    sandbox.write("elsewhere/y", "2");
    settle(&sandbox, "z");
    assert_eq!(log_lines(&sandbox), ["z create,modify"]);
}

pub(crate) fn catch_up_config(sandbox: &Sandbox) -> std::path::PathBuf {
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\n{}",
        listener_key(&log_route(""), "catch_up = true")
    );
    sandbox.config(&body)
}

fn changes_while_down(sandbox: &Sandbox) {
    sandbox.write("src/modified", "v2 longer");
    sandbox.write("src/created", "new");
    std::fs::remove_file(sandbox.path("src/deleted")).unwrap();
}

fn assert_caught_up(sandbox: &Sandbox) {
    for line in ["modified modify", "created create", "deleted delete"] {
        wait_log(sandbox, line);
    }
    settle(sandbox, "z");
    assert_eq!(
        log_lines(sandbox).len(),
        4,
        "only the changes, not `same`: {:?}",
        log_lines(sandbox)
    );
}

fn catch_up_tree(sandbox: &Sandbox) {
    for name in ["modified", "deleted", "same"] {
        sandbox.write(&format!("src/{name}"), "v1");
    }
}

#[test]
fn catch_up_after_a_clean_stop() {
    let sandbox = Sandbox::new();
    catch_up_tree(&sandbox);
    let config = catch_up_config(&sandbox);
    let mut daemon = Daemon::start(&sandbox, &config);
    daemon.ctl(&["shutdown"]);
    daemon.wait_exit();
    assert!(sandbox.path("state/docs.snapshot").exists());
    changes_while_down(&sandbox);
    let _daemon = Daemon::start(&sandbox, &config);
    assert_caught_up(&sandbox);
}

#[test]
fn catch_up_after_sigkill() {
    let sandbox = Sandbox::new();
    catch_up_tree(&sandbox);
    let config = catch_up_config(&sandbox);
    let mut daemon = Daemon::start(&sandbox, &config);
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    changes_while_down(&sandbox);
    let _daemon = Daemon::start(&sandbox, &config);
    assert_caught_up(&sandbox);
}

/// A catch-up listener whose job logs "NAME EVENTS" as it starts, then takes a while.
fn slow_catch_up_config(sandbox: &Sandbox) -> std::path::PathBuf {
    let route = one_route(
        r#"echo "$EXECLIB_NAME $EXECLIB_EVENT" >> ../out/log; exec sleep 3"#,
        "",
    );
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\n{}",
        listener_key(&route, "catch_up = true")
    );
    sandbox.config(&body)
}

#[test]
fn catch_up_reruns_a_change_whose_job_was_cut_short_by_sigkill() {
    let sandbox = Sandbox::new();
    sandbox.write("src/a", "v1");
    let config = slow_catch_up_config(&sandbox);
    let mut daemon = Daemon::start(&sandbox, &config);
    daemon.ctl(&["shutdown"]);
    daemon.wait_exit();
    sandbox.write("src/a", "v2, longer");
    let mut daemon = Daemon::start(&sandbox, &config);
    wait_log(&sandbox, "a modify"); // the catch-up run has started...
    daemon.signal(libc::SIGKILL); // ...and the daemon dies before it ends
    daemon.wait_exit();
    let _daemon = Daemon::start(&sandbox, &config);
    eventually("the change to run again", || {
        (log_lines(&sandbox).len() == 2).then_some(())
    });
    assert_eq!(log_lines(&sandbox), ["a modify", "a modify"]);
}

#[test]
fn catch_up_reruns_a_change_whose_job_was_cut_short_by_stop() {
    let sandbox = Sandbox::new();
    let config = slow_catch_up_config(&sandbox);
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "1");
    wait_log(&sandbox, "a create,modify");
    assert!(daemon.ctl(&["stop", "docs"]).status.success());
    assert!(daemon.ctl(&["start", "docs"]).status.success());
    wait_log(&sandbox, "a create");
}

#[test]
fn corrupt_snapshot_is_a_warning_and_a_fresh_start() {
    let sandbox = Sandbox::new();
    let config = catch_up_config(&sandbox);
    sandbox.write("state/docs.snapshot", "not a snapshot");
    let daemon = Daemon::start(&sandbox, &config);
    assert_eq!(daemon.listener("docs")["state"], "running");
    assert!(
        daemon.log().contains("cannot use the saved snapshot"),
        "{}",
        daemon.log()
    );
    settle(&sandbox, "z");
}

#[test]
fn sysctl_queue_overflow_rescans_and_every_file_runs() {
    if skip_unless_root("lower fs.inotify.max_queued_events") {
        return;
    }
    let sandbox = Sandbox::new();
    let config = sandbox.config(&listener_key(
        &one_route(r#"echo "$EXECLIB_NAME" >> ../out/log"#, ""),
        "max_jobs = 8",
    ));
    let daemon = {
        let _small_queue = Sysctl::set("max_queued_events", 64);
        Daemon::start(&sandbox, &config)
    };
    let mut expected = BTreeSet::new();
    // Frozen for the burst, the daemon reads nothing: the 64-event queue surely overflows.
    daemon.freeze();
    for i in 0..20_000 {
        let name = format!("f{i:05}");
        std::fs::write(sandbox.path("src").join(&name), "x").unwrap();
        expected.insert(name);
    }
    daemon.thaw();
    let seen = eventually_within(Duration::from_secs(240), "all 20,000 jobs", || {
        // Counting lines is cheap; the set is built only once there may be enough.
        let text = std::fs::read(sandbox.path("out/log")).unwrap_or_default();
        if text.iter().filter(|&&b| b == b'\n').count() < expected.len() {
            return None;
        }
        let seen: BTreeSet<String> = log_lines(&sandbox).into_iter().collect();
        (seen.len() >= expected.len()).then_some(seen)
    });
    assert_eq!(seen, expected);
    let log = daemon.log();
    assert!(log.contains("inotify queue overflowed: rescan found"), "{log}");
    assert!(
        !log.contains("rescan found 0 changed files"),
        "a rescan reports only what changed"
    );
}

#[test]
fn sysctl_directory_renamed_during_an_overflow_stays_watched() {
    if skip_unless_root("lower fs.inotify.max_queued_events") {
        return;
    }
    let sandbox = Sandbox::new();
    std::fs::create_dir(sandbox.path("src/a")).unwrap();
    let config = sandbox.config(&log_route(""));
    let daemon = {
        let _small_queue = Sysctl::set("max_queued_events", 16);
        Daemon::start(&sandbox, &config)
    };
    // Frozen, the daemon reads nothing: the 16-event queue surely overflows.
    daemon.freeze();
    for i in 0..300 {
        std::fs::write(sandbox.path(&format!("src/f{i}")), "x").unwrap();
    }
    std::fs::rename(sandbox.path("src/a"), sandbox.path("src/b")).unwrap();
    // The rescan that follows the freeze, not one from before it: a file written
    // while a rescan is still to come would be found by it (a run for `create`),
    // whether or not b is watched.
    let rescans = daemon.log().matches("rescan found").count();
    daemon.thaw();
    eventually("the rescan", || {
        (daemon.log().matches("rescan found").count() > rescans).then_some(())
    });
    sandbox.write("src/b/late", "1");
    // Its run comes after the rescan's 300, one at a time: 1.7-1.9 s beside two busy
    // loops; 60 s leaves room for more load.
    eventually_within(Duration::from_secs(60), "b/late's run", || {
        log_lines(&sandbox)
            .iter()
            .any(|l| l == "b/late create,modify")
            .then_some(())
    });
}

#[test]
fn sysctl_out_of_watches_polls_the_directories_without_one_and_loses_no_change() {
    if skip_unless_root("lower fs.inotify.max_user_watches") {
        return;
    }
    let sandbox = Sandbox::new();
    // 5,000 directories against a limit 1,000 above what this user holds: most of the
    // tree gets no watch.
    for i in 0..5000 {
        std::fs::create_dir_all(sandbox.path(&format!("big/d{:02}/e{:03}", i / 100, i % 100))).unwrap();
    }
    let body = format!(
        "{}\n[[listener]]\nname = \"big\"\nautostart = false\n  [[listener.route]]\n  path = \"big\"\n  \
         poll_ms = 200\n  debounce_ms = 0\n  delay_ms = 0\n  shell = 'echo \"$EXECLIB_NAME\" >> ../out/big'\n",
        log_route("")
    );
    let config = sandbox.config(&body);
    let daemon = Daemon::start(&sandbox, &config);
    let _limit = Sysctl::set("max_user_watches", inotify_usage().watches + 1000);
    let reply = daemon.request(r#"{"cmd":"start","listener":"big"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let big = daemon.listener("big");
    assert_eq!(big["state"], "degraded", "{big}");
    let error = big["error"].as_str().unwrap();
    assert!(
        error.contains("fs.inotify.max_user_watches is") && error.contains("directories are polled"),
        "{error}"
    );
    assert!(!big["polled"].as_array().unwrap().is_empty(), "{big}");
    // Changes everywhere in the tree, watched or not, are all seen.
    let files: Vec<String> = (0..5000)
        .step_by(250)
        .map(|i| format!("d{:02}/e{:03}/new.txt", i / 100, i % 100))
        .collect();
    for file in &files {
        sandbox.write(&format!("big/{file}"), "1");
    }
    eventually("every file's run", || {
        let seen = sandbox.read("out/big").unwrap_or_default();
        files.iter().all(|f| seen.lines().any(|l| l == f)).then_some(())
    });
    settle(&sandbox, "z");
}

#[test]
fn sysctl_out_of_instances_names_the_sysctl_and_others_run_on() {
    if skip_unless_root("lower fs.inotify.max_user_instances") {
        return;
    }
    let sandbox = Sandbox::new();
    std::fs::create_dir(sandbox.path("other")).unwrap();
    let body = format!(
        "{}\n[[listener]]\nname = \"more\"\nautostart = false\n  [[listener.route]]\n  path = \"other\"\n  shell = \"true\"\n",
        log_route("")
    );
    let config = sandbox.config(&body);
    let daemon = Daemon::start(&sandbox, &config);
    let reply = {
        let _limit = instances_at_limit();
        daemon.request(r#"{"cmd":"start","listener":"more"}"#)
    };
    assert_eq!(reply["error"]["code"], "start_failed", "{reply}");
    let error = daemon.listener("more")["error"].as_str().unwrap().to_owned();
    assert!(error.contains("fs.inotify.max_user_instances is"), "{error}");
    settle(&sandbox, "z");
}

/// Lowers `fs.inotify.max_user_instances` to the number of instances this user holds
/// now, so that the next one fails. Scanning /proc is the first guess (a descriptor
/// two processes share counts twice); the kernel settles it: while one more instance
/// still opens, the limit goes down by one.
fn instances_at_limit() -> Sysctl {
    let mut held = inotify_usage().instances;
    let limit = Sysctl::set("max_user_instances", held);
    loop {
        // SAFETY: no preconditions; the descriptor is closed at once.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
            return limit;
        }
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd) };
        assert!(held > 1, "the daemon holds an instance, yet one more opens");
        held -= 1;
        limit.write(held);
    }
}

struct Usage {
    instances: u64,
    watches: u64,
}

/// Inotify instances and watches open now by processes of this user (root): the
/// kernel counts them against the limits per effective user.
fn inotify_usage() -> Usage {
    let mut usage = Usage {
        instances: 0,
        watches: 0,
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for proc in std::fs::read_dir("/proc").unwrap().flatten() {
        if effective_uid(&proc.path()) != Some(me) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_str() == Some("anon_inode:inotify")) {
                usage.instances += 1;
                let info = proc.path().join("fdinfo").join(fd.file_name());
                let info = std::fs::read_to_string(info).unwrap_or_default();
                usage.watches += info.lines().filter(|l| l.starts_with("inotify wd:")).count() as u64;
            }
        }
    }
    usage
}

/// The effective uid of the process at `/proc/PID`.
fn effective_uid(proc: &std::path::Path) -> Option<u32> {
    let status = std::fs::read_to_string(proc.join("status")).ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// A tmpfs of `size` mounted at `path` for the life of the guard (root only).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {path:?}");
        SmallDisk(path.to_owned())
    }

    /// Fills the disk with `filler` until a write fails.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_state_directory_is_shown_and_keeps_the_last_good_snapshot() {
    if skip_unless_root("mount a small tmpfs as the state directory") {
        return;
    }
    let sandbox = Sandbox::new();
    for i in 0..200 {
        sandbox.write(&format!("src/f{i}"), "x");
    }
    let disk = SmallDisk::mount(&sandbox.path("state"), "256k");
    let config = catch_up_config(&sandbox);
    disk.fill();
    let daemon = Daemon::start(&sandbox, &config);
    // The fresh baseline could not be saved: the listener says so, nothing is left behind.
    let docs = daemon.listener("docs");
    assert_eq!(docs["state"], "degraded", "{docs}");
    assert!(
        docs["error"]
            .as_str()
            .unwrap()
            .contains("cannot save the snapshot"),
        "{docs}"
    );
    assert!(
        !sandbox.path("state/docs.tmp").exists(),
        "a failed save leaves no temporary"
    );
    assert!(daemon.log().contains("the last saved snapshot is kept"));
    drop(daemon);
    // With room, a save succeeds and the fault is gone.
    disk.free();
    let mut daemon = Daemon::start(&sandbox, &config);
    assert_eq!(daemon.listener("docs")["state"], "running");
    let good = std::fs::read(sandbox.path("state/docs.snapshot")).unwrap();
    // Full again: a change runs, the save at shutdown fails, the good snapshot stays.
    disk.fill();
    sandbox.write("src/f7", "changed");
    sandbox.wait_out("log");
    daemon.ctl(&["shutdown"]);
    daemon.wait_exit();
    assert!(
        daemon.log().contains("cannot save the snapshot"),
        "{}",
        daemon.log()
    );
    assert_eq!(std::fs::read(sandbox.path("state/docs.snapshot")).unwrap(), good);
    assert!(!sandbox.path("state/docs.tmp").exists());
    // After a restart only what changed since the last good save runs again, not every file.
    disk.free();
    std::fs::remove_file(sandbox.path("out/log")).unwrap();
    let _daemon = Daemon::start(&sandbox, &config);
    // Catch-up runs go first (one job at a time): once a later change has run, they have.
    sandbox.write("src/sentinel", "x");
    eventually("the sentinel's run", || {
        log_lines(&sandbox)
            .iter()
            .any(|l| l.starts_with("sentinel "))
            .then_some(())
    });
    assert_eq!(log_lines(&sandbox)[..1], ["f7 modify"]);
    assert_eq!(log_lines(&sandbox).len(), 2, "{:?}", log_lines(&sandbox));
}

#[test]
fn regression_a_directory_renamed_onto_the_name_of_one_just_moved_out_was_left_unwatched() {
    let sandbox = Sandbox::new();
    sandbox.write("src/a/old", "1");
    sandbox.write("src/b/f", "1");
    std::fs::create_dir(sandbox.path("outside")).unwrap();
    let config = sandbox.config(&log_route(""));
    let daemon = Daemon::start(&sandbox, &config);
    // A deploy's swap: the old release moved out, the new one renamed into its place,
    // the second rename before the watcher has settled the first (within 50 ms).
    std::fs::rename(sandbox.path("src/a"), sandbox.path("outside/a")).unwrap();
    std::fs::rename(sandbox.path("src/b"), sandbox.path("src/a")).unwrap();
    for line in ["a/old delete", "b/f delete", "a/f move"] {
        wait_log(&sandbox, line);
    }
    sandbox.write("src/a/g", "new");
    wait_log(&sandbox, "a/g create,modify");
    assert_eq!(daemon.listener("docs")["watches"], 2, "the root and the new a/");
    settle(&sandbox, "z");
    assert_eq!(
        sorted_log(&sandbox),
        [
            "a/f move",
            "a/g create,modify",
            "a/old delete",
            "b/f delete",
            "z create,modify"
        ],
        "the file now at a/f was not reported deleted"
    );
}

#[test]
fn regression_a_route_taking_no_deletes_ran_for_temporaries_already_gone() {
    let sandbox = Sandbox::new();
    sandbox.write("src/doc.txt", "hello");
    let config = sandbox.config(&log_route(r#"events = ["create", "modify"]"#));
    let _daemon = Daemon::start(&sandbox, &config);
    // sed -i's temporary (created, written, renamed over doc.txt), and a file written
    // then removed: the route takes no deletes, but hears that they are gone.
    sh(
        "sed -i s/hello/bye/ doc.txt && echo x > tmp1 && rm tmp1",
        &sandbox.path("src"),
    );
    settle(&sandbox, "z");
    assert_eq!(
        sorted_log(&sandbox),
        ["z create,modify"],
        "no run for a file already gone (doc.txt's rename-over is a move, not taken)"
    );
}
