//! The ledger of running jobs: each job is recorded in the state directory while it
//! runs (`running/DAEMON/PID`: its pid, which is also its process group, its start
//! time in clock ticks since boot, and the boot's id), so a daemon starting after a
//! crash (`kill -9`, an OOM kill) can end what its predecessor left running before
//! it starts any job itself: never two runs of one route for one file at once.
//! `DAEMON` is the recording daemon's pid and start tick: the jobs of a daemon that
//! is still running (another one sharing the state directory) are left alone.
//!
//! A leftover is ended only if it is provably the recorded job: the process with
//! that pid started at the recorded tick of the same boot. If the job's leader is
//! gone but processes of its group remain, those started no earlier than the
//! leader are ended. A pid reused by another program is never touched.

use crate::names::escaped;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Where a daemon instance records its running jobs.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    boot: Option<String>,
    /// Set after the first failed write, so a full disk logs once, not per job.
    warned: AtomicBool,
}

/// One job's entry; dropping it (when the job and its group have ended) removes it.
#[derive(Debug)]
pub struct Entry {
    path: PathBuf,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Empty once every job has ended: a clean exit leaves nothing behind.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `/proc/PID/stat` says about a process: its group and start tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pgrp: u32,
    start: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: fields follow the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state (3), ppid (4), pgrp (5), ... starttime (22).
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some(Stat {
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned())
}

impl Ledger {
    /// This daemon's ledger under `state_dir` (created if missing, private to this user).
    pub fn new(state_dir: &Path) -> Self {
        let me = std::process::id();
        let start = stat(me).map_or(0, |s| s.start);
        let dir = state_dir.join("running").join(format!("{me}-{start}"));
        if let Err(e) = create(state_dir, &dir) {
            warn!(
                "cannot create {}: {e}; running jobs are not recorded",
                escaped(&dir)
            );
        }
        Ledger {
            dir,
            boot: boot_id(),
            warned: AtomicBool::new(false),
        }
    }

    /// Records the job whose process (and group) is `pid`; `None` (logged once) when
    /// the state directory cannot be written.
    pub fn record(&self, pid: u32) -> Option<Entry> {
        let start = stat(pid)?.start;
        let path = self.dir.join(pid.to_string());
        let line = format!("{pid} {start} {}\n", self.boot.as_deref().unwrap_or("-"));
        match std::fs::write(&path, line) {
            Ok(()) => Some(Entry { path }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                if !self.warned.swap(true, Ordering::Relaxed) {
                    warn!("cannot record a running job in {}: {e}", escaped(&self.dir));
                }
                None
            }
        }
    }

    /// Ends the jobs a previous daemon of this instance left running: SIGTERM to each
    /// of their processes, then SIGKILL to those still alive after `grace`. Returns how
    /// many jobs had processes left. Blocking: call it off the async threads.
    pub fn end_leftovers(&self, grace: Duration) -> usize {
        let mut groups: Vec<(u32, u64)> = Vec::new();
        let all = self.dir.parent().expect("the ledger has a parent");
        for daemon in std::fs::read_dir(all).into_iter().flatten().flatten() {
            let dir = daemon.path();
            if dir == self.dir || daemon_alive(&daemon.file_name()) {
                continue;
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if let Some(group) = std::fs::read_to_string(entry.path())
                    .ok()
                    .and_then(|line| self.parse(&line))
                {
                    groups.push(group);
                }
            }
            // Its records are read: gone with it, whatever follows.
            let _ = std::fs::remove_dir_all(&dir);
        }
        let left = |groups: &[(u32, u64)]| -> Vec<u32> {
            let census = census();
            groups
                .iter()
                .flat_map(|&(pgid, start)| members(pgid, start, &census))
                .collect()
        };
        let census = census();
        groups.retain(|&(pgid, start)| !members(pgid, start, &census).is_empty());
        if groups.is_empty() {
            return 0;
        }
        let pids = left(&groups);
        warn!(
            jobs = groups.len(),
            "ending jobs left running by a previous daemon: processes {pids:?}"
        );
        for pid in pids {
            crate::sys::kill(pid, libc::SIGTERM);
        }
        let end = Instant::now() + grace;
        while Instant::now() < end && !left(&groups).is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let stubborn = left(&groups);
        if !stubborn.is_empty() {
            warn!("jobs left by a previous daemon outlived the grace: SIGKILL to {stubborn:?}");
            for pid in stubborn {
                crate::sys::kill(pid, libc::SIGKILL);
            }
        }
        info!(jobs = groups.len(), "jobs left by a previous daemon ended");
        groups.len()
    }

    /// A record's process group and start tick; `None` for a malformed one or one
    /// from another boot (nothing of it can be left).
    fn parse(&self, line: &str) -> Option<(u32, u64)> {
        let mut parts = line.split_whitespace();
        let pid: u32 = parts.next()?.parse().ok()?;
        let start: u64 = parts.next()?.parse().ok()?;
        let boot = parts.next()?;
        match &self.boot {
            Some(now) if boot != "-" && now != boot => None,
            _ => Some((pid, start)),
        }
    }
}

/// Creates the state directory and its parents as any directory (a service's own
/// state directory under them must stay reachable), then the ledger's folders,
/// private to this user.
fn create(state_dir: &Path, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::create_dir_all(state_dir)?;
    for private in [dir.parent().expect("running/"), dir] {
        match std::fs::DirBuilder::new().mode(0o700).create(private) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Whether the daemon a ledger directory (`PID-START`) belongs to still runs. A
/// name that is not of that form is no daemon's.
fn daemon_alive(name: &std::ffi::OsStr) -> bool {
    let Some((pid, start)) = name.to_str().and_then(|n| n.split_once('-')) else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => stat(pid).is_some_and(|s| s.start == start),
        _ => false,
    }
}

/// Every live process: its pid, group and start tick.
fn census() -> std::collections::HashMap<u32, Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The live processes of job group `pgid` whose leader started at tick `start`: the
/// leader if it is still that process, and every process of the group started no
/// earlier (a pid reused since then is in another group, or started later alone).
fn members(pgid: u32, start: u64, census: &std::collections::HashMap<u32, Stat>) -> Vec<u32> {
    if census
        .get(&pgid)
        .is_some_and(|l| l.pgrp != pgid || l.start != start)
    {
        return Vec::new(); // the pid is another process now, and so is any group it leads
    }
    census
        .iter()
        .filter(|(_, s)| s.pgrp == pgid && s.start >= start)
        .map(|(pid, _)| *pid)
        .collect()
}
