//! Descendants that escape their job: a job is its process group, and a process
//! that calls `setsid` (a daemonizing double fork) leaves it. The daemon is a child
//! subreaper, so such a process, once its parent is gone, becomes the daemon's
//! child: it is reaped when it exits (no zombie is left), and at shutdown every one
//! still running is terminated (SIGTERM to it and its group, SIGKILL after the
//! grace). Under systemd the unit's cgroup ends them too.
//!
//! Jobs' main processes are the daemon's children as well and are waited for
//! through their pidfds: they are registered at spawn ([`spawn`]) and never touched here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Jobs' main processes (waited for by their jobs), and the threads spawning one:
/// a thread's children are not taken for adoptees while it spawns (between its
/// clone and its registration), so a job that was just started is never mistaken
/// for one, however long its start takes (a working directory on a hung mount).
/// The lock is held only briefly: spawns do not wait for each other, or job ends
/// for spawns.
static JOBS: Mutex<Jobs> = Mutex::new(Jobs {
    pids: None,
    spawning: Vec::new(),
});

/// A thread spawning a job now, and the start it makes (see [`Attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spawning {
    tid: u32,
    id: u64,
    /// Its job gave up on it: the child it waits for is to be killed, even one it
    /// makes only after the job gave up (each reap looks again).
    given_up: bool,
}

struct Jobs {
    /// Registered pids, each with how many registrations hold it (a pid reused by a
    /// new job before the old job dropped its registration is held twice).
    pids: Option<HashMap<u32, usize>>,
    /// The threads spawning a job now.
    spawning: Vec<Spawning>,
}

/// How often exited adoptees are reaped.
pub const REAP_EVERY: Duration = Duration::from_secs(1);

/// A start made on a thread of its own that its job may give up on (its working
/// directory on a mount that does not answer): giving up keeps it from beginning,
/// or kills the process it is waiting for.
#[derive(Debug, Default)]
pub struct Attempt {
    id: std::sync::OnceLock<u64>,
    given_up: std::sync::atomic::AtomicBool,
    thread: std::sync::atomic::AtomicU32,
}

impl Attempt {
    /// Gives up on it: it does not begin if it has not; if it waits for its child,
    /// that child gets SIGKILL, now or, if its thread has not made it yet, at the
    /// next reap ([`REAP_EVERY`]). What its thread started before, registered, is
    /// left alone.
    pub fn give_up(&self) {
        let mut jobs = jobs();
        self.given_up.store(true, std::sync::atomic::Ordering::SeqCst);
        let (Some(&id), tid) = (
            self.id.get(),
            self.thread.load(std::sync::atomic::Ordering::SeqCst),
        ) else {
            return;
        };
        if let Some(spawning) = jobs.spawning.iter_mut().find(|s| (s.tid, s.id) == (tid, id)) {
            spawning.given_up = true;
            kill_given_up(&jobs);
        }
    }
}

/// SIGKILL to the children of the threads whose spawns were given up: what each
/// waits for (registered processes, the ones its thread started before, are left
/// alone). None has been reaped meanwhile: reaping takes the jobs lock, held here,
/// so each pid is its own.
fn kill_given_up(jobs: &Jobs) {
    for spawning in jobs.spawning.iter().filter(|s| s.given_up) {
        let task = format!("/proc/self/task/{}", spawning.tid);
        for pid in task_children(std::path::Path::new(&task)) {
            if !jobs.registered(pid) {
                crate::sys::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Starts a job's main process with `start`, registered so the reaper leaves it
/// alone. `Ok(None)`, without starting it, when `attempt` was given up.
pub fn spawn<E>(
    attempt: Option<&Attempt>,
    start: impl FnOnce() -> Result<super::child::Started, E>,
) -> Result<Option<super::child::Started>, E> {
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let (tid, id) = (
        crate::sys::tid(),
        IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    );
    {
        let mut jobs = jobs();
        if let Some(attempt) = attempt {
            if attempt.given_up.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(None);
            }
            let _ = attempt.id.set(id);
            attempt.thread.store(tid, std::sync::atomic::Ordering::SeqCst);
        }
        jobs.spawning.push(Spawning {
            tid,
            id,
            given_up: false,
        });
    }
    let started = start();
    let mut jobs = jobs();
    if let Some(i) = jobs.spawning.iter().position(|s| (s.tid, s.id) == (tid, id)) {
        jobs.spawning.swap_remove(i);
    }
    let started = started?;
    *jobs
        .pids
        .get_or_insert_with(HashMap::new)
        .entry(started.child.pid())
        .or_default() += 1;
    Ok(Some(started))
}

/// A job's main process, registered by [`spawn`] until this is dropped (once it has
/// been waited for, or the job is abandoned: then it is reaped as an adoptee).
pub struct Registered(pub u32);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(pids) = jobs().pids.as_mut()
            && let Some(count) = pids.get_mut(&self.0)
        {
            *count -= 1;
            if *count == 0 {
                pids.remove(&self.0);
            }
        }
    }
}

/// Makes the daemon adopt orphaned descendants; `false` (logged) when it cannot.
pub fn adopt() -> bool {
    match crate::sys::become_subreaper() {
        Ok(()) => true,
        Err(e) => {
            warn!("cannot become a child subreaper ({e}): escaped job descendants go to init");
            false
        }
    }
}

/// The daemon's children that are not jobs' main processes: adoptees. The children
/// of a thread spawning a job are left out (its job may not be registered yet).
fn adoptees_of(jobs: &Jobs) -> Vec<u32> {
    let tasks = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten();
    let spawning = |task: &std::fs::DirEntry| {
        let tid = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok());
        tid.is_some_and(|tid| jobs.spawning.iter().any(|s| s.tid == tid))
    };
    tasks
        .filter(|task| !spawning(task))
        .flat_map(|task| task_children(&task.path()))
        .filter(|&pid| !jobs.registered(pid))
        .collect()
}

