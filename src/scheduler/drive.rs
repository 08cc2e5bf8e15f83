//! The scheduler's driver: feeds it submissions and timer ticks, starts the runs it
//! decides (and the post commands of ended frames) under `max_jobs`, reports each
//! job's end back to it, and logs what its holds do.

use super::{FrameEnd, FrameStatus, HoldNotice, Input, Key, Queued, Scheduler, Start};
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the driver asks its launcher to start.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// A route's run.
    Run(Start),
    /// The listener's post commands for ended frames.
    Post(FrameEnd),
}

/// Runs `sched` until `inputs` closes and every started job has ended.
///
/// `launch` turns [`Work`] into the job's future, which yields whether the job
/// succeeded; the futures are polled here, within this task (a job that panics
/// counts as failed), so none outlives this function, and a job's start, output and
/// end wake this one task: no task spawned per job, no wakeup of another worker
/// thread to run it. At most `max_jobs` run at once; due work beyond that waits in arrival
/// order. When `sched` tracks frames, each ended frame is handed to `launch` as
/// [`Work::Post`]. Once `stopping` fires (the listener is stopping, and its jobs
/// are being ended), no run starts, and runs that end count as `cancelled`; when
/// the channel then closes, runs not started are dropped, and their frames, with
/// those of runs that failed meanwhile, end `cancelled`; their posts still run.
pub async fn drive<F, Fut>(
    mut inputs: mpsc::Receiver<Input>,
    mut sched: Scheduler,
    max_jobs: usize,
    stopping: &CancellationToken,
    mut launch: F,
) where
    F: FnMut(Work) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let max_jobs = max_jobs.max(1);
    let mut ready: VecDeque<Work> = VecDeque::new();
    // Each running job, yielding its key (posts have none) and whether it succeeded.
    let mut jobs = FuturesUnordered::new();
    let mut open = true;
    // Says idle at the end, even if this panics: a listener left "busy" would hold
    // LiveReload's reloads.
    let mut activity = Reported {
        activity: sched.activity.clone(),
        busy: false,
    };
    while open || !jobs.is_empty() || !ready.is_empty() {
        // Stopping: a slot freed by a job the stop ended is no start for the next run.
        let runs_start = !stopping.is_cancelled();
        // Runs are taken from the scheduler only for free slots: one that waits for a
        // slot stays pending there and keeps taking changes in (one run for them all).
        let free = free_slots(runs_start && open, max_jobs, jobs.len() + ready.len());
        // Runs already due start now: a timer would round up to the next millisecond,
        // which is most of a zero-delay route's latency.
        let now = Instant::now();
        if free > 0 && sched.next_wakeup().is_some_and(|at| at <= now) {
            ready.extend(sched.take_due(now, free).into_iter().map(Work::Run));
        }
        while jobs.len() < max_jobs {
            let next = match runs_start {
                true => (!ready.is_empty()).then_some(0),
                false => ready.iter().position(|w| matches!(w, Work::Post(_))),
            };
            let Some(work) = next.and_then(|i| ready.remove(i)) else {
                break;
            };
            let key = match &work {
                Work::Run(start) => Some(start.key.clone()),
                Work::Post(_) => None,
            };
            let job = AssertUnwindSafe(launch(work)).catch_unwind();
            jobs.push(job.map(move |ok| (key, ok.unwrap_or(false))));
        }
        let free = free_slots(runs_start && open, max_jobs, jobs.len() + ready.len());
        let wakeup = sched.next_wakeup().filter(|_| free > 0);
        tokio::select! {
            input = inputs.recv(), if open => {
                open = take_together(input, &mut inputs, &mut sched, &mut ready);
            }
            Some((key, ok)) = jobs.next(), if !jobs.is_empty() => {
                if let Some(key) = key {
                    let outcome = match (ok, open && !stopping.is_cancelled()) {
                        (true, _) => FrameStatus::Ok,
                        (false, true) => FrameStatus::Failed,
                        (false, false) => FrameStatus::Cancelled,
                    };
                    finished(&mut sched, &key, outcome);
                }
            }
            _ = tokio::time::sleep_until(wakeup.unwrap_or_else(Instant::now)), if wakeup.is_some() => {
                ready.extend(sched.take_due(Instant::now(), free).into_iter().map(Work::Run));
            }
        }
        ready.extend(sched.take_frame_ends().into_iter().map(Work::Post));
        sched.take_hold_notices().into_iter().for_each(log_hold);
        activity.report(!sched.is_idle() || !jobs.is_empty() || !ready.is_empty());
    }
}

