//! Per-job cgroup v2 containment, by plain file I/O on cgroupfs.
//!
//! With cgroup delegation (`Delegate=yes` in the unit) the daemon owns a subtree,
//! its [`Tree`]. [`Tree::setup`] moves the daemon into the leaf `supervisor` (a
//! cgroup with controllers enabled below it may hold no process: the
//! no-internal-processes rule), enables the `memory`, `cpu` and `pids`
//! controllers for the subtree where they are available, and removes `job-*`
//! cgroups a crashed predecessor left. Each job then gets its own cgroup,
//! `job-<id>` ([`Tree::create_job`]), with the route's [`Limits`] written to it;
//! the spawner moves the job's first process there before it executes anything,
//! through [`JobGroup::procs_fd`], so every descendant stays inside, `setsid` or
//! not. When the job is over, [`JobGroup::kill`] ends whatever is left
//! (`cgroup.kill`; on kernels before 5.14, SIGKILL to every member, frozen first
//! where `cgroup.freeze` exists, until no new one appears), [`JobGroup::stats`]
//! reads its CPU time, memory peak and OOM events, and dropping it removes the
//! directory.
//!
//! [`detect`](fn@detect) finds the tree: our cgroup from `/proc/self/cgroup`, the cgroup2
//! mount from `/proc/self/mountinfo` (`/sys/fs/cgroup`, or
//! `/sys/fs/cgroup/unified` on hybrid hosts), delegated when the directory has
//! the extended attribute `trusted.delegate` or `user.delegate` set to `1`
//! (systemd 251 and later), or, for a daemon that is not root, when the
//! directory and its `cgroup.procs` belong to our effective uid (`Delegate=yes`
//! with `User=`). Without a tree, jobs run as before (process groups) and
//! limits are not enforced: [`Unavailable`](detect::Unavailable) says why, in a sentence.

mod detect;
mod group;

pub use detect::detect;
pub use group::{JobGroup, Stats};

use group::{clear, own_pids};
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tracing::warn;

pub use crate::config::{Limits, MemoryMax};

/// The leaf the daemon itself lives in.
pub const SUPERVISOR: &str = "supervisor";
/// The prefix of every job's cgroup.
pub const JOB_PREFIX: &str = "job-";
/// The controllers enabled for jobs when the tree has them.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// Other names tried for a job's cgroup when `job-<id>` exists, at most.
const NAME_TRIES: u32 = 100;

/// The daemon's delegated cgroup v2 subtree.
#[derive(Debug)]
pub struct Tree {
    /// Its directory under the cgroup2 mount.
    dir: PathBuf,
    /// Whether the memory controller is enabled for its children.
    memory: bool,
    /// Whether the cpu controller is enabled for its children.
    cpu: bool,
    /// The machine's RAM in bytes (`MemTotal`), for percentages; `None` if unknown.
    physical_memory: Option<u64>,
}

/// What [`Tree::setup`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prepared {
    /// Stale `job-*` cgroups (a crashed predecessor's) killed and removed.
    pub stale_removed: usize,
    /// Stale `job-*` cgroups that could not be removed (logged).
    pub stale_left: usize,
}

impl Tree {
    /// The tree at `dir`, a cgroup2 directory, taken as delegated without checking
    /// (tests, or a caller that knows). Reads which controllers its children have.
    pub fn at(dir: &Path) -> io::Result<Tree> {
        fs::metadata(dir.join("cgroup.procs")).map_err(|e| in_file(&dir.join("cgroup.procs"), e))?;
        let mut tree = Tree {
            dir: dir.to_owned(),
            memory: false,
            cpu: false,
            // sysinfo(2) first: the shipped unit's ProcSubset=pid hides /proc/meminfo.
            physical_memory: crate::sys::total_memory().or_else(|| {
                fs::read_to_string("/proc/meminfo")
                    .ok()
                    .and_then(|m| mem_total(&m))
            }),
        };
        tree.read_enabled()?;
        Ok(tree)
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The controllers its jobs get that limits need (`memory`, `cpu`), for `status`.
    pub fn controllers(&self) -> Vec<&'static str> {
        [("memory", self.memory), ("cpu", self.cpu)]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect()
    }

    /// Prepares the tree for jobs (idempotent): moves the daemon into the leaf
    /// [`SUPERVISOR`], enables `memory`, `cpu` and `pids` for the children where
    /// `cgroup.controllers` lists them, and kills and removes stale `job-*` cgroups.
    pub fn setup(&mut self) -> io::Result<Prepared> {
        self.setup_for(std::process::id())
    }

