//! One job's cgroup: its members, signals, the kill of whatever is left, its
//! figures, and its removal (see the parent module).

use super::{MemoryMax, in_file, keyed, write_file};
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::warn;

/// How long a blocking cleanup (setup, remove, drop) waits for killed processes.
const BLOCKING_WAIT: Duration = Duration::from_secs(1);
/// The longest pause between two looks at `cgroup.events`.
const POLL_MAX: Duration = Duration::from_millis(10);
/// Rounds of SIGKILL when `cgroup.kill` is missing, at most.
const KILL_ROUNDS: usize = 100;

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
    pub(super) memory_max: Option<MemoryMax>,
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
    pub(super) fn open(dir: PathBuf) -> io::Result<JobGroup> {
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
pub(super) fn read_stats(dir: &Path, memory_max: Option<MemoryMax>) -> Stats {
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
pub(super) fn clear(dir: &Path) -> io::Result<()> {
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
pub(super) fn kill_each(dir: &Path) {
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
pub(super) fn own_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|procs| procs.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The processes in cgroup `dir` and its sub-cgroups.
pub(super) fn pids_in(dir: &Path) -> Vec<u32> {
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