/// The slots runs may be taken from the scheduler for: none while runs may not start
/// (stopping, or the inputs closed), else `max_jobs` less the work started or ready.
fn free_slots(runs_may_start: bool, max_jobs: usize, taken: usize) -> usize {
    match runs_may_start {
        true => max_jobs.saturating_sub(taken),
        false => 0,
    }
}

/// Takes `first` and what else has arrived with it (up to [`super::QUEUE`]; the
/// rest at the next turn): a file's create and modify released at its close make
/// one run, even with no delay. False once the inputs have closed (the scheduler
/// then stopped).
fn take_together(
    first: Option<Input>,
    inputs: &mut mpsc::Receiver<Input>,
    sched: &mut Scheduler,
    ready: &mut VecDeque<Work>,
) -> bool {
    let mut next = first;
    let mut taken = 0;
    loop {
        let Some(input) = next else {
            stop(sched, ready);
            return false;
        };
        take(input, sched, ready);
        taken += 1;
        if taken == super::QUEUE {
            return true; // the rest is taken at the next turn
        }
        next = match inputs.try_recv() {
            Ok(input) => Some(input),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
    }
}

/// The driver's busy reports: sent on each change, and idle when dropped.
struct Reported {
    activity: Option<super::Activity>,
    busy: bool,
}

impl Reported {
    fn report(&mut self, busy: bool) {
        if let Some(activity) = self.activity.as_ref().filter(|_| busy != self.busy) {
            (activity.0)(busy);
        }
        self.busy = busy;
    }
}

impl Drop for Reported {
    fn drop(&mut self) {
        self.report(false);
    }
}

/// Says in the log what a hold did.
fn log_hold(notice: HoldNotice) {
    let list = |paths: &[std::path::PathBuf]| {
        let names: Vec<String> = paths
            .iter()
            .map(|p| crate::names::escaped(p).to_string())
            .collect();
        names.join(", ")
    };
    match notice {
        HoldNotice::Started { label, present } => tracing::info!(
            paths = %list(&present),
            "runs held: an operation is at work on {label}"
        ),
        HoldNotice::Ended { label, held, runs } => tracing::info!(
            held_ms = held.as_millis() as u64,
            runs,
            "runs released: the operation on {label} is over"
        ),
        HoldNotice::Expired {
            label,
            held,
            runs,
            stale,
        } => tracing::warn!(
            held_ms = held.as_millis() as u64,
            runs,
            paths = %list(&stale),
            "held runs go ahead after max_vcs_hold_ms, though the operation on {label} is not \
             over; its paths still there are ignored until they are gone"
        ),
    }
}

/// Takes one input in: a submission, or a question answered at once.
fn take(input: Input, sched: &mut Scheduler, ready: &VecDeque<Work>) {
    match input {
        Input::Submit(sub) => sched.submit(sub, Instant::now()),
        Input::Batch(subs) => {
            let now = Instant::now();
            subs.into_iter().for_each(|sub| sched.submit(sub, now));
        }
        Input::Unsettled(reply) => {
            let _ = reply.send(sched.unsettled());
        }
        Input::Queued(reply) => {
            let _ = reply.send(queued(sched, ready));
        }
    }
}

/// Records a run's end, logging the later stages a failure skipped.
fn finished(sched: &mut Scheduler, key: &Key, outcome: FrameStatus) {
    for c in sched.finished_with(key, outcome) {
        tracing::warn!(
            failed_route = key.0,
            skipped_route = c.route,
            stage = c.stage,
            files = c.files.len(),
            "a run failed with on_failure = cancel: later stage skipped for its files"
        );
    }
}

/// The listener is stopping: due runs not started are dropped (posts are kept).
fn stop(sched: &mut Scheduler, ready: &mut VecDeque<Work>) {
    let mut posts = VecDeque::new();
    for work in ready.drain(..) {
        match work {
            Work::Run(start) => finished(sched, &start.key, FrameStatus::Cancelled),
            post => posts.push_back(post),
        }
    }
    *ready = posts;
    sched.stop();
}

/// The runs not started yet: pending ones (due ones waiting for a slot among them),
/// then those taken for a slot and about to start.
fn queued(sched: &Scheduler, ready: &VecDeque<Work>) -> Vec<Queued> {
    let now = Instant::now();
    let pending = sched.pending().map(|key| Queued {
        key: key.clone(),
        state: if sched.is_held(key) {
            "held"
        } else if sched.is_waiting(key, now) {
            "waiting"
        } else {
            "pending"
        },
    });
    let waiting = ready.iter().filter_map(|w| match w {
        Work::Run(s) => Some(Queued {
            key: s.key.clone(),
            state: "waiting",
        }),
        Work::Post(_) => None,
    });
    pending.chain(waiting).collect()
}
