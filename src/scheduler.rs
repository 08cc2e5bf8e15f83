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
//! - at most `max_jobs` runs at once; due runs wait in arrival order;
//! - the due runs of a route whose tree a version-control operation is at work on
//!   wait until it is over (see [`hold`]).
//!
//! [`Scheduler`] is the pure state machine; [`drive`](fn@drive) runs it against a channel of
//! submissions and a launcher, polling the started jobs within its own task. [`frames`]
//! tracks when the work a change caused is over, for `[[listener.post]]`.

mod drive;
pub mod frames;
pub mod hold;

pub use drive::{Work, drive};
use frames::Frames;
pub use frames::{FrameEnd, FrameStatus};
use hold::Gates;
pub use hold::{HoldNotice, HoldSpec, Holds, Probe};

use crate::events::{EventKind, EventSet};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
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
    /// The file was deleted, a kind the route does not take: this only drops the
    /// file's changes pending for it (it is gone, and the route has nothing to do
    /// for a deleted file); it starts nothing.
    pub gone_only: bool,
}

/// Where a route stands among a listener's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Order {
    /// Runs for a file wait for every earlier-stage run for that file.
    pub stage: u32,
    /// When a run fails, the later stages do not run for its files (this occurrence).
    pub cancel_on_failure: bool,
}

/// Inputs a scheduler's channel holds before its sender waits.
pub const QUEUE: usize = 1024;

/// What the scheduler's channel carries. One FIFO channel for both, so a question
/// is answered only after every submission sent before it has been taken in. The
/// channel is bounded ([`QUEUE`]): a listener whose scheduler lags waits, its events
/// wait in the kernel's inotify queue, and an overflow there is caught up by a rescan,
/// so a storm of events costs bounded memory.
#[derive(Debug)]
pub enum Input {
    /// A matched change.
    Submit(Submission),
    /// Matched changes reported together, in order: taken in together, so a file's
    /// create and modify released at its close make one run however the listener's
    /// threads are timed.
    Batch(Vec<Submission>),
    /// Asks for the files with work not yet done (see [`Scheduler::unsettled`]).
    Unsettled(tokio::sync::oneshot::Sender<Unsettled>),
    /// Asks for the runs not started yet.
    Queued(tokio::sync::oneshot::Sender<Vec<Queued>>),
}

/// The files with work not yet done, each with the kinds of change that work is for.
pub type Unsettled = HashMap<PathBuf, EventSet>;

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
    /// Each file's changes in the window.
    files: std::collections::BTreeMap<PathBuf, Changes>,
    timing: Timing,
}

/// A file's changes in a pending window: its first and last kind, and when the last came.
#[derive(Debug, Clone, Copy)]
struct Changes {
    first: EventKind,
    last: EventKind,
    at: Instant,
}

impl Changes {
    fn new(kind: EventKind, at: Instant) -> Self {
        Changes {
            first: kind,
            last: kind,
            at,
        }
    }

    /// Did not exist before the window (created) and is gone at its end (deleted, or
    /// renamed away): an editor's or `sed -i`'s temporary. Not one renamed to its name
    /// first: a rename may replace a file that was there (`mv new a.txt`), whose
    /// deletion must still run.
    fn transient(&self) -> bool {
        self.first == EventKind::Create && self.last == EventKind::Delete
    }
}

impl Pending {
    fn due_at(&self) -> Instant {
        (self.first + self.timing.debounce).max(self.last + self.timing.delay)
    }

