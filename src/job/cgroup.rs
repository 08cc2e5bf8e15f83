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
//! [`detect`] finds the tree: our cgroup from `/proc/self/cgroup`, the cgroup2
//! mount from `/proc/self/mountinfo` (`/sys/fs/cgroup`, or
//! `/sys/fs/cgroup/unified` on hybrid hosts), delegated when the directory has
//! the extended attribute `trusted.delegate` or `user.delegate` set to `1`
//! (systemd 251 and later), or, for a daemon that is not root, when the
//! directory and its `cgroup.procs` belong to our effective uid (`Delegate=yes`
//! with `User=`). Without a tree, jobs run as before (process groups) and
//! limits are not enforced: [`Unavailable`] says why, in a sentence.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::warn;

pub use crate::config::{Limits, MemoryMax};

/// The leaf the daemon itself lives in.
pub const SUPERVISOR: &str = "supervisor";
/// The prefix of every job's cgroup.
pub const JOB_PREFIX: &str = "job-";
/// The controllers enabled for jobs when the tree has them.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// The extended attributes systemd sets on a delegated cgroup (root, user managers).
const DELEGATE_ATTRIBUTES: [&str; 2] = ["trusted.delegate", "user.delegate"];
/// How long a blocking cleanup (setup, remove, drop) waits for killed processes.
const BLOCKING_WAIT: Duration = Duration::from_secs(1);
/// The longest pause between two looks at `cgroup.events`.
const POLL_MAX: Duration = Duration::from_millis(10);
/// Rounds of SIGKILL when `cgroup.kill` is missing, at most.
const KILL_ROUNDS: usize = 100;
/// Other names tried for a job's cgroup when `job-<id>` exists, at most.
const NAME_TRIES: u32 = 100;

/// Why the daemon has no cgroup tree; its `Display` is a sentence for `status` and the log.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// `/proc/self/cgroup` has no `0::` line: no cgroup2 hierarchy was ever mounted.
    #[error("cgroup v1 only: this host has no cgroup2 (unified) hierarchy")]
    V1Only,
    /// No cgroup2 file system is mounted in our mount namespace.
    #[error("no cgroup2 hierarchy is mounted here (no cgroup2 entry in /proc/self/mountinfo)")]
    NotMounted,
    /// Our cgroup is outside every cgroup2 mount we can see.
    #[error("our cgroup {path} is not under any cgroup2 mount visible here")]
    OutsideMount {
        /// Our cgroup, from `/proc/self/cgroup`.
        path: String,
    },
    /// The cgroup2 mount is read-only.
    #[error("{dir}: read-only (ProtectControlGroups=yes?)")]
    ReadOnly {
        /// Our cgroup's directory.
        dir: PathBuf,
    },
    /// Our cgroup is not ours to manage.
    #[error("{dir}: not delegated: {why}")]
    NotDelegated {
        /// Our cgroup's directory.
        dir: PathBuf,
        /// What is missing.
        why: String,
    },
    /// A file needed to find out could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

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

/// Finds the daemon's delegated cgroup tree.
pub fn detect() -> Result<Tree, Unavailable> {
    let proc_cgroup = read_for_detect(Path::new("/proc/self/cgroup"))?;
    let path = unified_path(&proc_cgroup).ok_or(Unavailable::V1Only)?;
    let mountinfo = read_for_detect(Path::new("/proc/self/mountinfo"))?;
    let mounts = cgroup2_mounts(&mountinfo);
    if mounts.is_empty() {
        return Err(Unavailable::NotMounted);
    }
    let (mount, dir) = locate(&mounts, path).ok_or_else(|| Unavailable::OutsideMount {
        path: path.to_owned(),
    })?;
    if mount.read_only {
        return Err(Unavailable::ReadOnly { dir });
    }
    let euid = crate::sys::euid();
    // A daemon started again inside its own `supervisor` leaf (or placed there by
    // systemd's DelegateSubgroup=supervisor) manages the parent.
    let parent = dir
        .parent()
        .filter(|_| dir.file_name().is_some_and(|n| n == SUPERVISOR));
    let dir = match parent {
        Some(parent) if delegation(parent, euid).is_ok() => parent.to_owned(),
        _ => dir,
    };
    if let Err(why) = delegation(&dir, euid) {
        return Err(Unavailable::NotDelegated { dir, why });
    }
    Tree::at(&dir).map_err(|source| Unavailable::Io { path: dir, source })
}

/// Reads a `/proc` file for [`detect`].
fn read_for_detect(path: &Path) -> Result<String, Unavailable> {
    fs::read_to_string(path).map_err(|source| Unavailable::Io {
        path: path.to_owned(),
        source,
    })
}

