//! The ledger of running jobs: each job is recorded in the state directory while it
//! runs, so a daemon starting after a crash (`kill -9`, an OOM kill) can end what
//! its predecessor left running before it starts any job itself: never two runs of
//! one route for one file at once.
//!
//! Each daemon appends to its own file, `running/DAEMON` (`DAEMON` is its pid and
//! start tick: the jobs of a daemon that still runs, another one sharing the state
//! directory, are left alone): `+ PID LO HI BOOT` when a job starts (its pid, which
//! is also its process group, the clock ticks since boot read before and after its
//! spawn, between which its start time falls, the boot's id) and `- PID` when it and
//! its group have ended. One small append per event to a file kept open, never a
//! file per job (creating and deleting one per job cost more CPU than starting the
//! job); the file is rewritten with only the running jobs when it grows past
//! [`COMPACT_AFTER`] lines (or twice the running jobs). After a failed write (a full
//! disk) the next event rewrites the whole file, so recording resumes by itself.
//!
//! A leftover is ended only if it is provably the recorded job: the process with
//! that pid started within the recorded ticks of the same boot. If the job's leader is
//! gone but processes of its group remain, those started no earlier than the
//! leader are ended. A pid reused by another program is never touched.

use crate::names::escaped;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// When a job's leader started, in clock ticks since boot (`/proc/PID/stat`'s
/// field 22): between these two, read before and after it was spawned.
pub type Ticks = std::ops::RangeInclusive<u64>;

/// Lines in a ledger file beyond which it is rewritten with the running jobs only.
pub const COMPACT_AFTER: usize = 4096;

/// Where a daemon instance records its running jobs.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    boot: Option<String>,
    file: Mutex<Journal>,
}

/// The open ledger file and what it says.
#[derive(Debug)]
struct Journal {
    /// `None` when it could not be made.
    file: Option<std::fs::File>,
    /// Whether the last write failed (logged once; the next event rewrites the file).
    failing: bool,
    /// The running jobs' lines, by pid.
    running: HashMap<u32, String>,
    /// Lines in the file.
    lines: usize,
}

/// One job's entry; dropping it (when the job and its group have ended) ends it.
#[derive(Debug)]
pub struct Entry {
    ledger: Arc<Ledger>,
    pid: u32,
    /// Its start line: a later job that got the same pid replaced it, and then this
    /// entry's end leaves that job's record alone.
    line: String,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Every job has ended (entries hold the ledger): a clean exit leaves nothing.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.ledger
            .append(self.pid, Change::End(std::mem::take(&mut self.line)));
    }
}