/// The jobs lock.
fn jobs() -> std::sync::MutexGuard<'static, Jobs> {
    JOBS.lock().expect("jobs lock")
}

impl Jobs {
    /// Whether `pid` is a registered job's main process.
    fn registered(&self, pid: u32) -> bool {
        self.pids.as_ref().is_some_and(|j| j.contains_key(&pid))
    }
}

/// The children of thread `task` (a directory of `/proc/self/task`).
fn task_children(task: &std::path::Path) -> Vec<u32> {
    let text = std::fs::read_to_string(task.join("children")).unwrap_or_default();
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Reaps the adoptees that have exited; returns how many.
pub fn reap() -> usize {
    // Held across the check and the reap: a spawn starting meanwhile waits to count itself.
    let jobs = jobs();
    kill_given_up(&jobs);
    adoptees_of(&jobs)
        .into_iter()
        .filter(|&pid| crate::sys::reap(pid))
        .count()
}

/// At shutdown: terminates every adoptee still running and its group (SIGTERM,
/// then SIGKILL after `grace`), and reaps them. Blocking.
pub fn end_all(grace: Duration) {
    end(|_| true, grace, "terminating processes that escaped their jobs");
}

/// At a listener's stop: terminates, as [`end_all`] does, the adoptees that came from
/// its jobs: those whose environment still names it (`EXECLIB_LISTENER`, which every
/// job gets and a daemonizing process keeps). The others wait for the shutdown.
pub fn end_listener(listener: &str, grace: Duration) {
    let from_listener = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| names_listener(&environ, listener))
    };
    end(
        from_listener,
        grace,
        "terminating processes that escaped this listener's jobs",
    );
}

/// Whether a NUL-separated environment has `EXECLIB_LISTENER=listener`.
fn names_listener(environ: &[u8], listener: &str) -> bool {
    let wanted = [b"EXECLIB_LISTENER=", listener.as_bytes()].concat();
    environ.split(|&b| b == 0).any(|var| var == wanted)
}

/// Terminates the adoptees `select` picks (SIGTERM to each and its group, SIGKILL
/// after `grace`) and reaps them. Killing one can orphan its own children (in
/// sessions of their own, out of reach of its group's signal): they become adoptees
/// in turn, so each round looks again and signals the newcomers, until none is left.
fn end(select: impl Fn(u32) -> bool, grace: Duration, message: &str) {
    let mut signalled = std::collections::HashSet::new();
    let mut term = |pid: u32| signalled.insert(pid).then_some(libc::SIGTERM);
    let left = round(&select, &mut term);
    if left.is_empty() {
        return;
    }
    info!(processes = left.len(), "{message}: {left:?}");
    let end = Instant::now() + grace;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        if round(&select, &mut term).is_empty() {
            return;
        }
    }
    // After the grace: SIGKILL to every one left, and to those their deaths orphan.
    let end = Instant::now() + Duration::from_secs(1);
    let mut left = round(&select, &mut |_| Some(libc::SIGKILL));
    while !left.is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
        left = round(&select, &mut |_| Some(libc::SIGKILL));
    }
    if !left.is_empty() {
        warn!(
            processes = left.len(),
            "{message}: some still running after SIGKILL"
        );
    }
}

/// One round of [`end`]: reaps the adoptees that have exited, then gives each one
/// `select` picks the signal `signal` names for it (to it and its group); returns
/// those picked. Each is held by a pidfd opened under the jobs lock, which every
/// reaper of adoptees takes: it is the process listed, and a signal reaches it or
/// nobody, even if it is reaped and its pid reused meanwhile. The lock is not held
/// while `select` reads a process's `/proc` files (which can wait on a process stuck
/// on a hung mount): spawns and job ends never wait for that.
fn round(select: &impl Fn(u32) -> bool, signal: &mut impl FnMut(u32) -> Option<i32>) -> Vec<u32> {
    let listed: Vec<(u32, crate::sys::Pidfd)> = {
        let jobs = jobs();
        kill_given_up(&jobs);
        for pid in adoptees_of(&jobs) {
            crate::sys::reap(pid);
        }
        let adoptees = adoptees_of(&jobs).into_iter();
        adoptees
            .filter_map(|pid| crate::sys::Pidfd::open(pid).ok().map(|p| (pid, p)))
            .collect()
    };
    let mut picked = Vec::new();
    for (pid, process) in listed.into_iter().filter(|(pid, _)| select(*pid)) {
        picked.push(pid);
        // Delivered: not reaped, so its pid, and its group's id, are still its own
        // (pids go round the whole range before one is used again).
        if let Some(signal) = signal(pid)
            && process.signal(signal)
        {
            crate::sys::kill_group(pid, signal);
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_escapee_is_matched_to_its_listener_by_its_whole_variable() {
        let environ = b"PATH=/bin\0EXECLIB_LISTENER=site\0EXECLIB_ROUTE=build\0";
        assert!(super::names_listener(environ, "site"));
        assert!(!super::names_listener(environ, "sit"));
        assert!(!super::names_listener(environ, "site2"));
        assert!(!super::names_listener(b"XEXECLIB_LISTENER=site\0", "site"));
    }
}
