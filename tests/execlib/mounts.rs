//! Where files really are: file systems mounted over watched directories (root
//! only: real tmpfs mounts), and route paths that are symlinks swapped by deploys.

use crate::support::*;
use crate::watching::sh;
use std::path::{Path, PathBuf};

/// A tmpfs mounted at a path; lazily unmounted on drop (if still mounted).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path) -> Tmpfs {
        run(&["mount", "-t", "tmpfs", "tmpfs", path.to_str().unwrap()]);
        Tmpfs(path.to_owned())
    }

    fn unmount(self) {
        run(&["umount", self.0.to_str().unwrap()]);
        std::mem::forget(self);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Waits for the run of a file written right after a mount change: reported as
/// written (`create,modify`), or, when the rescan for the mount read it first, as
/// found (`create`).
fn wait_written(sandbox: &Sandbox, name: &str) {
    let lines = [format!("{name} create,modify"), format!("{name} create")];
    eventually(&format!("a run for {name}"), || {
        log_lines(sandbox).iter().any(|l| lines.contains(l)).then_some(())
    });
}

fn run(argv: &[&str]) {
    let status = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .unwrap();
    assert!(status.success(), "{argv:?}");
}

#[test]
fn a_tmpfs_over_a_subdirectory_is_seen_mounted_unmounted_and_mounted_again() {
    if skip_unless_root("mount a tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write("src/sub/under.txt", "hidden by the mount");
    let config = sandbox.config(&log_route(""));
    let daemon = Daemon::start(&sandbox, &config);
    let mount = Tmpfs::mount(&sandbox.path("src/sub"));
    wait_log(&sandbox, "sub/under.txt delete");
    sandbox.write("src/sub/on-tmpfs.txt", "1");
    wait_written(&sandbox, "sub/on-tmpfs.txt");
    mount.unmount();
    wait_log(&sandbox, "sub/on-tmpfs.txt delete");
    wait_log(&sandbox, "sub/under.txt create");
    // Mounted again later (not within a moment): still seen.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _again = Tmpfs::mount(&sandbox.path("src/sub"));
    sandbox.write("src/sub/second.txt", "2");
    wait_written(&sandbox, "sub/second.txt");
    let status = daemon.listener("docs");
    assert_eq!(status["state"], "running", "{status}");
}

#[test]
fn a_remount_of_the_same_file_system_reports_nothing() {
    if skip_unless_root("mount a tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("src/sub")).unwrap();
    let _mount = Tmpfs::mount(&sandbox.path("src/sub"));
    sandbox.write("src/sub/kept.txt", "1");
    let config = sandbox.config(&log_route(""));
    let _daemon = Daemon::start(&sandbox, &config);
    run(&[
        "mount",
        "-o",
        "remount,size=4m",
        sandbox.path("src/sub").to_str().unwrap(),
    ]);
    sandbox.write("src/z", "sentinel");
    wait_log(&sandbox, "z create,modify");
    assert_eq!(log_lines(&sandbox), ["z create,modify"]);
}

#[test]
fn a_tmpfs_over_the_route_path_itself_replaces_what_is_watched() {
    if skip_unless_root("mount a tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write("src/before.txt", "1");
    let config = sandbox.config(&log_route(""));
    let _daemon = Daemon::start(&sandbox, &config);
    let mount = Tmpfs::mount(&sandbox.path("src"));
    wait_log(&sandbox, "before.txt delete");
    sandbox.write("src/mounted.txt", "1");
    wait_written(&sandbox, "mounted.txt");
    mount.unmount();
    wait_log(&sandbox, "mounted.txt delete");
    wait_log(&sandbox, "before.txt create");
}

#[test]
fn a_route_path_that_is_an_empty_mount_point_at_start_works_once_mounted() {
    if skip_unless_root("mount a tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("src")).unwrap();
    let config = sandbox.config(&log_route(""));
    let _daemon = Daemon::start(&sandbox, &config);
    // The data disk arrives after the daemon started (the boot-order case).
    let staging = sandbox.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let _disk = Tmpfs::mount(&staging);
    std::fs::write(staging.join("already.txt"), "1").unwrap();
    run(&[
        "mount",
        "--bind",
        staging.to_str().unwrap(),
        sandbox.path("src").to_str().unwrap(),
    ]);
    let _bind = Tmpfs(sandbox.path("src"));
    wait_log(&sandbox, "already.txt create");
    sandbox.write("src/later.txt", "1");
    wait_written(&sandbox, "later.txt");
}

/// `current -> releases/NAME` with a route on `current`.
fn releases(sandbox: &Sandbox) {
    sandbox.write("releases/r1/same.txt", "same");
    sandbox.write("releases/r1/old-only.txt", "1");
    sandbox.write("releases/r1/changed.txt", "r1");
    // Unchanged across releases as `rsync --link-dest` or `cp -al` keep it: the same
    // file (a hard link). A file written anew is another file, and counts as changed.
    std::fs::create_dir_all(sandbox.path("releases/r2")).unwrap();
    std::fs::hard_link(
        sandbox.path("releases/r1/same.txt"),
        sandbox.path("releases/r2/same.txt"),
    )
    .unwrap();
    sandbox.write("releases/r2/new-only.txt", "2");
    sandbox.write("releases/r2/changed.txt", "r2 is longer");
    std::os::unix::fs::symlink("releases/r1", sandbox.path("current")).unwrap();
    // A file changed within a second of the daemon's start is recorded as unknown (its
    // timestamps may not tell later changes apart) and compares as changed: let the
    // releases age past that, as real ones are.
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

fn swap_config(sandbox: &Sandbox) -> PathBuf {
    swap_config_with(sandbox, "")
}

/// [`swap_config`] with more route options.
fn swap_config_with(sandbox: &Sandbox, extra: &str) -> PathBuf {
    // The job runs in the route path: through the link, `..` is `releases/`.
    let log = sandbox.path("out/log");
    let body = log_route(extra)
        .replacen("path = \"src\"", "path = \"current\"", 1)
        .replace("../out/log", log.to_str().unwrap());
    sandbox.config(&body)
}

fn assert_swapped(sandbox: &Sandbox) {
    wait_log(sandbox, "old-only.txt delete");
    wait_log(sandbox, "new-only.txt create");
    wait_log(sandbox, "changed.txt modify");
    // Watched where it now resolves, reported under the configured path.
    sandbox.write("releases/r2/fresh.txt", "1");
    wait_log(sandbox, "fresh.txt create,modify");
    sandbox.write("releases/r1/stale.txt", "1");
    sandbox.write("releases/r2/z", "sentinel");
    wait_log(sandbox, "z create,modify");
    let log = log_lines(sandbox);
    assert!(
        !log.iter()
            .any(|l| l.starts_with("stale.txt") || l.starts_with("same.txt")),
        "{log:?}"
    );
}

#[test]
fn a_symlinked_route_path_is_watched_and_an_ln_sfn_swap_reports_the_differences() {
    let sandbox = Sandbox::new();
    releases(&sandbox);
    let config = swap_config(&sandbox);
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_execlibd"))
        .arg("--check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let check = String::from_utf8(check.stdout).unwrap();
    assert!(
        check.contains("current resolves to ") && check.contains("releases/r1"),
        "{check}"
    );
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("releases/r1/edit.txt", "1");
    wait_log(&sandbox, "edit.txt create,modify");
    assert!(
        daemon.log().contains("resolves_to="),
        "the log says where it resolves"
    );
    sh("ln -sfn releases/r2 current", &sandbox.path(""));
    assert_swapped(&sandbox);
    let listeners = String::from_utf8(daemon.ctl(&["listeners"]).stdout).unwrap();
    assert!(
        listeners.contains("current -> ") && listeners.contains("releases/r2"),
        "{listeners}"
    );
}

#[test]
fn a_symlinked_route_path_swapped_by_rename_reports_the_differences() {
    let sandbox = Sandbox::new();
    releases(&sandbox);
    let config = swap_config(&sandbox);
    let _daemon = Daemon::start(&sandbox, &config);
    sh(
        "ln -s releases/r2 current.new && mv -T current.new current",
        &sandbox.path(""),
    );
    assert_swapped(&sandbox);
}

/// A sandbox whose `src` is a bindfs (FUSE) view of its `real`; `None` (after saying
/// why) when not root or without bindfs.
fn bindfs_sandbox() -> Option<(Sandbox, HungMount)> {
    let sandbox = Sandbox::new();
    let mount = HungMount::mount_at(&sandbox, "real", "src")?;
    Some((sandbox, mount))
}

#[test]
fn a_fuse_mount_is_polled_and_changes_made_beneath_it_are_seen() {
    let Some((sandbox, _mount)) = bindfs_sandbox() else {
        return;
    };
    sandbox.write("real/before.txt", "1");
    let config = sandbox.config(&log_route("poll_ms = 200"));
    let daemon = Daemon::start(&sandbox, &config);
    let listener = daemon.listener("docs");
    let polled = listener["polled"].to_string();
    assert!(
        polled.contains("inotify does not see changes made elsewhere"),
        "{listener}"
    );
    // Written beneath the mount, not through it: inotify on the mount never hears of it.
    let written = std::time::Instant::now();
    std::fs::write(sandbox.path("real/beneath.txt"), "1").unwrap();
    wait_log(&sandbox, "beneath.txt create");
    // Seen by the next poll (200 ms), not by some later accident; generous for a busy CI.
    assert!(
        written.elapsed() < std::time::Duration::from_millis(1500),
        "{:?}",
        written.elapsed()
    );
    std::fs::write(sandbox.path("real/before.txt"), "changed").unwrap();
    wait_log(&sandbox, "before.txt modify");
    std::fs::remove_file(sandbox.path("real/beneath.txt")).unwrap();
    wait_log(&sandbox, "beneath.txt delete");
}

#[test]
fn poll_never_leaves_a_fuse_mount_unpolled_and_always_polls_a_local_tree() {
    let Some((sandbox, _mount)) = bindfs_sandbox() else {
        return;
    };
    let config = sandbox.config(&log_route("poll = \"never\"\n  poll_ms = 200"));
    let daemon = Daemon::start(&sandbox, &config);
    assert!(
        daemon.listener("docs")["polled"].is_null(),
        "never: nothing polled"
    );
    std::fs::write(sandbox.path("real/unseen.txt"), "1").unwrap();
    // Through the mount inotify does hear: a sentinel written there runs after the
    // poll interval has passed several times.
    std::thread::sleep(std::time::Duration::from_millis(600));
    sandbox.write("src/z", "sentinel");
    wait_log(&sandbox, "z create,modify");
    assert!(!log_lines(&sandbox).iter().any(|l| l.starts_with("unseen.txt")));
    drop(daemon);
    let local = Sandbox::new();
    let config = local.config(&log_route("poll = \"always\"\n  poll_ms = 200"));
    let daemon = Daemon::start(&local, &config);
    let polled = daemon.listener("docs")["polled"].to_string();
    assert!(polled.contains("poll = \\\"always\\\""), "{polled}");
}

#[test]
fn regression_a_symlinked_route_path_survives_polls_and_keeps_reporting() {
    let sandbox = Sandbox::new();
    releases(&sandbox);
    let config = swap_config_with(&sandbox, "poll = \"always\"\n  poll_ms = 100");
    let _daemon = Daemon::start(&sandbox, &config);
    // Several polls: each rescans the route path through its symlink.
    std::thread::sleep(std::time::Duration::from_millis(500));
    sandbox.write("releases/r1/edit.txt", "1");
    wait_written(&sandbox, "edit.txt");
    let log = log_lines(&sandbox);
    assert!(!log.iter().any(|l| l.ends_with(" delete")), "{log:?}");
}

#[test]
fn regression_a_swap_then_removal_of_the_old_release_reports_only_the_differences() {
    let sandbox = Sandbox::new();
    releases(&sandbox);
    let config = swap_config(&sandbox);
    let daemon = Daemon::start(&sandbox, &config);
    sh(
        "ln -sfn releases/r2 current && rm -rf releases/r1",
        &sandbox.path(""),
    );
    assert_swapped_from_r1_gone(&sandbox);
    assert!(!daemon.log().contains("was deleted"), "{}", daemon.log());
}

/// As [`assert_swapped`], after `releases/r1` is gone.
fn assert_swapped_from_r1_gone(sandbox: &Sandbox) {
    wait_log(sandbox, "old-only.txt delete");
    wait_log(sandbox, "new-only.txt create");
    wait_log(sandbox, "changed.txt modify");
    sandbox.write("releases/r2/z", "sentinel");
    wait_log(sandbox, "z create,modify");
    let log = log_lines(sandbox);
    assert!(!log.iter().any(|l| l.starts_with("same.txt")), "{log:?}");
    assert_eq!(log.len(), 4, "{log:?}");
}

#[test]
fn regression_a_file_system_mounted_over_another_at_the_same_point_is_seen() {
    if skip_unless_root("mount a tmpfs") {
        return;
    }
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("src/sub")).unwrap();
    let _first = Tmpfs::mount(&sandbox.path("src/sub"));
    sandbox.write("src/sub/first.txt", "1");
    let config = sandbox.config(&log_route(""));
    let _daemon = Daemon::start(&sandbox, &config);
    let _second = Tmpfs::mount(&sandbox.path("src/sub"));
    wait_log(&sandbox, "sub/first.txt delete");
    sandbox.write("src/sub/second.txt", "2");
    wait_written(&sandbox, "sub/second.txt");
}

#[test]
fn regression_polling_leaves_a_file_being_written_to_its_close() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&log_route("poll = \"always\"\n  poll_ms = 100"));
    let _daemon = Daemon::start(&sandbox, &config);
    // Written for a second through one descriptor: several polls see it grow.
    sh(
        "exec 3>slow.txt; for i in 1 2 3 4 5 6 7 8 9 10; do echo $i >&3; sleep 0.1; done",
        &sandbox.path("src"),
    );
    wait_log(&sandbox, "slow.txt create,modify");
    sandbox.write("src/z", "sentinel");
    wait_written(&sandbox, "z");
    let runs: Vec<String> = log_lines(&sandbox)
        .into_iter()
        .filter(|l| l.starts_with("slow.txt"))
        .collect();
    assert_eq!(runs, ["slow.txt create,modify"]);
}

#[test]
fn regression_two_route_paths_reaching_one_directory_are_refused_clearly() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("src")).unwrap();
    std::os::unix::fs::symlink("src", sandbox.path("alias")).unwrap();
    let second = "\n  [[listener.route]]\n  name = \"alias\"\n  path = \"alias\"\n  shell = \"true\"\n";
    let config = sandbox.config(&format!("{}{second}", log_route("")));
    let daemon = Daemon::start(&sandbox, &config);
    let docs = daemon.listener("docs");
    assert_eq!(docs["state"], "failed", "{docs}");
    assert!(
        docs["error"].as_str().unwrap().contains("are the same directory"),
        "{docs}"
    );
}