/// A change to the ledger: a job's start line, or its end (with its start line).
enum Change {
    Start(String),
    End(String),
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
        let path = state_dir.join("running").join(format!("{me}-{start}"));
        let file = match create(state_dir, &path) {
            Ok(file) => Some(file),
            Err(e) => {
                warn!(
                    "cannot create {}: {e}; running jobs are not recorded",
                    escaped(&path)
                );
                None
            }
        };
        Ledger {
            path,
            boot: boot_id(),
            file: Mutex::new(Journal {
                failing: file.is_none(),
                file,
                running: HashMap::new(),
                lines: 0,
            }),
        }
    }

    /// Records the job whose process (and group) is `pid`, started between the clock
    /// ticks since boot `started` (read before and after its spawn: no need to read
    /// its `/proc/PID/stat`). When the state directory cannot be written (logged
    /// once), the record is kept and written with the next write that succeeds.
    pub fn record(self: &Arc<Self>, pid: u32, started: Ticks) -> Entry {
        let (lo, hi) = (started.start(), started.end());
        let line = format!("+ {pid} {lo} {hi} {}\n", self.boot.as_deref().unwrap_or("-"));
        self.append(pid, Change::Start(line.clone()));
        Entry {
            ledger: self.clone(),
            pid,
            line,
        }
    }

    /// Appends a job's start or end; false when it is not written (or, for an end,
    /// when the job's record is not there any more).
    fn append(&self, pid: u32, change: Change) -> bool {
        let mut journal = self.file.lock().expect("ledger lock");
        let journal = &mut *journal;
        let text = match change {
            Change::Start(line) => {
                let text = line.clone();
                journal.running.insert(pid, line);
                text
            }
            Change::End(line) if journal.running.get(&pid) == Some(&line) => {
                journal.running.remove(&pid);
                format!("- {pid}\n")
            }
            Change::End(_) => return false,
        };
        journal.lines += 1;
        let rewrite = journal.failing
            || journal.file.is_none()
            || journal.lines > COMPACT_AFTER.max(2 * journal.running.len());
        let result = match (&mut journal.file, rewrite) {
            (Some(file), false) => file.write_all(text.as_bytes()),
            _ => compact(&self.path, &journal.running).map(|new| {
                journal.file = Some(new);
                journal.lines = journal.running.len();
            }),
        };
        match result {
            Ok(()) if journal.failing => {
                info!("running jobs are recorded in {} again", escaped(&self.path));
                journal.failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !journal.failing {
                    warn!("cannot record running jobs in {}: {e}", escaped(&self.path));
                }
                journal.failing = true;
                return false;
            }
        }
        true
    }

    /// Ends the jobs a previous daemon of this instance left running: SIGTERM to each
    /// of their processes, then SIGKILL to those still alive after `grace`. Returns how
    /// many jobs had processes left. Blocking: call it off the async threads.
    pub fn end_leftovers(&self, grace: Duration) -> usize {
        let mut groups: Vec<(u32, Ticks)> = Vec::new();
        let mut dead = Vec::new();
        let all = self.path.parent().expect("the ledger has a parent");
        for daemon in std::fs::read_dir(all).into_iter().flatten().flatten() {
            let path = daemon.path();
            let name = daemon.file_name();
            let owner = name.to_str().map(|n| n.trim_end_matches(".new"));
            if path == self.path || owner.is_some_and(daemon_alive) {
                continue;
            }
            groups.extend(self.read_records(&path));
            dead.push(path);
        }
        // Removed once their jobs are ended below: a daemon that dies meanwhile leaves
        // them for the next one.
        let _forget = RemoveOnDrop(dead);
        let left = |groups: &[(u32, Ticks)]| -> Vec<u32> {
            let census = census();
            groups
                .iter()
                .flat_map(|(pgid, started)| members(*pgid, started, &census))
                .collect()
        };
        let census = census();
        groups.retain(|(pgid, started)| !members(*pgid, started, &census).is_empty());
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

    /// The jobs a dead daemon's ledger says were running: its file replayed (or, as
    /// earlier versions kept it, a directory with a file per job).
    fn read_records(&self, path: &Path) -> Vec<(u32, Ticks)> {
        if path.is_dir() {
            let files = std::fs::read_dir(path).into_iter().flatten().flatten();
            return files
                .filter_map(|f| std::fs::read_to_string(f.path()).ok())
                .filter_map(|line| self.parse(&format!("+ {line}")))
                .map(|(_, group)| group)
                .collect();
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut running: HashMap<u32, (u32, Ticks)> = HashMap::new();
        for line in text.lines() {
            match line.strip_prefix("- ").map(str::parse::<u32>) {
                Some(Ok(pid)) => drop(running.remove(&pid)),
                _ => running.extend(self.parse(line)),
            }
        }
        running.into_values().collect()
    }

    /// A start record's pid, and its process group and start ticks (a range, or one
    /// tick as earlier versions wrote); `None` for a malformed one or one from another
    /// boot (nothing of it can be left).
    fn parse(&self, line: &str) -> Option<(u32, (u32, Ticks))> {
        let parts: Vec<&str> = line.strip_prefix("+ ")?.split_whitespace().collect();
        let (pid, lo, hi, boot) = match parts[..] {
            [pid, lo, hi, boot] => (pid, lo, hi, boot),
            [pid, start, boot] => (pid, start, start, boot),
            _ => return None,
        };
        let pid: u32 = pid.parse().ok()?;
        let started = lo.parse().ok()?..=hi.parse().ok()?;
        match &self.boot {
            Some(now) if boot != "-" && now != boot => None,
            _ => Some((pid, (pid, started))),
        }
    }
}

/// The ledgers of dead daemons, removed when dropped (their jobs ended).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
        }
    }
}

/// Writes the running jobs' lines to a new file renamed over `path`; returns it, open
/// for appending.
fn compact(path: &Path, running: &HashMap<u32, String>) -> std::io::Result<std::fs::File> {
    let temp = path.with_extension("new");
    let mut file = open_new(&temp)?;
    let text: String = running.values().map(String::as_str).collect();
    file.write_all(text.as_bytes())?;
    std::fs::rename(&temp, path)?;
    Ok(file)
}

/// A new file, private to this user, open for appending (replacing any old one).
fn open_new(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .and_then(|f| f.set_len(0).map(|()| f))
}

/// Creates the state directory and its parents as any directory (a service's own
/// state directory under them must stay reachable), then `running/` private to this
/// user, then the ledger's file.
fn create(state_dir: &Path, path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::create_dir_all(state_dir)?;
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path.parent().expect("running/"))
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    open_new(path)
}

/// Whether the daemon a ledger (`PID-START`) belongs to still runs. A
/// name that is not of that form is no daemon's.
fn daemon_alive(name: &str) -> bool {
    let Some((pid, start)) = name.split_once('-') else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => stat(pid).is_some_and(|s| s.start == start),
        _ => false,
    }
}