    /// The files to run for, in path order, and apart those created and gone again
    /// within the window (nothing to run for).
    fn into_files(self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let (gone, run): (Vec<_>, Vec<_>) = self.files.into_iter().partition(|(_, c)| c.transient());
        let names = |v: Vec<(PathBuf, _)>| v.into_iter().map(|(f, _)| f).collect();
        (names(run), names(gone))
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
    /// While running: the files of the run (in path order), and when it started.
    run: Option<(Vec<PathBuf>, Instant)>,
    /// While running: the kinds of change the run is for.
    run_kinds: EventSet,
}

/// Whether `run` (an entry's running run) is for `file`.
fn runs_for(run: &Option<(Vec<PathBuf>, Instant)>, file: &Path) -> bool {
    run.as_ref()
        .is_some_and(|(files, _)| files.binary_search_by(|f| f.as_path().cmp(file)).is_ok())
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
    /// Open frames, when the listener has post commands.
    frames: Option<Frames>,
    /// The holds of its routes, when any has one.
    gates: Option<Gates>,
    /// Told whether the listener has work pending or running, on each change.
    activity: Option<Activity>,
}

/// A listener's "busy" report (see [`Scheduler::with_activity`]).
#[derive(Clone)]
pub struct Activity(pub std::sync::Arc<dyn Fn(bool) + Send + Sync>);

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Activity")
    }
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
    /// A scheduler that also tracks frames (see [`frames`]).
    pub fn with_frames() -> Self {
        Scheduler {
            frames: Some(Frames::default()),
            ..Scheduler::default()
        }
    }

    /// The scheduler with `holds` on its routes' due runs (see [`hold`]).
    pub fn with_holds(mut self, holds: Holds) -> Self {
        self.gates = (!holds.gates.is_empty()).then(|| Gates::new(holds));
        self
    }

    /// The scheduler telling `activity` whether it has runs pending (or held) or jobs
    /// running, each time that changes (see [`drive`](fn@drive)).
    pub fn with_activity(mut self, activity: Activity) -> Self {
        self.activity = Some(activity);
        self
    }

    /// Whether no run is pending, held or running.
    pub fn is_idle(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a change at `now`.
    pub fn submit(&mut self, sub: Submission, now: Instant) {
        if sub.gone_only {
            return self.drop_gone(&sub.key, &sub.file, now);
        }
        self.staged |= sub.order.stage != 0;
        if let Some(gates) = &mut self.gates {
            gates.changed(sub.key.0, now);
        }
        let entry = self.entries.entry(sub.key.clone()).or_default();
        entry.order = sub.order;
        if let Some(frames) = &mut self.frames {
            let known = entry
                .pending
                .as_ref()
                .is_some_and(|p| p.files.contains_key(&sub.file));
            if !known && !runs_for(&entry.run, &sub.file) {
                frames.hold(&sub.file);
            }
        }
        match &mut entry.pending {
            Some(p) => {
                p.last = now;
                p.kinds.insert(sub.kind);
                let changes = p.files.entry(sub.file).or_insert(Changes::new(sub.kind, now));
                (changes.last, changes.at) = (sub.kind, now);
                p.timing = sub.timing;
            }
            None => {
                let mut kinds = EventSet::EMPTY;
                kinds.insert(sub.kind);
                let p = Pending {
                    first: now,
                    last: now,
                    kinds,
                    files: [(sub.file, Changes::new(sub.kind, now))].into(),
                    timing: sub.timing,
                };
                if !entry.running {
                    self.timers.push(Reverse((p.due_at(), sub.key)));
                }
                entry.pending = Some(p);
            }
        }
    }

    /// The earliest time something may become due (or a hold looks again).
    pub fn next_wakeup(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let look = self.gates.as_ref().and_then(Gates::next_look);
        timer.into_iter().chain(look).min()
    }

    /// Takes the runs due at `now`, at most `slots` of them (the earliest due first),
    /// marking their keys running. A due run held by its route's hold stays pending
    /// until the hold ends; one beyond `slots` stays pending, still taking changes in,
    /// until a slot is free.
    pub fn take_due(&mut self, now: Instant, slots: usize) -> Vec<Start> {
        let mut due = Vec::new();
        if let Some(gates) = &mut self.gates {
            for key in gates.poll(now) {
                self.timers.push(Reverse((now, key)));
            }
        }
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now || due.len() == slots {
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
            if self.gates.as_mut().is_some_and(|g| g.hold(&key, now)) {
                continue;
            }
            let entry = self.entries.get_mut(&key).expect("looked up above");
            let p = entry.pending.take().expect("checked");
            let kinds = p.kinds;
            let (files, gone) = p.into_files();
            if let Some(frames) = &mut self.frames {
                gone.iter().for_each(|f| frames.release(f));
                files.iter().for_each(|f| frames.ran(f));
            }
            if files.is_empty() {
                self.entries.remove(&key);
                self.release_held(now); // it may have been holding a later stage back
                continue;
            }
            entry.running = true;
            entry.run = Some((files.clone(), now));
            entry.run_kinds = kinds;
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

    /// Records that the run of `key` ended (`Ok`, `Failed`, or `Cancelled` when the
    /// listener is stopping); changes seen meanwhile are scheduled. A failed run of a
    /// route with `cancel_on_failure` drops the later-stage pending runs of its files
    /// that were part of the same occurrence (no change since the failed run started);
    /// they are returned.
    pub fn finished_with(&mut self, key: &Key, outcome: FrameStatus) -> Vec<Cancelled> {
        let Some(entry) = self.entries.get_mut(key) else {
            return Vec::new();
        };
        entry.running = false;
        let (order, run) = (entry.order, entry.run.take());
        if let (Some(frames), Some((files, _))) = (&mut self.frames, &run) {
            for file in files {
                frames.mark(file, outcome);
                if !entry.pending.as_ref().is_some_and(|p| p.files.contains_key(file)) {
                    frames.release(file);
                }
            }
        }
        match &entry.pending {
            Some(p) => self.timers.push(Reverse((p.due_at(), key.clone()))),
            None => {
                self.entries.remove(key);
            }
        }
        let mut cancelled = Vec::new();
        let failed = outcome == FrameStatus::Failed;
        if let (true, true, Some((files, started))) = (failed, order.cancel_on_failure, run) {
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
            if entry.order.stage <= stage {
                continue;
            }
            // Each file's own last change decides (a batch's other files may have
            // changed since): one changed again since the failed run began is a new
            // occurrence and stays.
            let dropped: Vec<PathBuf> = files
                .iter()
                .filter(|f| p.files.get(*f).is_some_and(|c| c.at <= started))
                .cloned()
                .collect();
            for f in &dropped {
                p.files.remove(f);
            }
            if dropped.is_empty() {
                continue;
            }
            if let Some(frames) = &mut self.frames {
                dropped
                    .iter()
                    .filter(|f| !runs_for(&entry.run, f))
                    .for_each(|f| frames.release(f));
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

    /// `file` is gone, and `key`'s route takes no deletes: its pending changes to the
    /// file are dropped (a run would find nothing, and the route does not run for a
    /// deletion). A run under way is left to end.
    fn drop_gone(&mut self, key: &Key, file: &Path, now: Instant) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let Some(p) = &mut entry.pending else { return };
        if p.files.remove(file).is_none() {
            return;
        }
        if let Some(frames) = &mut self.frames
            && !runs_for(&entry.run, file)
        {
            frames.release(file);
        }
        if p.files.is_empty() {
            entry.pending = None;
            if !entry.running {
                self.entries.remove(key);
                self.release_held(now); // it may have been holding a later stage back
            }
        }
    }

    /// The listener is stopping: every run not started is dropped, and its files'
    /// frames are `cancelled`. Running runs are left to finish (see [`Self::finished_with`]).
    pub fn stop(&mut self) {
        for entry in self.entries.values_mut() {
            let Some(p) = entry.pending.take() else { continue };
            let Some(frames) = &mut self.frames else { continue };
            for (file, changes) in &p.files {
                // A temporary (created, then gone) had nothing to do: no cancelled post.
                if !changes.transient() {
                    frames.mark(file, FrameStatus::Cancelled);
                }
                if !runs_for(&entry.run, file) {
                    frames.release(file);
                }
            }
        }
        self.entries.retain(|_, e| e.running);
        self.timers.clear();
        self.held.clear();
        if let Some(gates) = &mut self.gates {
            gates.stop();
        }
    }

    /// What the holds did since the last call (for the log).
    pub fn take_hold_notices(&mut self) -> Vec<HoldNotice> {
        self.gates.as_mut().map(Gates::take_notices).unwrap_or_default()
    }

    /// Whether `key`'s due run is held (see [`hold`]).
    pub fn is_held(&self, key: &Key) -> bool {
        self.gates.as_ref().is_some_and(|g| g.is_held(key))
    }

    /// The frames that ended since the last call (none without frame tracking).
    pub fn take_frame_ends(&mut self) -> Vec<FrameEnd> {
        self.frames.as_mut().map(Frames::take_ended).unwrap_or_default()
    }

    /// The files with changes whose runs have not finished: pending, waiting for a
    /// slot, or running, with the kinds of change each run is for (a batch run's
    /// kinds for each of its files). Their changes are not processed yet.
    pub fn unsettled(&self) -> Unsettled {
        let mut unsettled = Unsettled::new();
        let mut add = |file: &PathBuf, kinds: &[EventKind]| {
            let set = unsettled.entry(file.clone()).or_default();
            kinds.iter().for_each(|k| set.insert(*k));
        };
        for e in self.entries.values() {
            if let Some((files, _)) = &e.run {
                let kinds: Vec<EventKind> = EventKind::ALL
                    .into_iter()
                    .filter(|k| e.run_kinds.contains(*k))
                    .collect();
                files.iter().for_each(|f| add(f, &kinds));
            }
            for (file, changes) in e.pending.iter().flat_map(|p| &p.files) {
                // A temporary had nothing to run (unless its run is under way).
                if !changes.transient() || runs_for(&e.run, file) {
                    add(file, &[changes.first, changes.last]);
                }
            }
        }
        unsettled
    }

    /// The keys with changes waiting for their due time.
    pub fn pending(&self) -> impl Iterator<Item = &Key> {
        self.entries
            .iter()
            .filter(|(_, e)| e.pending.is_some())
            .map(|(k, _)| k)
    }

    /// Whether `key`'s pending run is due by `now` and waits only for a free slot
    /// (not for its own run to end, nor for an earlier stage or a hold).
    pub fn is_waiting(&self, key: &Key, now: Instant) -> bool {
        self.entries.get(key).is_some_and(|e| {
            !e.running && e.pending.as_ref().is_some_and(|p| p.due_at() <= now) && !self.held.contains(key)
        }) && !self.is_held(key)
    }
}

#[cfg(test)]
mod tests;
