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
    /// The route's stage and failure policy.
    pub order: Order,
}

/// Where a route stands among a listener's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Order {
    /// Runs for a file wait for every earlier-stage run for that file.
    pub stage: u32,
    /// When a run fails, the later stages do not run for its files (this occurrence).
    pub cancel_on_failure: bool,
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

/// The files an entry has work for: its run's and its pending ones.
fn files_of(e: &Entry) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = e.run.as_ref().map(|(f, _)| f.clone()).unwrap_or_default();
    if let Some(p) = &e.pending {
        files.extend(p.files.keys().cloned());
    }
    files
}

#[derive(Debug, Default)]
struct Entry {
    running: bool,
    pending: Option<Pending>,
    order: Order,
    /// While running: the files of the run, and when it started.
    run: Option<(Vec<PathBuf>, Instant)>,
}

/// The pure scheduling state of one listener.
#[derive(Debug, Default)]
pub struct Scheduler {
    entries: HashMap<Key, Entry>,
    /// Wake-up times; an entry may be stale (earlier than the key's real due time, or
    /// for a key that is running) and is re-checked when it comes up.
    timers: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Due keys held back by an earlier stage; re-checked whenever a run finishes.
    held: Vec<Key>,
    /// Whether any route has a stage other than 0 (else nothing is ever held back).
    staged: bool,
}

/// Later-stage work dropped after a failure, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Cancelled {
    /// The route (index) whose pending run was dropped.
    pub route: usize,
    /// Its stage.
    pub stage: u32,
    /// The files it would have run for.
    pub files: Vec<PathBuf>,
}

impl Scheduler {
    /// Records a change at `now`.
    pub fn submit(&mut self, sub: Submission, now: Instant) {
        self.staged |= sub.order.stage != 0;
        let entry = self.entries.entry(sub.key.clone()).or_default();
        entry.order = sub.order;
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
            let stage = entry.order.stage;
            if self.staged && self.earlier_stage_busy(stage, &key) {
                self.held.push(key);
                continue;
            }
            let entry = self.entries.get_mut(&key).expect("looked up above");
            let p = entry.pending.take().expect("checked");
            let kinds = p.kinds;
            let files = p.into_files();
            if files.is_empty() {
                self.entries.remove(&key);
                self.release_held(now); // it may have been holding a later stage back
                continue;
            }
            entry.running = true;
            entry.run = Some((files.clone(), now));
            due.push(Start { key, kinds, files });
        }
        due
    }

    /// Whether an earlier stage has work pending or running for any file of `key`.
    fn earlier_stage_busy(&self, stage: u32, key: &Key) -> bool {
        let mine = self.entries.get(key).map(files_of).unwrap_or_default();
        self.entries.values().any(|e| {
            e.order.stage < stage
                && (e.running || e.pending.is_some())
                && files_of(e).iter().any(|f| mine.contains(f))
        })
    }

    /// Records that the run of `key` ended; changes seen meanwhile are scheduled.
    /// Records that the run of `key` ended, `ok` or not. A failed run of a route with
    /// `cancel_on_failure` drops the later-stage pending runs of its files that were part
    /// of the same occurrence (no change since the failed run started); they are returned.
    pub fn finished_with(&mut self, key: &Key, ok: bool) -> Vec<Cancelled> {
        let Some(entry) = self.entries.get_mut(key) else {
            return Vec::new();
        };
        entry.running = false;
        let (order, run) = (entry.order, entry.run.take());
        match &entry.pending {
            Some(p) => self.timers.push(Reverse((p.due_at(), key.clone()))),
            None => {
                self.entries.remove(key);
            }
        }
        let mut cancelled = Vec::new();
        if let (false, true, Some((files, started))) = (ok, order.cancel_on_failure, run) {
            cancelled = self.cancel_later(order.stage, &files, started);
        }
        self.release_held(Instant::now());
        cancelled
    }

    /// Runs held back by an earlier stage are checked again (from `now`).
    fn release_held(&mut self, now: Instant) {
        for held in std::mem::take(&mut self.held) {
            self.timers.push(Reverse((now, held)));
        }
    }

    fn cancel_later(&mut self, stage: u32, files: &[PathBuf], started: Instant) -> Vec<Cancelled> {
        let mut cancelled = Vec::new();
        let keys: Vec<Key> = self.entries.keys().cloned().collect();
        for key in keys {
            let entry = self.entries.get_mut(&key).expect("listed");
            let Some(p) = &mut entry.pending else { continue };
            if entry.order.stage <= stage || p.last > started {
                continue; // not later, or changed again since: a new occurrence
            }
            let dropped: Vec<PathBuf> = files
                .iter()
                .filter(|f| p.files.remove(*f).is_some())
                .cloned()
                .collect();
            if dropped.is_empty() {
                continue;
            }
            cancelled.push(Cancelled {
                route: key.0,
                stage: entry.order.stage,
                files: dropped,
            });
            if p.files.is_empty() {
                entry.pending = None;
                if !entry.running {
                    self.entries.remove(&key);
                }
            }
        }
        cancelled
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
/// `launch` turns a [`Start`] into the job's future, which yields whether the job
/// succeeded; each runs as a task of a
/// `JoinSet` owned here, so none outlives this function. At most `max_jobs` run at
/// once; due runs beyond that wait in arrival order. Runs not started when the
/// channel closes are dropped (the listener is stopping).
pub async fn drive<F, Fut>(mut inputs: mpsc::UnboundedReceiver<Input>, max_jobs: usize, mut launch: F)
where
    F: FnMut(Start) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
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
                let (id, ok) = match &done {
                    Ok((id, ok)) => (*id, *ok),
                    Err(e) => (e.id(), false),
                };
                if let Some(key) = running.remove(&id) {
                    for c in sched.finished_with(&key, ok) {
                        tracing::warn!(
                            failed_route = key.0,
                            skipped_route = c.route,
                            stage = c.stage,
                            files = c.files.len(),
                            "a run failed with on_failure = cancel: later stage skipped for its files"
                        );
                    }
                }
            }
            _ = tokio::time::sleep_until(wakeup.unwrap_or_else(Instant::now)), if wakeup.is_some() => {
                ready.extend(sched.take_due(Instant::now()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