/// Whether cgroup `dir` is delegated to a process with effective uid `euid`; else why not.
fn delegation(dir: &Path, euid: u32) -> Result<(), String> {
    for name in DELEGATE_ATTRIBUTES {
        if let Ok(Some(value)) = xattr::get(dir, name) {
            if value == b"1" {
                return Ok(());
            }
        }
    }
    if euid == 0 {
        return Err("it has no trusted.delegate or user.delegate attribute set to 1 \
             (Delegate=yes in the unit, systemd 251 or later)"
            .to_owned());
    }
    let owner = |path: &Path| fs::metadata(path).map(|m| m.uid());
    match (owner(dir), owner(&dir.join("cgroup.procs"))) {
        (Ok(d), Ok(p)) if d == euid && p == euid => Ok(()),
        (Ok(d), Ok(p)) => Err(format!(
            "it and its cgroup.procs belong to uid {d} and {p}, not to us (uid {euid}), and it has \
             no user.delegate attribute (Delegate=yes in the unit)"
        )),
        (Err(e), _) | (_, Err(e)) => Err(format!("cannot check its owner: {e}")),
    }
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

/// One job's cgroup. Removed (whatever is left in it killed first) when dropped
/// (or by `remove`, in tests); that blocks for at most a second, so call
/// [`JobGroup::kill`] and [`JobGroup::wait_empty`] first.
#[derive(Debug)]
pub struct JobGroup {
    /// Its directory.
    dir: PathBuf,
    /// Its `cgroup.procs`, open for writing; `None` once removed.
    procs: Option<OwnedFd>,
    /// The `memory_max` written to it, for [`Stats`].
    memory_max: Option<MemoryMax>,
}

/// What a job's cgroup measured. Read before the cgroup is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// CPU time used, user and system, in microseconds (`cpu.stat` `usage_usec`;
    /// there with or without the cpu controller).
    pub cpu_usec: Option<u64>,
    /// The most memory used at once, in bytes (`memory.peak`: kernel 5.19 or later,
    /// with the memory controller).
    pub memory_peak: Option<u64>,
    /// Times the job hit its memory limit with an allocation about to fail
    /// (`memory.events` `oom`).
    pub ooms: u64,
    /// Processes of the job the OOM killer killed (`memory.events` `oom_kill`).
    pub oom_kills: u64,
    /// The `memory_max` that applied.
    pub memory_max: Option<MemoryMax>,
}

impl Stats {
    /// Whether the job ran out of its `memory_max`.
    pub fn over_memory_max(&self) -> bool {
        self.ooms > 0 && self.memory_max.is_some_and(|m| m != MemoryMax::Infinity)
    }

    /// The failure reason when the job ran out of its `memory_max`, like
    /// "exceeded memory_max (512M): 1 process killed by the OOM killer".
    pub fn memory_failure(&self) -> Option<String> {
        let max = self.memory_max.filter(|_| self.over_memory_max())?;
        Some(match self.oom_kills {
            0 => format!("exceeded memory_max ({max}): an allocation failed"),
            1 => format!("exceeded memory_max ({max}): 1 process killed by the OOM killer"),
            n => format!("exceeded memory_max ({max}): {n} processes killed by the OOM killer"),
        })
    }
}

impl JobGroup {
    /// Opens the cgroup at `dir` (created by the caller).
    fn open(dir: PathBuf) -> io::Result<JobGroup> {
        let procs = dir.join("cgroup.procs");
        // std opens every file with O_CLOEXEC.
        let file = OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| in_file(&procs, e))?;
        Ok(JobGroup {
            dir,
            procs: Some(file.into()),
            memory_max: None,
        })
    }

    /// Its directory.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its `cgroup.procs`, open for writing (close-on-exec): a process that writes
    /// `0` to it moves itself into the cgroup.
    pub fn procs_fd(&self) -> BorrowedFd<'_> {
        self.procs.as_ref().expect("the group is not removed yet").as_fd()
    }

    /// Every process in the cgroup, its sub-cgroups' too.
    pub fn members(&self) -> Vec<u32> {
        pids_in(&self.dir)
    }

    /// Whether no process is left in it (`cgroup.events`: `populated 0`).
    pub fn is_empty(&self) -> bool {
        is_empty(&self.dir)
    }

    /// Sends `signal` to every process in it; how many it reached.
    pub fn signal(&self, signal: i32) -> usize {
        self.members()
            .into_iter()
            .filter(|&pid| crate::sys::kill(pid, signal))
            .count()
    }

    /// Kills every process in it: `cgroup.kill`, or on kernels without it (before
    /// 5.14) SIGKILL to every member, repeated until no new one appears. Returns at
    /// once: the processes may take a moment to go ([`JobGroup::wait_empty`]).
    pub fn kill(&self) {
        kill(&self.dir);
    }

    /// Waits until it is empty, at most `timeout` (real time); whether it is.
    pub async fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if self.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// What it measured: CPU time, memory peak, OOM events.
    pub fn stats(&self) -> Stats {
        read_stats(&self.dir, self.memory_max)
    }

    /// Removes the cgroup, killing what is left in it first (waiting at most a
    /// second); a failure is logged. Whether it is gone.
    #[cfg(test)]
    pub fn remove(mut self) -> bool {
        self.release()
    }

    /// The removal that dropping (or `remove`, in tests) does, once.
    fn release(&mut self) -> bool {
        if self.procs.take().is_none() {
            return true;
        }
        match clear(&self.dir) {
            Ok(()) => true,
            Err(e) => {
                warn!("cannot remove the job cgroup {}: {e}", self.dir.display());
                false
            }
        }
    }
}