/// Every live process: its pid, group and start tick.
fn census() -> HashMap<u32, Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The live processes of job group `pgid` whose leader started within `started`:
/// the leader if it is still that process, and every process of the group started
/// no earlier (a pid reused since then is in another group, or started later alone).
fn members(pgid: u32, started: &Ticks, census: &HashMap<u32, Stat>) -> Vec<u32> {
    if census
        .get(&pgid)
        .is_some_and(|l| l.pgrp != pgid || !started.contains(&l.start))
    {
        return Vec::new(); // the pid is another process now, and so is any group it leads
    }
    census
        .iter()
        .filter(|(_, s)| s.pgrp == pgid && s.start >= *started.start())
        .map(|(pid, _)| *pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_daemons_ledger_replays_to_the_jobs_it_had_running() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path());
        let boot = ledger.boot.clone().unwrap_or("-".into());
        let other = if boot == "-" { "-" } else { "another-boot" };
        let text = format!(
            "+ 10 100 {boot}\n+ 11 110 {boot}\n- 10\n+ 12 120 {other}\n+ 13 129 131 {boot}\n- 99\ngarbage\n"
        );
        std::fs::write(dir.path().join("running/1-1"), text).unwrap();
        let mut left = ledger.read_records(&dir.path().join("running/1-1"));
        left.sort_by_key(|(pid, _)| *pid);
        let expected = if other == "-" {
            vec![(11, 110..=110), (12, 120..=120), (13, 129..=131)]
        } else {
            vec![(11, 110..=110), (13, 129..=131)]
        };
        assert_eq!(left, expected);
    }

    #[test]
    fn the_ledger_file_stays_small_however_many_jobs_ran() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::new(dir.path()));
        let now = crate::sys::boot_ticks();
        let kept = ledger.record(std::process::id(), now..=now);
        for pid in 1_000_000..1_000_000 + 3 * COMPACT_AFTER as u32 {
            let line = format!("+ {pid} 1 -\n");
            assert!(ledger.append(pid, Change::Start(line.clone())));
            assert!(ledger.append(pid, Change::End(line)));
        }
        let text = std::fs::read_to_string(&ledger.path).unwrap();
        assert!(
            text.lines().count() <= COMPACT_AFTER + 1,
            "{} lines",
            text.lines().count()
        );
        assert_eq!(ledger.read_records(&ledger.path).len(), 1);
        drop(kept);
        let path = ledger.path.clone();
        drop(ledger);
        assert!(!path.exists(), "a clean exit leaves no ledger");
    }

    #[test]
    fn regression_a_pid_reused_by_a_new_job_keeps_the_new_jobs_record() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::new(dir.path()));
        let pid = 3_000_000;
        let old = ledger.record(pid, 10..=11);
        let new = ledger.record(pid, 20..=21);
        // The old job's end (its group gone only now) must not end the new job's record.
        drop(old);
        assert_eq!(ledger.read_records(&ledger.path), vec![(pid, 20..=21)]);
        drop(new);
        assert!(ledger.read_records(&ledger.path).is_empty());
    }

    #[test]
    fn a_process_started_between_two_readings_of_the_clock_has_its_start_tick_between_them() {
        let before = crate::sys::boot_ticks();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let after = crate::sys::boot_ticks();
        let start = stat(child.id()).map(|s| s.start);
        child.kill().unwrap();
        child.wait().unwrap();
        let start = start.expect("the child's stat");
        assert!(
            (before..=after).contains(&start),
            "{before} <= {start} <= {after}"
        );
    }

    #[test]
    fn regression_recording_resumes_by_itself_after_the_disk_was_full() {
        if !crate::sys::test_as_root("to mount a full tmpfs") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mount = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap()
        };
        let target = dir.path().to_str().unwrap();
        assert!(mount(&["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", target]).success());
        let ledger = Arc::new(Ledger::new(dir.path()));
        let filler = dir.path().join("filler");
        let _ = std::fs::write(&filler, vec![0u8; 128 * 1024]); // fills the disk
        let mut pid = 2_000_000;
        while ledger.append(pid, Change::Start(format!("+ {pid} 1 1 -\n"))) {
            pid += 1;
            assert!(pid < 2_100_000, "the disk never filled");
        }
        // A job that starts and ends while the disk is full leaves no record behind.
        let now = crate::sys::boot_ticks();
        drop(ledger.record(pid + 5, now..=now));
        std::fs::remove_file(&filler).unwrap();
        assert!(
            ledger.append(pid + 1, Change::Start(format!("+ {} 1 1 -\n", pid + 1))),
            "recording resumed"
        );
        let running = ledger.read_records(&ledger.path).len();
        drop(ledger);
        assert!(mount(&["umount", "-l", target]).success());
        assert_eq!(
            running,
            (pid + 2 - 2_000_000) as usize,
            "every running job is in the file"
        );
    }
}
