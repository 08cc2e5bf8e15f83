//! How jobs are contained, decided once at start: each job in its own cgroup when
//! the daemon has a delegated cgroup v2 tree ([`super::cgroup`]), else its process
//! group; in both cases the daemon is a child subreaper ([`super::orphans`]), so a
//! descendant that escapes is reaped and ended at its listener's stop and at
//! shutdown. `status` shows which, and why.

use super::cgroup::{self, JobGroup, Limits, Tree};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::{info, warn};

/// The delegated tree, when there is one; decided by [`init`].
static TREE: OnceLock<Option<Tree>> = OnceLock::new();
/// What `status` says.
static DESCRIPTION: OnceLock<String> = OnceLock::new();
/// Why there is no tree (for the warnings about limits that are not enforced).
static NO_TREE: OnceLock<String> = OnceLock::new();
/// Numbers for the jobs' cgroups (`job-<n>`).
static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

/// Decides the containment (before any job starts): sets up the cgroup tree when
/// delegated, and makes the daemon a subreaper (the daemon then reaps what it
/// adopts: [`super::orphans::reap`]). Blocking.
pub fn init() {
    let adopted = super::orphans::adopt();
    let tree = match cgroup::detect() {
        Ok(mut tree) => match tree.setup() {
            Ok(prepared) => {
                info!(
                    cgroup = %tree.dir().display(),
                    controllers = ?tree.controllers(),
                    stale_removed = prepared.stale_removed,
                    "jobs run in their own cgroups"
                );
                Some(tree)
            }
            Err(e) => {
                warn!(
                    "cannot set up the delegated cgroup {}: {e}; jobs run in process groups",
                    tree.dir().display()
                );
                let _ = NO_TREE.set(format!("the delegated cgroup cannot be set up: {e}"));
                None
            }
        },
        Err(why) => {
            info!("jobs run in process groups: no cgroup of our own ({why})");
            let _ = NO_TREE.set(why.to_string());
            None
        }
    };
    let reaping = match adopted {
        true => {
            "descendants that escape are adopted (subreaper), reaped, and ended at their listener's stop and at shutdown"
        }
        false => "escaped descendants go to init (not a subreaper)",
    };
    let description = match &tree {
        Some(tree) => format!(
            "a cgroup per job under {} (controllers: {}); {reaping}",
            tree.dir().display(),
            match tree.controllers() {
                c if c.is_empty() => "none".to_owned(),
                c => c.join(", "),
            }
        ),
        None => format!(
            "process groups; {reaping}; no cgroups: {}",
            NO_TREE.get().map_or("", String::as_str)
        ),
    };
    let _ = DESCRIPTION.set(description);
    let _ = TREE.set(tree);
}

/// How jobs are contained, and why; `None` before [`init`].
pub fn describe() -> Option<String> {
    DESCRIPTION.get().cloned()
}

/// A new cgroup for a job, when jobs get one.
pub fn job_group(limits: &Limits) -> std::io::Result<Option<JobGroup>> {
    match TREE.get() {
        Some(Some(tree)) => tree
            .create_job(NEXT_JOB.fetch_add(1, Ordering::Relaxed), limits)
            .map(Some),
        _ => Ok(None),
    }
}

/// Warns (once per call: at each listener start) about the limits of `what` that are
/// configured but cannot be enforced, saying why.
pub fn warn_unenforced(what: &str, limits: &Limits) {
    if limits.is_empty() {
        return;
    }
    let (keys, why) = match TREE.get() {
        Some(Some(tree)) => (
            tree.unenforced(limits),
            format!("its controller is not available in {}", tree.dir().display()),
        ),
        _ => {
            let keys = [
                ("memory_max", limits.memory_max.is_some()),
                ("cpu_weight", limits.cpu_weight.is_some()),
            ];
            let keys = keys.iter().filter(|(_, set)| *set).map(|(k, _)| *k).collect();
            (
                keys,
                format!(
                    "jobs get no cgroup ({})",
                    NO_TREE.get().map_or("", String::as_str)
                ),
            )
        }
    };
    for key in keys {
        warn!("{what}: {key} is not enforced: {why}");
    }
}
