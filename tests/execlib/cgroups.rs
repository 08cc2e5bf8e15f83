//! Jobs in their own cgroups: the daemon started inside a scratch cgroup v2 marked
//! delegated (`user.delegate=1`, as systemd marks a `Delegate=yes` unit's), as root.
//! The throwaway-systemd test (`tests/systemd/e2e.sh`) does the same under a real
//! unit.

use crate::support::*;
use std::path::{Path, PathBuf};

/// A scratch cgroup under ours, marked delegated; killed and removed on drop.
struct Delegated {
    dir: PathBuf,
}

impl Delegated {
    /// `None` (after saying why: a skip, which fails under `TESTS_NO_SKIP=1`) when not
    /// root or no cgroup2 hierarchy is mounted.
    fn new(name: &str) -> Option<Self> {
        if skip_unless_root("make a cgroup") {
            return None;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(mount) = mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split(' ').nth(4).unwrap().to_owned())
        }) else {
            skip("no cgroup2 hierarchy is mounted");
            return None;
        };
        let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let ours = ours
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .trim_start_matches('/');
        let dir = Path::new(&mount)
            .join(ours)
            .join(format!("execlib-test-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        xattr::set(&dir, "user.delegate", b"1").unwrap();
        Some(Delegated { dir })
    }

    /// The daemon started inside it (a shell moves itself in, then execs the daemon).
    fn daemon(&self, sandbox: &Sandbox, config: &Path) -> Daemon {
        let procs = self.dir.join("cgroup.procs");
        let wrapper = [
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo $$ > '{}' && exec \"$0\" \"$@\"", procs.display()),
        ];
        let mut daemon = Daemon::spawn_with(sandbox, config, &wrapper, "text");
        daemon.notify.wait_for("READY=1");
        daemon
    }

    /// The jobs' cgroups now in it.
    fn job_cgroups(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("job-"))
            .collect()
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        let mut dirs: Vec<PathBuf> = vec![];
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
            dirs.push(dir);
        }
        let _ = eventually_ok(5000, || {
            dirs.iter()
                .rev()
                .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
        });
    }
}

/// Polls `check` until it holds or `ms` pass.
fn eventually_ok(ms: u64, mut check: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    while std::time::Instant::now() < end {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[test]
fn in_a_delegated_cgroup_an_escaped_grandchild_ends_with_its_job() {
    let Some(cgroup) = Delegated::new("escape") else {
        return;
    };
    let sandbox = Sandbox::new();
    let job = "setsid sh -c 'sleep 300 & echo $! > ../out/escaped' & wait";
    let config = sandbox.config(&one_route(job, ""));
    let daemon = cgroup.daemon(&sandbox, &config);
    let status = String::from_utf8(daemon.ctl(&["status"]).stdout).unwrap();
    assert!(status.contains("a cgroup per job"), "{status}");
    sandbox.write("src/a", "x");
    let pid: i32 = sandbox.wait_out("escaped").trim().parse().unwrap();
    eventually("the job's end", || {
        daemon.log().contains("job finished").then_some(())
    });
    eventually("the escaped grandchild ended with its job", || {
        (!alive(pid)).then_some(())
    });
    eventually("the job's cgroup removed", || {
        cgroup.job_cgroups().is_empty().then_some(())
    });
    let log = daemon.log();
    let finished = log.lines().find(|l| l.contains("job finished")).unwrap();
    assert!(
        finished.contains("cpu_usec=") && finished.contains("memory_peak="),
        "{finished}"
    );
}

#[test]
fn in_a_delegated_cgroup_a_timed_out_jobs_whole_cgroup_is_gone() {
    let Some(cgroup) = Delegated::new("timeout") else {
        return;
    };
    let sandbox = Sandbox::new();
    // A grandchild that ignores SIGTERM and left the job's process group.
    let job = "setsid sh -c 'trap \"\" TERM; sleep 300 & echo $! > ../out/escaped; wait' & sleep 300";
    let config = sandbox.config(&one_route(job, "timeout_ms = 300\n  kill_grace_ms = 200"));
    let daemon = cgroup.daemon(&sandbox, &config);
    sandbox.write("src/a", "x");
    let pid: i32 = sandbox.wait_out("escaped").trim().parse().unwrap();
    eventually("the timeout", || {
        daemon.log().contains("killed after its timeout").then_some(())
    });
    eventually("every process of the job gone", || (!alive(pid)).then_some(()));
    eventually("the job's cgroup removed", || {
        cgroup.job_cgroups().is_empty().then_some(())
    });
}

#[test]
fn memory_max_is_enforced_in_a_job_cgroup_or_said_to_be_unenforced() {
    let Some(cgroup) = Delegated::new("memory") else {
        return;
    };
    let sandbox = Sandbox::new();
    let job = "python3 -c 'b = bytearray(256 << 20); print(len(b))'";
    let config = sandbox.config(&one_route(job, "memory_max = \"64M\""));
    let daemon = cgroup.daemon(&sandbox, &config);
    let controllers = std::fs::read_to_string(cgroup.dir.join("cgroup.controllers")).unwrap();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        // Hosts whose memory controller is bound to cgroup v1 (hybrid): the limit
        // cannot be applied, and the daemon says so rather than pretend.
        eventually("the warning", || {
            daemon
                .log()
                .contains("route pages: memory_max is not enforced")
                .then_some(())
        });
        return;
    }
    sandbox.write("src/a", "x");
    eventually("the job failed for its memory_max", || {
        daemon.log().contains("exceeded memory_max (64M)").then_some(())
    });
}
