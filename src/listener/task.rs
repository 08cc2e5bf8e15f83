//! A running listener: reads its watcher, matches each file event against its
//! routes ([`crate::route`]), feeds the matches to its scheduler, which starts the
//! jobs it decides through a [`Launcher`]. On stop it closes inotify first, then
//! terminates its running jobs.

use super::{JobContext, Shared, State};
use crate::config::ListenerConfig;
use crate::job::launch::Launcher;
use crate::scheduler::{self, Input};
use crate::snapshot::{self, Dirs};
use crate::watch::threaded::{self, Watching};
use crate::watch::{FileEvent, Watcher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

/// About how many submissions go to the scheduler in one message (see `dispatch`).
const BATCH: usize = 256;

/// How often a `catch_up` listener saves its snapshot while running.
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// What a running listener needs besides its watcher.
pub(super) struct Run {
    pub config: Arc<ListenerConfig>,
    pub ctx: JobContext,
    pub shared: Arc<Shared>,
    /// For `catch_up` listeners: where the snapshot is persisted, and what was last
    /// persisted (the baseline that changes not yet processed are kept at).
    pub catch_up: Option<(PathBuf, Dirs)>,
    /// Route indexes, earlier stages first.
    pub stage_order: Vec<usize>,
    /// What holds the routes' due runs (version-control operations); taken by the
    /// scheduler.
    pub holds: Option<scheduler::Holds>,
    /// Its event counters in the daemon's metrics.
    pub events: crate::metrics::EventCounters,
}

impl Run {
    /// Runs the listener until `cancel` fires or its watcher fails: the scheduler and
    /// its jobs on this runtime, the watcher on a thread of its own ([`Watching`]).
    /// `missed` (catch-up changes) are submitted before any live event.
    /// `tx`/`rx` are the scheduler's channel; the slot keeps a weak sender (for
    /// `trigger`), so the channel closes when the watcher's side drops `tx`.
    pub(super) async fn spawn(
        mut self,
        watching: Watching,
        missed: Vec<FileEvent>,
        (tx, rx): (mpsc::Sender<Input>, mpsc::Receiver<Input>),
        cancel: CancellationToken,
    ) {
        self.warn_unenforced_limits();
        let jobs_cancel = CancellationToken::new();
        // Posts still run at a stop (for the frames it cancelled too), until the grace
        // is over; they are killed at once if this task is aborted or unwinds.
        let posts_cancel = CancellationToken::new();
        let _jobs_guard = jobs_cancel.clone().drop_guard();
        let _posts_guard = posts_cancel.clone().drop_guard();
        let scheduler = self.start_scheduler(rx, &jobs_cancel, &posts_cancel);
        let ending = Ending {
            config: self.config.clone(),
            ctx: self.ctx.clone(),
            shared: self.shared.clone(),
        };
        let name = self.config.name.clone();
        let (weak, watch_cancel) = (tx.downgrade(), cancel.clone());
        let watched = watching.run(&name, &cancel, move |watcher| {
            self.watch(watcher, missed, weak, watch_cancel)
        });
        let stuck = |quiet| ending.shared.report_stuck(quiet);
        let watched = tokio::select! {
            watched = watched => watched,
            never = threaded::watch_beats(&ending.shared.beats, stuck) => match never {},
        };
        if let Err(why) = watched {
            // Left behind (or lost): what it would have handed over is taken from the
            // scheduler here, for a listener replacing this one on reload.
            ending
                .shared
                .hand_over(unsettled(&tx.downgrade()).await.unwrap_or_default());
            ending.shared.set(State::Failed, Some(why.into()));
        }
        // The watcher's side holds the channel only while it submits: a watcher left
        // stuck on a file system does not keep the scheduler from ending, and once this
        // is dropped it writes nothing more where the listener's state is kept.
        drop(tx);
        ending.end_jobs(scheduler, jobs_cancel, posts_cancel).await;
    }

    /// The watcher's side, on its own thread: reads `watcher` and submits what it
    /// reports through `tx` until `cancel` fires or it fails, then hands over, saves
    /// and closes it. The channel is upgraded for each use, never held across a read
    /// of the tree.
    async fn watch(
        mut self,
        mut watcher: Watcher,
        missed: Vec<FileEvent>,
        tx: mpsc::WeakSender<Input>,
        cancel: CancellationToken,
    ) {
        self.dispatch(missed, &tx).await;
        let mut save = tokio::time::interval_at(Instant::now() + SAVE_EVERY, SAVE_EVERY);
        let mut overflows = crate::watch::OverflowStats::default();
        let mut beat = tokio::time::interval(threaded::BEAT);
        let result = loop {
            // A stop first; and a read that returns after one (the watcher was stuck and
            // may have been left behind) reports nothing, as the listener may be another
            // one by now.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break Ok(()),
                _ = beat.tick() => {
                    self.shared.beats.fetch_add(1, Ordering::Relaxed);
                    // Free again after being reported stuck: back to its real health.
                    if self.shared.stuck_reported() {
                        self.shared.set_health(&watcher);
                    }
                }
                _ = save.tick(), if self.catch_up.is_some() => {
                    if let Some(unsettled) = unsettled(&tx).await {
                        self.save(&watcher, unsettled).await;
                    }
                }
                events = watcher.next() => {
                    if cancel.is_cancelled() {
                        break Ok(());
                    }
                    let (events, failed) = more_ready(&mut watcher, events);
                    self.shared.watches.store(watcher.watch_count() as u64, Ordering::Relaxed);
                    self.count_overflows(watcher.overflow_stats(), &mut overflows);
                    self.shared.set_health(&watcher);
                    self.dispatch(events, &tx).await;
                    if let Some(e) = failed {
                        break Err(e);
                    }
                }
            }
        };
        match self.hand_over(&mut watcher, &tx, result.is_ok()).await {
            Some(unsettled) => self.save(&watcher, unsettled).await,
            None => warn!("the listener let this watcher go: nothing handed over, its snapshot not saved"),
        }
        drop(watcher);
        info!("inotify closed: no new events");
        if let Err(e) = result {
            error!("listener failed: {e}");
            if tx.upgrade().is_some() {
                self.shared.set(State::Failed, Some(e.to_string()));
            }
        }
    }

    /// Warns once per route and post command whose resource limits cannot be enforced.
    fn warn_unenforced_limits(&self) {
        for route in &self.config.routes {
            crate::job::contain::warn_unenforced(&format!("route {}", route.name), &route.limits);
        }
        for post in &self.config.posts {
            crate::job::contain::warn_unenforced(&format!("post command {}", post.name), &post.limits);
        }
    }

    /// Starts the scheduler's task: it reads `rx` and starts jobs (and post commands)
    /// through a [`Launcher`] that stops them when the tokens fire.
    fn start_scheduler(
        &mut self,
        rx: mpsc::Receiver<Input>,
        jobs_cancel: &CancellationToken,
        posts_cancel: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let launcher = Launcher {
            config: self.config.clone(),
            ctx: self.ctx.jobs.clone(),
            observer: Arc::new(super::metered::Metered::new(
                self.shared.clone(),
                self.ctx.jobs.metrics.clone(),
                &self.config.name,
            )),
            cancel: jobs_cancel.clone(),
            posts_cancel: posts_cancel.clone(),
        };
        let mut sched = match self.config.posts.is_empty() {
            false => scheduler::Scheduler::with_frames(),
            true => scheduler::Scheduler::default(),
        };
        if let Some(holds) = self.holds.take() {
            sched = sched.with_holds(holds);
        }
        let (builds, config) = (self.ctx.jobs.builds.clone(), self.config.clone());
        sched = sched.with_activity(scheduler::Activity(Arc::new(move |busy| {
            builds.set(&config, busy)
        })));
        let (max_jobs, stopping) = (self.config.max_jobs, jobs_cancel.clone());
        tokio::spawn(
            async move {
                scheduler::drive(rx, sched, max_jobs, &stopping, move |work| launcher.launch(work)).await
            }
            .in_current_span(),
        )
    }

    /// Matches each event against the routes and submits the matches.
    /// Earlier stages first, so a later stage never becomes due before the earlier
    /// stage's submission for the same change has arrived.
    /// What one read of the watcher reports goes in batches of about [`BATCH`]
    /// submissions, cut only between files: the scheduler (on another thread) takes a
    /// file's create and modify released at its close together, however it is timed.
    /// Each event is published with the routes it matched (`execlibctl events`).
    async fn dispatch(&self, events: Vec<FileEvent>, tx: &mpsc::WeakSender<Input>) {
        if events.is_empty() {
            return;
        }
        // Closed: the listener is ending; what it reports now has no scheduler to go to.
        let Some(tx) = tx.upgrade() else { return };
        let mut batch = Vec::new();
        let mut events = events.into_iter().peekable();
        while let Some(event) = events.next() {
            self.shared.events.fetch_add(1, Ordering::Relaxed);
            self.events.count(event.kind);
            let mut matched = Vec::new();
            for &index in &self.stage_order {
                if let Some(sub) = crate::route::submission(index, &self.config.routes[index], &event) {
                    if !sub.gone_only {
                        matched.push(self.config.routes[index].name.clone());
                    }
                    batch.push(sub);
                }
            }
            let next_file = events.peek().is_none_or(|next| next.path != event.path);
            if batch.len() >= BATCH && next_file {
                let _ = tx.send(Input::Batch(std::mem::take(&mut batch))).await;
            }
            self.ctx.feed.publish(crate::protocol::observe::SeenEvent {
                at_ms: crate::protocol::epoch_ms(std::time::SystemTime::now()),
                listener: self.config.name.clone(),
                kind: event.kind.as_str().to_owned(),
                path: event.path,
                routes: matched,
            });
        }
        if !batch.is_empty() {
            let _ = tx.send(Input::Batch(batch)).await;
        }
    }

    /// Counts the overflows and rescans since `seen` (in the listener's status and the
    /// daemon's metrics) and moves `seen` to `now`.
    fn count_overflows(&self, now: crate::watch::OverflowStats, seen: &mut crate::watch::OverflowStats) {
        let (overflows, rescans) = (now.overflows - seen.overflows, now.rescans - seen.rescans);
        if overflows > 0 || rescans > 0 {
            self.shared.keeping_up.overflowed(overflows, now.last);
            let metrics = &self.ctx.jobs.metrics;
            metrics.watcher(&self.config.name, overflows, rescans);
        }
        *seen = now;
    }

    /// At a stop: what a still healthy watcher held is submitted, and the files whose
    /// changes are not processed are left in `shared.handover` (for a listener
    /// replacing this one on reload: their runs are about to be dropped or terminated)
    /// and returned (for the snapshot); `None` when the listener's side has let this
    /// watcher go (it was stuck): nothing is handed over then, and nothing may be saved.
    async fn hand_over(
        &self,
        watcher: &mut Watcher,
        tx: &mpsc::WeakSender<Input>,
        healthy: bool,
    ) -> Option<crate::scheduler::Unsettled> {
        tx.upgrade()?;
        if healthy {
            match watcher.flush() {
                Ok(events) => self.dispatch(events, tx).await,
                Err(e) => warn!("cannot flush the watcher at stop: {e}"),
            }
        }
        let files = unsettled(tx).await?;
        self.shared
            .hand_over(files.iter().map(|(file, kinds)| (file.clone(), *kinds)));
        Some(files)
    }

    /// Persists the snapshot (catch-up listeners only). Files whose changes are not
    /// processed yet (pending, queued or running) keep their last persisted state, so
    /// after a crash or a stop they are found changed again and run.
    async fn save(&mut self, watcher: &Watcher, unsettled: crate::scheduler::Unsettled) {
        let Some((path, persisted)) = &mut self.catch_up else {
            return;
        };
        // A copy of the tree in its compact form (no map by full path), written from there.
        let mut baseline = watcher.by_dir();
        baseline.patch(unsettled.into_keys().map(|file| {
            let state = persisted.get(&file);
            (file, state)
        }));
        // The old baseline is freed before the new one is written (what it held for the
        // unsettled files is in the new one). The new one is the baseline even if the
        // write fails, as the tree is: what was processed since stays processed. If the
        // writing task itself fails, no baseline is left, and files unsettled at the next
        // save count as new: run again, never skipped.
        *persisted = Dirs::default();
        let path = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            let saved = snapshot::save(&path, &baseline);
            (baseline, saved)
        });
        let saved = match written.await {
            Ok((baseline, Ok(()))) => {
                *persisted = baseline;
                debug!("snapshot saved");
                Ok(())
            }
            Ok((baseline, Err(e))) => {
                *persisted = baseline;
                Err(format!("cannot save the snapshot: {e}"))
            }
            Err(e) => Err(format!("cannot save the snapshot: the save task failed: {e}")),
        };
        self.shared.saved(saved);
        self.shared.set_health(watcher);
    }
}

