//! Per-file scheduling of a listener's jobs.
//!
//! Rules, for each (route, file) key:
//! - changes coalesce: the job starts at `max(first change + debounce, last change + delay)`,
//!   so a burst within `debounce` gives one run, and `delay` is always waited after the last change;
//! - never two runs of one key at once: changes during a run are kept and give exactly one
//!   more run after it, so the last change is never lost;
//! - every change is covered by a run that starts after it;
//! - a file that did not exist before its window and is gone at its end (an editor's or
//!   `sed -i`'s temporary: created, then deleted or renamed away) runs nothing;
//! - a batch route has one key for all its files: one run for every file changed in
//!   its window (and during its previous run);
//! - at most `max_jobs` runs at once; due runs wait in arrival order.
//!
//! [`Scheduler`] is the pure state machine; [`drive`] runs it against a channel of
//! submissions and a launcher, tracking the started jobs in a `JoinSet`.

use crate::events::{EventKind, EventSet};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What is scheduled: a route (by index in its listener) and a file.
pub type Key = (usize, PathBuf);

/// A route's timing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Window, from a key's first pending change, in which changes coalesce.
    pub debounce: Duration,
    /// Quiet time after the last change before a run starts.
    pub delay: Duration,
}

/// A matched change handed to the scheduler.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The route and file; for a batch route, the route and an empty path (one key
    /// for all its files).
    pub key: Key,
    /// The file that changed.
    pub file: PathBuf,
    /// What happened.
    pub kind: EventKind,
    /// The route's timing.
    pub timing: Timing,
}

/// What the scheduler's channel carries. One FIFO channel for both, so a question
/// is answered only after every submission sent before it has been taken in.
#[derive(Debug)]
pub enum Input {
    /// A matched change.
    Submit(Submission),
    /// Asks for the files with work not yet done (see [`Scheduler::unsettled`]).
    Unsettled(tokio::sync::oneshot::Sender<HashSet<PathBuf>>),
    /// Asks for the runs not started yet.
    Queued(tokio::sync::oneshot::Sender<Vec<Queued>>),
}

/// A run not started yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// The route and file.
    pub key: Key,
    /// `pending` (waiting out debounce or delay, or for the file's current run to end)
    /// or `waiting` (due, waiting for a free slot under `max_jobs`).
    pub state: &'static str,
}

/// A run the scheduler decided to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// The route and file (for a batch route: an empty path).
    pub key: Key,
    /// Every kind of change seen since the key's previous run started.
    pub kinds: EventSet,
    /// The files the run is for, in path order (one, unless the route is a batch).
    pub files: Vec<PathBuf>,
}

#[derive(Debug)]
struct Pending {
    first: Instant,
    last: Instant,
    kinds: EventSet,
    /// Each file's first and last kind of change in the window.
    files: std::collections::BTreeMap<PathBuf, (EventKind, EventKind)>,
    timing: Timing,
}

impl Pending {
    fn due_at(&self) -> Instant {
        (self.first + self.timing.debounce).max(self.last + self.timing.delay)
    }

    /// The files to run for: not those created and gone again within the window.
    fn into_files(self) -> Vec<PathBuf> {
        let transient = |(first, last): &(EventKind, EventKind)| {
            *first == EventKind::Create && *last == EventKind::Delete
        };
        self.files
            .into_iter()
            .filter(|(_, kinds)| !transient(kinds))
            .map(|(f, _)| f)
            .collect()
    }
}

#[derive(Debug, Default)]
struct Entry {
    running: bool,
    pending: Option<Pending>,
}

/// The pure scheduling state of one listener.
#[derive(Debug, Default)]
pub struct Scheduler {
    entries: HashMap<Key, Entry>,
    /// Wake-up times; an entry may be stale (earlier than the key's real due time, or
    /// for a key that is running) and is re-checked when it comes up.
    timers: BinaryHeap<Reverse<(Instant, Key)>>,
}

impl Scheduler {
    /// Records a change at `now`.
    pub fn submit(&mut self, sub: Submission, now: Instant) {
        let entry = self.entries.entry(sub.key.clone()).or_default();
        match &mut entry.pending {
            Some(p) => {
                p.last = now;
                p.kinds.insert(sub.kind);
                p.files.entry(sub.file).or_insert((sub.kind, sub.kind)).1 = sub.kind;
                p.timing = sub.timing;
            }
            None => {
                let mut kinds = EventSet::EMPTY;
                kinds.insert(sub.kind);
                let p = Pending {
                    first: now,
                    last: now,
                    kinds,
                    files: [(sub.file, (sub.kind, sub.kind))].into(),
                    timing: sub.timing,
                };
                if !entry.running {
                    self.timers.push(Reverse((p.due_at(), sub.key)));
                }
                entry.pending = Some(p);
            }
        }
    }