impl Drop for JobGroup {
    fn drop(&mut self) {
        self.release();
    }
}

/// What cgroup `dir` measured, `memory_max` being the limit written to it.
fn read_stats(dir: &Path, memory_max: Option<MemoryMax>) -> Stats {
    let file = |name: &str| fs::read_to_string(dir.join(name)).ok();
    let events = file("memory.events");
    let event = |key| events.as_deref().and_then(|e| keyed(e, key)).unwrap_or(0);
    Stats {
        cpu_usec: file("cpu.stat").as_deref().and_then(|s| keyed(s, "usage_usec")),
        memory_peak: file("memory.peak").and_then(|p| p.trim().parse().ok()),
        ooms: event("oom"),
        oom_kills: event("oom_kill"),
        memory_max,
    }
}

/// Removes cgroup `dir` and its sub-cgroups; when processes are left, kills them
/// and waits for them at most [`BLOCKING_WAIT`] first. Gone already is fine.
fn clear(dir: &Path) -> io::Result<()> {
    if !is_empty(dir) {
        kill(dir);
        let deadline = Instant::now() + BLOCKING_WAIT;
        while !is_empty(dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    remove_tree(dir)
}

/// Removes cgroup `dir` and its sub-cgroups, deepest first (they must be empty).
fn remove_tree(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result.map_err(|e| in_file(dir, e)),
    }
}

/// Kills every process in cgroup `dir` and below: `cgroup.kill` where it exists,
/// else [`kill_each`].
fn kill(dir: &Path) {
    if write_file(&dir.join("cgroup.kill"), "1").is_err() {
        kill_each(dir);
    }
}

/// SIGKILL to every process in cgroup `dir` and below, in rounds until a round
/// finds no process not signalled yet (a process with SIGKILL pending cannot fork
/// any more). The cgroup is frozen meanwhile where `cgroup.freeze` exists (5.2 and
/// later), so no process forks between a round's listing and its signals.
fn kill_each(dir: &Path) {
    let freeze = dir.join("cgroup.freeze");
    let frozen = write_file(&freeze, "1").is_ok();
    let mut signalled = HashSet::new();
    for _ in 0..KILL_ROUNDS {
        let fresh: Vec<u32> = pids_in(dir)
            .into_iter()
            .filter(|p| !signalled.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            crate::sys::kill(pid, libc::SIGKILL);
            signalled.insert(pid);
        }
    }
    if frozen {
        let _ = write_file(&freeze, "0");
    }
}

/// Whether cgroup `dir` and its sub-cgroups hold no process (`cgroup.events`, else
/// their `cgroup.procs`). A directory that is gone is empty.
fn is_empty(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => keyed(&events, "populated").is_none_or(|p| p == 0),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => true,
        Err(_) => pids_in(dir).is_empty(),
    }
}

/// The processes in cgroup `dir` itself (`cgroup.procs`).
fn own_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|procs| procs.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The processes in cgroup `dir` and its sub-cgroups.
fn pids_in(dir: &Path) -> Vec<u32> {
    let mut pids = own_pids(dir);
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(pids_in(&entry.path()));
            }
        }
    }
    pids
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

/// Our cgroup in the unified hierarchy: the path of `/proc/self/cgroup`'s `0::` line.
fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

use crate::mountinfo::Mount;

/// Every cgroup2 mount in `mountinfo`, in order.
fn cgroup2_mounts(mountinfo: &str) -> Vec<Mount> {
    crate::mountinfo::parse(mountinfo)
        .into_iter()
        .filter(|m| m.fstype == "cgroup2")
        .collect()
}

/// The mount holding cgroup `path` (the one with the longest matching root) and
/// the cgroup's directory in it.
fn locate<'m>(mounts: &'m [Mount], path: &str) -> Option<(&'m Mount, PathBuf)> {
    mounts
        .iter()
        .rev()
        .filter_map(|m| {
            let rest = match m.root.as_str() {
                "/" => path.strip_prefix('/'),
                root => path.strip_prefix(root).and_then(|r| match r {
                    "" => Some(""),
                    r => r.strip_prefix('/'),
                }),
            }?;
            let dir = match rest {
                "" => m.point.clone(),
                rest => m.point.join(rest),
            };
            Some((m, dir))
        })
        // The last of the longest roots in reverse order: the first in the file.
        .max_by_key(|(m, _)| m.root.len())
}

#[cfg(test)]
mod tests;