/// `first` (one read of the watcher) and whatever else it has ready now, up to about
/// [`BATCH`] events: dispatched together, they cost the scheduler's thread one
/// wake-up, not one per event. The error, if a read failed (what came before it
/// is still returned).
fn more_ready(
    watcher: &mut Watcher,
    first: Result<Vec<FileEvent>, crate::watch::WatchError>,
) -> (Vec<FileEvent>, Option<crate::watch::WatchError>) {
    use futures::FutureExt;
    let mut events = match first {
        Ok(events) => events,
        Err(e) => return (Vec::new(), Some(e)),
    };
    while events.len() < BATCH {
        match watcher.next().now_or_never() {
            Some(Ok(more)) => events.extend(more),
            Some(Err(e)) => return (events, Some(e)),
            None => break,
        }
    }
    (events, None)
}

/// What ending a listener's jobs needs (the rest of its [`Run`] went to its watcher's thread).
struct Ending {
    config: Arc<ListenerConfig>,
    ctx: JobContext,
    shared: Arc<Shared>,
}

impl Ending {
    /// After inotify is closed (or its watcher left behind): terminates the running
    /// jobs, lets post commands run until the grace is over, waits for the scheduler,
    /// then ends any process the listener's jobs left behind.
    async fn end_jobs(
        &self,
        mut scheduler: tokio::task::JoinHandle<()>,
        jobs_cancel: CancellationToken,
        posts_cancel: CancellationToken,
    ) {
        let running = self.shared.jobs_running.load(Ordering::Relaxed);
        if running > 0 {
            info!(jobs = running, "terminating running jobs");
        }
        jobs_cancel.cancel();
        let posts = !self.config.posts.is_empty();
        let ended = tokio::select! {
            ended = &mut scheduler => ended,
            _ = tokio::time::sleep(self.ctx.jobs.grace), if posts => {
                info!("grace over: terminating post commands");
                posts_cancel.cancel();
                scheduler.await
            }
        };
        if let Err(e) = ended {
            error!("scheduler ended abnormally: {e}");
        }
        let (name, grace) = (self.config.name.clone(), self.ctx.jobs.grace);
        let _ = tokio::task::spawn_blocking(move || crate::job::orphans::end_listener(&name, grace)).await;
    }
}

/// The files with changes not processed yet, from the scheduler (asked in order, after
/// every submission sent before); `None` when the scheduler is gone or going (then
/// what the watcher saw may not have been run, and must not be saved as processed).
async fn unsettled(tx: &mpsc::WeakSender<Input>) -> Option<crate::scheduler::Unsettled> {
    let tx = tx.upgrade()?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.send(Input::Unsettled(reply)).await.ok()?;
    answer.await.ok()
}