    /// The earliest time something may become due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes every run due at `now`, marking its key running.
    pub fn take_due(&mut self, now: Instant) -> Vec<Start> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, key)) = self.timers.pop().expect("peeked");
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.running {
                continue; // finished() re-arms it
            }
            let Some(p) = &entry.pending else { continue };
            let real = p.due_at();
            if real > now {
                self.timers.push(Reverse((real, key)));
                continue;
            }
            let p = entry.pending.take().expect("checked");
            let kinds = p.kinds;
            let files = p.into_files();
            if files.is_empty() {
                self.entries.remove(&key);
                continue;
            }
            entry.running = true;
            due.push(Start { key, kinds, files });
        }
        due
    }

    /// Records that the run of `key` ended; changes seen meanwhile are scheduled.
    pub fn finished(&mut self, key: &Key) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.running = false;
        match &entry.pending {
            Some(p) => self.timers.push(Reverse((p.due_at(), key.clone()))),
            None => {
                self.entries.remove(key);
            }
        }
    }

    /// The files with changes whose runs have not finished: pending, waiting for a
    /// slot, or running. Their changes are not processed yet.
    pub fn unsettled(&self) -> HashSet<PathBuf> {
        self.entries.keys().map(|(_, path)| path.clone()).collect()
    }

    /// How many keys have changes waiting (not yet started).
    pub fn queued(&self) -> usize {
        self.entries.values().filter(|e| e.pending.is_some()).count()
    }

    /// The keys with changes waiting for their due time.
    pub fn pending(&self) -> impl Iterator<Item = &Key> {
        self.entries
            .iter()
            .filter(|(_, e)| e.pending.is_some())
            .map(|(k, _)| k)
    }
}

/// Runs the scheduler until `inputs` closes and every started job has ended.
///
/// `launch` turns a [`Start`] into the job's future; each runs as a task of a
/// `JoinSet` owned here, so none outlives this function. At most `max_jobs` run at
/// once; due runs beyond that wait in arrival order. Runs not started when the
/// channel closes are dropped (the listener is stopping). `queued` is kept at the
/// number of files whose changes wait for a run.
pub async fn drive<F, Fut>(
    mut inputs: mpsc::UnboundedReceiver<Input>,
    max_jobs: usize,
    queued: &std::sync::atomic::AtomicU64,
    mut launch: F,
) where
    F: FnMut(Start) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let max_jobs = max_jobs.max(1);
    let mut sched = Scheduler::default();
    let mut ready: VecDeque<Start> = VecDeque::new();
    let mut jobs = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, Key> = HashMap::new();
    let mut open = true;
    while open || !jobs.is_empty() {
        while open && jobs.len() < max_jobs {
            let Some(start) = ready.pop_front() else { break };
            let key = start.key.clone();
            let handle = jobs.spawn(launch(start));
            running.insert(handle.id(), key);
        }
        let wakeup = sched.next_wakeup().filter(|_| open);
        tokio::select! {
            input = inputs.recv(), if open => match input {
                Some(Input::Submit(sub)) => sched.submit(sub, Instant::now()),
                Some(Input::Unsettled(reply)) => {
                    let _ = reply.send(sched.unsettled());
                }
                Some(Input::Queued(reply)) => {
                    let pending = sched.pending().map(|key| Queued { key: key.clone(), state: "pending" });
                    let waiting = ready.iter().map(|s| Queued { key: s.key.clone(), state: "waiting" });
                    let _ = reply.send(pending.chain(waiting).collect());
                }
                None => open = false,
            },
            Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(e) => e.id(),
                };
                if let Some(key) = running.remove(&id) {
                    sched.finished(&key);
                }
            }
            _ = tokio::time::sleep_until(wakeup.unwrap_or_else(Instant::now)), if wakeup.is_some() => {
                ready.extend(sched.take_due(Instant::now()));
            }
        }
        queued.store(
            (sched.queued() + ready.len()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests;
