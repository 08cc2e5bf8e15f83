//! One listener's slot in the registry: its config, counters, and the running task
//! when there is one. Starting sets up the watches (and catch-up) and spawns the
//! task; stopping cancels it and waits for its jobs to end.

use super::task;
use super::{JobContext, JobView, ListenerError, ListenerInfo, Shared, State};
use crate::config::ListenerConfig;
use crate::snapshot;
use crate::watch::threaded::Watching;
use crate::watch::{DirFilter, FileEvent, Setup, WatchError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

/// A listener's running task and the handles to reach it.
pub(super) struct Running {
    pub(super) cancel: CancellationToken,
    pub(super) task: tokio::task::JoinHandle<()>,
    /// Into the listener's scheduler, for synthetic events (`trigger`). Weak: it does not
    /// keep the channel open, so the scheduler ends with the listener however it ends.
    pub(super) submit: tokio::sync::mpsc::WeakSender<crate::scheduler::Input>,
}

/// Watches set up for a listener, not yet read by its task.
pub(super) struct Prepared {
    watching: Watching,
    missed: Vec<FileEvent>,
    catch_up: Option<(PathBuf, snapshot::Dirs)>,
    /// How saving a fresh baseline went (catch-up without a saved snapshot).
    saved: Result<(), String>,
    /// What holds the routes' due runs (version-control operations).
    holds: crate::scheduler::Holds,
}

/// One listener: its config, its counters, and its task while it runs.
pub(super) struct Slot {
    pub(super) config: Arc<ListenerConfig>,
    pub(super) shared: Arc<Shared>,
    pub(super) running: tokio::sync::Mutex<Option<Running>>,
    /// Cancels the start in progress (its watch setup), if one is.
    starting: std::sync::Mutex<Option<CancellationToken>>,
    /// Set when a reload replaces or removes it: it never starts again.
    retired: std::sync::atomic::AtomicBool,
    /// Set by a `stop` while a reload is starting it, in case its watch setup has not
    /// begun yet: that setup is then abandoned as it begins. Cleared when the reload ends.
    stopped_early: std::sync::atomic::AtomicBool,
}

/// How long a listener's watch setup runs before it is reported slow (a warning,
/// and the reason in `listeners`), and again at each doubling.
pub(super) const SLOW_START: std::time::Duration = std::time::Duration::from_secs(10);

impl Slot {
    pub(super) fn new(config: &ListenerConfig) -> Slot {
        Slot {
            config: Arc::new(config.clone()),
            shared: Arc::default(),
            running: tokio::sync::Mutex::new(None),
            starting: std::sync::Mutex::new(None),
            retired: Default::default(),
            stopped_early: Default::default(),
        }
    }

    /// A `stop` while a reload starts this slot: its start is abandoned, now or as its
    /// watch setup begins. Whether a start was in progress.
    pub(super) fn stop_early(&self) -> bool {
        self.stopped_early.store(true, Ordering::SeqCst);
        self.abandon_start()
    }

    /// The reload that started it is over: a later start is not abandoned.
    pub(super) fn reloaded(&self) {
        self.stopped_early.store(false, Ordering::SeqCst);
    }

    /// Marks it replaced or removed by a reload: a start in progress is abandoned and
    /// none begins after this (the reload then stops it).
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.abandon_start();
    }

    /// Abandons the start in progress, if one is: its watch setup (perhaps stuck on a
    /// hung file system) is left to finish on its own and its result dropped.
    /// Whether there was one.
    pub(super) fn abandon_start(&self) -> bool {
        let starting = self.starting.lock().expect("starting lock");
        starting.as_ref().inspect(|token| token.cancel()).is_some()
    }

    pub(super) async fn start(
        &self,
        ctx: &JobContext,
        closing: &CancellationToken,
    ) -> Result<bool, ListenerError> {
        let mut running = self.running.lock().await;
        if closing.is_cancelled() {
            return Err(ListenerError::Closing);
        }
        if self.retired.load(Ordering::SeqCst) {
            return Err(ListenerError::Replaced(self.config.name.clone()));
        }
        if running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return Ok(false);
        }
        let prepared = self.prepare(ctx, closing).await?;
        *running = Some(self.launch(ctx, prepared, Vec::new()));
        Ok(true)
    }

    /// Sets up the watches (and, for `catch_up`, finds the changes made while stopped).
    /// From here on no change is missed: events queue in the new inotify instance.
    /// Abandoned when `closing` is cancelled or the listener is stopped meanwhile.
    pub(super) async fn prepare(
        &self,
        ctx: &JobContext,
        closing: &CancellationToken,
    ) -> Result<Prepared, ListenerError> {
        let name = self.config.name.clone();
        let roots = roots(&self.config);
        let filter = dir_filter(&self.config);
        let saved = self.config.catch_up.then(|| snapshot_path(ctx, &name));
        let span = info_span!("listener", listener = %name);
        let config = self.config.clone();
        let abandon = closing.child_token();
        if closing.is_cancelled() || self.stopped_early.swap(false, Ordering::SeqCst) {
            // Never asked: no thread goes into a file system that may not answer.
            let why = if closing.is_cancelled() {
                "the daemon is shutting down"
            } else {
                "stopped"
            };
            self.shared.set(State::Stopped, None);
            return Err(ListenerError::Abandoned {
                name,
                waited: std::time::Duration::ZERO,
                why,
            });
        }
        let abandoned = abandon.clone();
        let setup = tokio::task::spawn_blocking(move || {
            let _entered = span.entered();
            let holds = crate::vcs::holds(&config);
            // The saved snapshot is read on a thread of its own while the tree is walked.
            let (setup, loaded, walk_ms) = std::thread::scope(|scope| {
                let loading = saved
                    .as_deref()
                    .map(|path| scope.spawn(|| timed(|| snapshot::load(path))));
                let (setup, walk_ms) = timed(|| Setup::new(&roots, filter, saved.is_some()));
                let loaded = loading.map(|l| l.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
                (setup, loaded, walk_ms)
            });
            let setup = setup?;
            let (missed, catch_up, saved) = match (saved, loaded) {
                // Abandoned: its result is dropped, and a baseline saved now could
                // overwrite one saved since by a later start.
                (Some(path), Some((loaded, load_ms))) if !abandoned.is_cancelled() => {
                    let took = Took { walk_ms, load_ms };
                    let (missed, baseline, saved) = catch_up_events(&path, &setup, loaded, took);
                    (missed, Some((path, baseline)), saved)
                }
                _ => (Vec::new(), None, Ok(())),
            };
            // The tree as read and the comparison are freed: hand their pages back.
            crate::sys::release_free_memory();
            Ok::<_, WatchError>((setup, (missed, catch_up, saved, holds)))
        });
        let setup = self.await_setup(setup, closing, abandon).await?;
        let (hold_for, poll_for) = (hold_for(&self.config), poll_for(&self.config));
        let ready = setup.and_then(|(s, found)| Ok((Watching::new(s, hold_for, poll_for)?, found)));
        match ready {
            Ok((watching, (missed, catch_up, saved, holds))) => Ok(Prepared {
                watching,
                missed,
                catch_up,
                saved,
                holds,
            }),
            Err(source) => {
                self.shared.set(State::Failed, Some(source.to_string()));
                Err(ListenerError::StartFailed { name, source })
            }
        }
    }

    /// Waits for the watch setup `setup`, saying so when it is slow, and gives up when
    /// `abandon` (a child of `closing`) is cancelled: the daemon is shutting down, or
    /// the listener was stopped ([`Slot::abandon_start`]). The listener is `starting`
    /// meanwhile; abandoned, it is `stopped`.
    async fn await_setup<T>(
        &self,
        setup: tokio::task::JoinHandle<T>,
        closing: &CancellationToken,
        abandon: CancellationToken,
    ) -> Result<T, ListenerError> {
        let name = &self.config.name;
        *self.starting.lock().expect("starting lock") = Some(abandon.clone());
        if self.stopped_early.swap(false, Ordering::SeqCst) {
            abandon.cancel();
        }
        self.shared.set(State::Starting, None);
        let started = tokio::time::Instant::now();
        let mut slow_at = SLOW_START;
        tokio::pin!(setup);
        let outcome = loop {
            tokio::select! {
                done = &mut setup => break Ok(done.expect("watch setup does not panic")),
                _ = abandon.cancelled() => {
                    let why = if closing.is_cancelled() { "the daemon is shutting down" } else { "stopped" };
                    break Err(ListenerError::Abandoned { name: name.clone(), waited: started.elapsed(), why });
                }
                _ = tokio::time::sleep_until(started + slow_at) => {
                    let paths: Vec<String> =
                        roots(&self.config).iter().map(|p| crate::names::escaped(p).to_string()).collect();
                    let reason = format!(
                        "setting up its watches for {} s so far: is a file system under {} slow or hung?",
                        slow_at.as_secs(),
                        paths.join(", ")
                    );
                    warn!(listener = %name, "{reason}");
                    self.shared.set(State::Starting, Some(reason));
                    slow_at *= 2;
                }
            }
        };
        *self.starting.lock().expect("starting lock") = None;
        if outcome.is_err() {
            self.shared.set(State::Stopped, None);
        }
        outcome
    }

    /// Starts the listener's task on prepared watches; `extra` changes (from a listener
    /// this one replaces) are submitted first, with the catch-up ones.
    pub(super) fn launch(&self, ctx: &JobContext, prepared: Prepared, extra: Vec<FileEvent>) -> Running {
        let Prepared {
            watching,
            mut missed,
            catch_up,
            saved,
            holds,
        } = prepared;
        if catch_up.is_some() {
            self.shared.saved(saved);
        }
        missed.extend(extra);
        let name = self.config.name.clone();
        let watcher = watching.watcher();
        let watches = watcher.watch_count();
        self.shared.watches.store(watches as u64, Ordering::Relaxed);
        *self.shared.held.lock().expect("held lock") = watcher.held_files();
        self.shared.set_health(watcher);
        info!(listener = %name, watches, "listener started");
        for reason in watcher.health() {
            warn!(listener = %name, "{reason}; waiting for it");
        }
        let cancel = CancellationToken::new();
        let run = task::Run {
            config: self.config.clone(),
            ctx: ctx.clone(),
            shared: self.shared.clone(),
            catch_up,
            stage_order: stage_order(&self.config),
            holds: Some(holds),
            events: ctx.jobs.metrics.events(&self.config.name),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(crate::scheduler::QUEUE);
        let submit = tx.downgrade();
        let task = run
            .spawn(watching, missed, (tx, rx), cancel.clone())
            .instrument(info_span!("listener", listener = %name));
        Running {
            cancel,
            task: tokio::spawn(task),
            submit,
        }
    }

    /// Running or degraded.
    pub(super) fn is_up(&self) -> bool {
        matches!(self.shared.get().0, State::Running | State::Degraded)
    }

    pub(super) async fn stop(&self) -> bool {
        let mut running = self.running.lock().await;
        let Some(r) = running.take() else {
            return false;
        };
        let name = &self.config.name;
        info!(listener = %name, "stopping listener");
        r.cancel.cancel();
        if let Err(e) = r.task.await {
            error!(listener = %name, "listener task ended abnormally: {e}");
        }
        let (state, _) = self.shared.get();
        if state != State::Failed {
            self.shared.set(State::Stopped, None);
        }
        self.shared.watches.store(0, Ordering::Relaxed);
        info!(listener = %name, "listener stopped");
        true
    }

    pub(super) async fn jobs(&self) -> Vec<JobView> {
        let name = &self.config.name;
        let mut views: Vec<JobView> = {
            let running = self.shared.running.lock().expect("jobs lock");
            running
                .values()
                .map(|j| JobView {
                    listener: name.clone(),
                    route: j.route.clone(),
                    file: j.file.clone(),
                    state: "running".into(),
                    pid: Some(j.pid.load(Ordering::Relaxed)).filter(|&p| p != 0),
                    running_ms: Some(j.started.elapsed().as_millis() as u64),
                })
                .collect()
        };
        views.extend(self.queued().await.into_iter().map(|q| JobView {
            listener: name.clone(),
            route: self.config.routes[q.key.0].name.clone(),
            // A batch route's one key has no file: its path, as its running job shows.
            file: match q.key.1.as_os_str().is_empty() {
                true => self.config.routes[q.key.0].path.clone(),
                false => q.key.1.clone(),
            },
            state: q.state.into(),
            pid: None,
            running_ms: None,
        }));
        views
    }

    /// The runs its scheduler has not started (none when it is not running, starting or stopping).
    pub(super) async fn queued(&self) -> Vec<crate::scheduler::Queued> {
        // Not waiting for the lock: a start or stop holds it (up to the grace), and a
        // listener being started or stopped has no queue worth reporting.
        let submit = self
            .running
            .try_lock()
            .ok()
            .and_then(|r| r.as_ref().and_then(|r| r.submit.upgrade()));
        let Some(submit) = submit else { return Vec::new() };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if submit.send(crate::scheduler::Input::Queued(reply)).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// What `listeners` says of it, but its `links`; its last run is `history`'s newest.
    pub(super) async fn info(&self, history: &crate::history::History) -> ListenerInfo {
        let (state, error) = self.shared.get();
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let polled = s.polled.lock().expect("polled lock").clone();
        let polled = polled
            .into_iter()
            .map(|(path, reason)| crate::protocol::replies::PolledPath { path, reason })
            .collect();
        ListenerInfo {
            name: self.config.name.clone(),
            state,
            paths: roots(&self.config),
            links: Vec::new(),
            polled,
            routes: self.config.routes.len(),
            watches: get(&s.watches),
            events: get(&s.events),
            jobs_started: get(&s.jobs_started),
            jobs_failed: get(&s.jobs_failed),
            jobs_running: get(&s.jobs_running),
            jobs_queued: self.queued().await.len() as u64,
            files_open: s.held.lock().expect("held lock").count() as u64,
            last_failure: s.last_failure.lock().expect("failure lock").clone(),
            error,
            overflows: s.keeping_up.overflows(),
            last_overflow_ms: s.keeping_up.last_overflow_ms(),
            last_run: history
                .newest(&self.config.name)
                .map(|r| crate::protocol::replies::LastRun::from(&*r)),
        }
    }
}

/// Where a listener's snapshot is persisted.
fn snapshot_path(ctx: &JobContext, listener: &str) -> PathBuf {
    ctx.state_dir.join(format!("{listener}.snapshot"))
}

/// The changes between the saved snapshot (`loaded`) and the tree as `setup` found
/// it, to be processed before live events, the baseline to persist from, and how
/// saving went: the saved snapshot, or (missing or corrupt: a fresh start, with a
/// warning if corrupt) the tree as it is, saved at once.
fn catch_up_events(
    path: &Path,
    setup: &Setup,
    loaded: Result<snapshot::Dirs, snapshot::SnapshotError>,
    took: Took,
) -> (Vec<FileEvent>, snapshot::Dirs, Result<(), String>) {
    match loaded {
        Ok(saved) => {
            let (events, compare_ms) = timed(|| setup.changes_since(&saved));
            info!(
                changes = events.len(),
                walk_ms = took.walk_ms,
                load_ms = took.load_ms,
                compare_ms,
                "catching up on changes made while stopped"
            );
            (events, saved, Ok(()))
        }
        Err(snapshot::SnapshotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            info!(path = %crate::names::escaped(path), "no saved snapshot: starting fresh");
            let current = setup.by_dir();
            let saved = fresh_baseline(path, &current);
            (Vec::new(), current, saved)
        }
        Err(e) => {
            warn!("cannot use the saved snapshot, starting fresh: {e}");
            let current = setup.by_dir();
            let saved = fresh_baseline(path, &current);
            (Vec::new(), current, saved)
        }
    }
}

/// How long a catch-up start's steps took: the walk (watching and stat'ing every
/// file) and, on a thread of its own meanwhile, loading the saved snapshot.
struct Took {
    walk_ms: u64,
    load_ms: u64,
}

/// `f`'s result and how long it took, in milliseconds.
fn timed<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let start = std::time::Instant::now();
    let value = f();
    (value, start.elapsed().as_millis() as u64)
}

/// Saves the tree as it is, before the daemon reports ready: a crash right after a
/// fresh start still finds a baseline. (A saved snapshot needs no save at start: it is
/// already the baseline that unprocessed changes are measured from.)
fn fresh_baseline(path: &Path, current: &snapshot::Dirs) -> Result<(), String> {
    snapshot::save(path, current).map_err(|e| format!("cannot save the snapshot: {e}"))
}

/// Route indexes sorted by stage (stable: config order within a stage).
fn stage_order(config: &ListenerConfig) -> Vec<usize> {
    let mut order: Vec<usize> = (0..config.routes.len()).collect();
    order.sort_by_key(|&i| config.routes[i].order.stage);
    order
}

/// The distinct directories the routes watch, in route order.
fn roots(config: &ListenerConfig) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for r in &config.routes {
        if !roots.contains(&r.path) {
            roots.push(r.path.clone());
        }
    }
    roots
}