    /// [`Tree::setup`] with `pid` as the daemon.
    fn setup_for(&mut self, pid: u32) -> io::Result<Prepared> {
        let supervisor = self.dir.join(SUPERVISOR);
        match fs::create_dir(&supervisor) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(in_file(&supervisor, e)),
            _ => {}
        }
        write_file(&supervisor.join("cgroup.procs"), &pid.to_string())?;
        self.enable(&CONTROLLERS)?;
        Ok(self.remove_stale())
    }

    /// Enables for the children the controllers of `wanted` that are available and
    /// not enabled yet.
    fn enable(&mut self, wanted: &[&str]) -> io::Result<()> {
        let available = read_file(&self.dir.join("cgroup.controllers"))?;
        let enabled = read_file(&self.dir.join("cgroup.subtree_control"))?;
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<HashSet<_>>();
        let (available, enabled) = (words(&available), words(&enabled));
        let missing: Vec<String> = wanted
            .iter()
            .filter(|c| available.contains(**c) && !enabled.contains(**c))
            .map(|c| format!("+{c}"))
            .collect();
        // One at a time: a controller that cannot be enabled (cpu with real-time
        // tasks about, say) leaves the others on, and is only logged.
        let control = self.dir.join("cgroup.subtree_control");
        let mut failures = Vec::new();
        for controller in &missing {
            if let Err(e) = write_file(&control, controller) {
                // The no-internal-processes rule: others share the tree's own cgroup.
                let others = own_pids(&self.dir);
                let e = match e.kind() {
                    io::ErrorKind::ResourceBusy if !others.is_empty() => io::Error::new(
                        e.kind(),
                        format!("{e}; processes outside {SUPERVISOR} hold it: {others:?}"),
                    ),
                    _ => e,
                };
                warn!("cannot enable the {} controller for jobs: {e}", &controller[1..]);
                failures.push(e);
            }
        }
        self.read_enabled()?;
        // Nothing could be enabled for a reason that holds for all: say so to the caller.
        match failures.len() == missing.len() && !missing.is_empty() {
            true => Err(failures.swap_remove(0)),
            false => Ok(()),
        }
    }

    /// Sets the controller flags from `cgroup.subtree_control`.
    fn read_enabled(&mut self) -> io::Result<()> {
        let enabled = read_file(&self.dir.join("cgroup.subtree_control"))?;
        let on = |name: &str| enabled.split_whitespace().any(|c| c == name);
        (self.memory, self.cpu) = (on("memory"), on("cpu"));
        Ok(())
    }

    /// Kills and removes every `job-*` cgroup (left by a crashed predecessor).
    fn remove_stale(&self) -> Prepared {
        let mut prepared = Prepared::default();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return prepared;
        };
        for entry in entries.flatten() {
            let stale = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(JOB_PREFIX))
                && entry.file_type().is_ok_and(|t| t.is_dir());
            if !stale {
                continue;
            }
            match clear(&entry.path()) {
                Ok(()) => prepared.stale_removed += 1,
                Err(e) => {
                    warn!(
                        "cannot remove the stale job cgroup {}: {e}",
                        entry.path().display()
                    );
                    prepared.stale_left += 1;
                }
            }
        }
        prepared
    }

    /// The configured limits of `limits` this tree cannot apply (their config keys),
    /// for a warning at start: their controller is not available to jobs.
    pub fn unenforced(&self, limits: &Limits) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let percent_unknown =
            matches!(limits.memory_max, Some(MemoryMax::Permyriad(_))) && self.physical_memory.is_none();
        if limits.memory_max.is_some() && (!self.memory || percent_unknown) {
            keys.push("memory_max");
        }
        if limits.cpu_weight.is_some() && !self.cpu {
            keys.push("cpu_weight");
        }
        keys
    }

    /// Makes the cgroup of job `id` (`job-<id>`; `job-<id>-<n>` if that name is
    /// taken), writes the limits that can be applied, and opens its `cgroup.procs`.
    pub fn create_job(&self, id: u64, limits: &Limits) -> io::Result<JobGroup> {
        let dir = self.make_job_dir(id)?;
        let group = JobGroup::open(dir.clone()).and_then(|mut group| {
            group.memory_max = self.apply(&dir, limits)?;
            Ok(group)
        });
        if group.is_err() {
            let _ = fs::remove_dir(&dir);
        }
        group
    }

    /// Creates a fresh directory for job `id`: never one that exists (it may be live).
    fn make_job_dir(&self, id: u64) -> io::Result<PathBuf> {
        let mut dir = self.dir.join(format!("{JOB_PREFIX}{id}"));
        for n in 1..=NAME_TRIES {
            match fs::create_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    dir = self.dir.join(format!("{JOB_PREFIX}{id}-{n}"));
                }
                result => return result.map(|()| dir.clone()).map_err(|e| in_file(&dir, e)),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{}: {NAME_TRIES} names for job {id} are taken",
                self.dir.display()
            ),
        ))
    }

    /// Writes `limits` to job cgroup `dir` where the controller is there; returns the
    /// `memory_max` applied.
    fn apply(&self, dir: &Path, limits: &Limits) -> io::Result<Option<MemoryMax>> {
        let mut applied = None;
        if let (Some(max), true) = (limits.memory_max, self.memory) {
            let value = match (max, self.physical_memory) {
                (MemoryMax::Permyriad(_), None) => None,
                (max, physical) => Some(max.cgroup_value(physical.unwrap_or(0))),
            };
            if let Some(value) = value {
                write_file(&dir.join("memory.max"), &value)?;
                applied = Some(max);
            }
        }
        if let (Some(weight), true) = (limits.cpu_weight, self.cpu) {
            write_file(&dir.join("cpu.weight"), &weight.to_string())?;
        }
        Ok(applied)
    }
}

/// Reads a cgroup file, the error naming it.
fn read_file(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map_err(|e| in_file(path, e))
}

/// Writes `text` to an existing cgroup file in one `write` (as `echo TEXT > FILE`:
/// truncated, never created), the error naming it.
fn write_file(path: &Path, text: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| in_file(path, e))?;
    file.write_all(text.as_bytes()).map_err(|e| in_file(path, e))
}

/// `e`, its message prefixed with `path`.
fn in_file(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The value of `key` in a flat keyed file (`cpu.stat`, `memory.events`,
/// `cgroup.events`: one `key value` a line).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests;