/// How each route path is polled: as its routes say; `always` if one says so, else
/// `auto` if one does, else `never`; at the shortest `poll_ms` among them.
fn poll_for(config: &ListenerConfig) -> crate::watch::PollFor {
    use crate::watch::{Poll, PollMode};
    let routes = config.routes.clone();
    Arc::new(move |root: &Path| {
        let polls = routes.iter().filter(|r| r.path == root).map(|r| r.poll);
        polls
            .reduce(|a, b| Poll {
                mode: match (a.mode, b.mode) {
                    (PollMode::Always, _) | (_, PollMode::Always) => PollMode::Always,
                    (PollMode::Auto, _) | (_, PollMode::Auto) => PollMode::Auto,
                    _ => PollMode::Never,
                },
                every: a.every.min(b.every),
                fixed: a.fixed || b.fixed,
            })
            .unwrap_or_default()
    })
}

/// A directory is watched when some route covering it does not ignore it
/// (so hidden directories are not watched under the default ignores).
fn dir_filter(config: &ListenerConfig) -> DirFilter {
    let routes = config.routes.clone();
    Arc::new(move |dir: &Path| {
        routes.iter().any(|r| match dir.strip_prefix(&r.path) {
            Ok(rel) => rel.as_os_str().is_empty() || !r.matcher.ignores_dir(rel),
            Err(_) => r.path.starts_with(dir),
        })
    })
}

/// How long a file's changes may wait for its writer to close it: the shortest
/// `max_hold_ms` of the routes it is for; not at all when none is, or when one of
/// them has `max_hold_ms = 0` (its changes are reported as written).
fn hold_for(config: &ListenerConfig) -> crate::watch::HoldFor {
    let routes = config.routes.clone();
    Arc::new(move |file: &Path| {
        let mut limits = routes
            .iter()
            .filter(|r| file.strip_prefix(&r.path).is_ok_and(|rel| r.matcher.matches(rel)));
        limits.try_fold(None, |shortest: Option<std::time::Duration>, r| {
            let limit = r.max_hold?;
            Some(Some(shortest.map_or(limit, |s| s.min(limit))))
        })?
    })
}
