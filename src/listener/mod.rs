//! Listeners: named groups of routes, each with its own inotify instance.
//!
//! [`Listeners`] is the registry the daemon and the control socket drive
//! (start, stop, snapshot); [`task`] is what a running listener does.

mod reload;
mod task;

pub use reload::Applied;

use crate::config::{Config, ListenerConfig};
use crate::snapshot;
use crate::watch::{DirFilter, FileEvent, Setup, WatchError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

/// A listener's state as the control socket reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Watching and running jobs.
    Running,
    /// Not started, or stopped on request.
    Stopped,
    /// Running, but some routes cannot watch.
    Degraded,
    /// Could not start or broke; `error` says why.
    Failed,
}

/// One listener as the control socket reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerInfo {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: State,
    /// The directories its routes watch (lossily as UTF-8).
    pub paths: Vec<String>,
    /// How many routes it has.
    pub routes: usize,
    /// How many directories it watches.
    pub watches: u64,
    /// File events received since the daemon started.
    pub events: u64,
    /// Jobs started since the daemon started.
    pub jobs_started: u64,
    /// Jobs that failed.
    pub jobs_failed: u64,
    /// Jobs running now.
    pub jobs_running: u64,
    /// Files whose changes wait for a run.
    #[serde(default)]
    pub jobs_queued: u64,
    /// The most recent failed job.
    #[serde(default)]
    pub last_failure: Option<Failure>,
    /// Why it is not running, when it is not by choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts for the status line and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Listeners running or degraded.
    pub running: usize,
    /// All listeners.
    pub total: usize,
    /// Directories watched.
    pub watches: u64,
}

/// A failed job, as `listeners` reports the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The route.
    pub route: String,
    /// The file (absolute, lossily as UTF-8).
    pub file: String,
    /// Why it failed ("exit code 2", "timed out", ...).
    pub reason: String,
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A job that has not finished, as `jobs` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The listener.
    pub listener: String,
    /// The route.
    pub route: String,
    /// The file (absolute, lossily as UTF-8).
    pub file: String,
    /// `running`, `waiting` (due, for a free slot) or `pending` (debounce, delay, or
    /// the file's current run).
    pub state: String,
    /// The job's pid, once running.
    pub pid: Option<u32>,
    /// How long it has been running.
    pub running_ms: Option<u64>,
}

/// A job being run, in the listener's registry.
#[derive(Debug)]
pub(crate) struct RunningJob {
    pub route: String,
    pub file: PathBuf,
    pub pid: Arc<std::sync::atomic::AtomicU32>,
    pub started: std::time::Instant,
}

/// Why a start or stop request failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The daemon is stopping its listeners.
    #[error("the daemon is shutting down")]
    Closing,
    /// The listener is not running.
    #[error("listener {0:?} is not running")]
    NotRunning(String),
    /// A path that may not be used (`..`).
    #[error("path {0:?} may not contain `..`")]
    BadPath(String),
    /// No listener has that name.
    #[error("no listener named {0:?}")]
    Unknown(String),
    /// The listener could not start.
    #[error("listener {name:?} failed to start: {source}")]
    StartFailed {
        /// The listener.
        name: String,
        /// Why.
        source: WatchError,
    },
}

/// Counters and state shared between a listener's slot and its running task.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    watches: AtomicU64,
    events: AtomicU64,
    jobs_started: AtomicU64,
    jobs_failed: AtomicU64,
    jobs_running: AtomicU64,
    status: Mutex<Option<(State, Option<String>)>>,
    last_failure: Mutex<Option<Failure>>,
    running: Mutex<std::collections::BTreeMap<u64, RunningJob>>,
    next_job: AtomicU64,
}

impl Shared {
    fn set(&self, state: State, error: Option<String>) {
        *self.status.lock().expect("status lock") = Some((state, error));
    }

    fn get(&self) -> (State, Option<String>) {
        self.status
            .lock()
            .expect("status lock")
            .clone()
            .unwrap_or((State::Stopped, None))
    }

    /// Running, or degraded with the reasons when some roots are missing.
    fn set_health(&self, missing: Vec<String>) {
        let health = if missing.is_empty() {
            (State::Running, None)
        } else {
            (State::Degraded, Some(missing.join("; ")))
        };
        *self.status.lock().expect("status lock") = Some(health);
    }
}

struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Into the listener's scheduler, for synthetic events (`trigger`). Weak: it does not
    /// keep the channel open, so the scheduler ends with the listener however it ends.
    submit: tokio::sync::mpsc::WeakUnboundedSender<crate::scheduler::Input>,
}

/// Watches set up for a listener, not yet read by its task.
struct Prepared {
    watcher: crate::watch::Watcher,
    missed: Vec<FileEvent>,
    catch_up: Option<(PathBuf, snapshot::Snapshot)>,
}

struct Slot {
    config: Arc<ListenerConfig>,
    shared: Arc<Shared>,
    running: tokio::sync::Mutex<Option<Running>>,
}

/// What every job of the daemon shares.
#[derive(Debug, Clone)]
pub(crate) struct JobContext {
    pub instance: String,
    pub grace: Duration,
    pub state_dir: PathBuf,
}

/// The daemon's listeners.
pub struct Listeners {
    /// In config order; replaced as a whole by a reload.
    slots: std::sync::RwLock<Vec<Arc<Slot>>>,
    ctx: JobContext,
    /// Set by [`Listeners::stop_all`]: no listener may start after it.
    closing: std::sync::atomic::AtomicBool,
}

impl Listeners {
    /// The listeners of `config`, all stopped.
    pub fn new(config: &Config) -> Self {
        Listeners {
            slots: config
                .listeners
                .iter()
                .map(|l| Arc::new(Slot::new(l)))
                .collect::<Vec<_>>()
                .into(),
            ctx: JobContext {
                instance: config.instance.clone(),
                grace: config.daemon.shutdown_grace,
                state_dir: config.daemon.state_dir.clone(),
            },
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>, ListenerError> {
        self.slots()
            .into_iter()
            .find(|s| s.config.name == name)
            .ok_or_else(|| ListenerError::Unknown(name.to_owned()))
    }

    /// The slots as they are now.
    fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.read().expect("slots lock").clone()
    }

    /// Starts every listener with `autostart`; failures are logged and leave it `failed`.
    /// Returns once each has its watches in place.
    pub async fn start_autostart(&self) {
        let slots = self.slots();
        let starts = slots
            .iter()
            .filter(|s| s.config.autostart)
            .map(|s| s.start(&self.ctx, &self.closing));
        for result in futures::future::join_all(starts).await {
            if let Err(e) = result {
                error!("{e}");
            }
        }
    }

    /// Starts a listener; `Ok(false)` when it was already running.
    pub async fn start(&self, name: &str) -> Result<bool, ListenerError> {
        self.slot(name)?.start(&self.ctx, &self.closing).await
    }

    /// Stops a listener and its jobs; `Ok(false)` when it was not running.
    pub async fn stop(&self, name: &str) -> Result<bool, ListenerError> {
        Ok(self.slot(name)?.stop().await)
    }

    /// Submits a synthetic `modify` of `path` to listener `name`'s routes; returns how
    /// many routes matched. `path` is absolute, or relative to a route's path or to the
    /// config file's directory.
    pub async fn trigger(&self, name: &str, path: &str, config_dir: &Path) -> Result<usize, ListenerError> {
        let slot = self.slot(name)?;
        let running = slot.running.lock().await;
        let Some(submit) = running.as_ref().and_then(|r| r.submit.upgrade()) else {
            return Err(ListenerError::NotRunning(name.to_owned()));
        };
        let path = Path::new(path);
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ListenerError::BadPath(path.display().to_string()));
        }
        let mut matched = 0;
        for (index, route) in slot.config.routes.iter().enumerate() {
            let candidates = [route.path.join(path), config_dir.join(path)];
            let Some(file) = candidates.into_iter().find(|c| c.starts_with(&route.path)) else {
                continue;
            };
            let event = FileEvent {
                path: file,
                kind: crate::events::EventKind::Modify,
            };
            if let Some(sub) = task::route_match(index, route, &event) {
                let _ = submit.send(crate::scheduler::Input::Submit(sub));
                matched += 1;
            }
        }
        Ok(matched)
    }

    /// Every job not finished: running ones with pid and time, then queued ones.
    pub async fn jobs(&self) -> Vec<JobView> {
        let mut all = Vec::new();
        for slot in self.slots() {
            all.extend(slot.jobs().await);
        }
        all
    }

    /// Stops every listener at once: watches closed, then jobs terminated within the grace.
    /// No listener starts after this begins.
    pub async fn stop_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let slots = self.slots();
        futures::future::join_all(slots.iter().map(|s| s.stop())).await;
    }

    /// A snapshot of every listener.
    pub async fn infos(&self) -> Vec<ListenerInfo> {
        let slots = self.slots();
        let mut infos = Vec::with_capacity(slots.len());
        for slot in slots {
            infos.push(slot.info().await);
        }
        infos
    }

    /// Listeners up (running or degraded), listeners in all, and directories watched.
    pub fn summary(&self) -> Summary {
        let slots = self.slots();
        Summary {
            running: slots.iter().filter(|s| s.is_up()).count(),
            total: slots.len(),
            watches: slots
                .iter()
                .map(|s| s.shared.watches.load(Ordering::Relaxed))
                .sum(),
        }
    }
}

impl Slot {
    fn new(config: &ListenerConfig) -> Slot {
        Slot {
            config: Arc::new(config.clone()),
            shared: Arc::default(),
            running: tokio::sync::Mutex::new(None),
        }
    }

    async fn start(
        &self,
        ctx: &JobContext,
        closing: &std::sync::atomic::AtomicBool,
    ) -> Result<bool, ListenerError> {
        let mut running = self.running.lock().await;
        if closing.load(Ordering::SeqCst) {
            return Err(ListenerError::Closing);
        }
        if running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return Ok(false);
        }
        let prepared = self.prepare(ctx).await?;
        *running = Some(self.launch(ctx, prepared, Vec::new()));
        Ok(true)
    }

    /// Sets up the watches (and, for `catch_up`, finds the changes made while stopped).
    /// From here on no change is missed: events queue in the new inotify instance.
    async fn prepare(&self, ctx: &JobContext) -> Result<Prepared, ListenerError> {
        let name = self.config.name.clone();
        let roots = roots(&self.config);
        let filter = dir_filter(&self.config);
        let saved = self.config.catch_up.then(|| snapshot_path(ctx, &name));
        let span = info_span!("listener", listener = %name);
        let setup = tokio::task::spawn_blocking(move || {
            let _entered = span.entered();
            let setup = Setup::new(&roots, filter, saved.is_some())?;
            let (missed, catch_up) = match saved {
                Some(path) => {
                    let (missed, baseline) = catch_up_events(&path, setup.snapshot());
                    (missed, Some((path, baseline)))
                }
                None => (Vec::new(), None),
            };
            Ok::<_, WatchError>((setup, missed, catch_up))
        })
        .await
        .expect("watch setup does not panic");
        let ready = setup.and_then(|(s, missed, catch_up)| Ok((s.into_watcher()?, missed, catch_up)));
        match ready {
            Ok((watcher, missed, catch_up)) => Ok(Prepared {
                watcher,
                missed,
                catch_up,
            }),
            Err(source) => {
                self.shared.set(State::Failed, Some(source.to_string()));
                Err(ListenerError::StartFailed { name, source })
            }
        }
    }

    /// Starts the listener's task on prepared watches; `extra` changes (from a listener
    /// this one replaces) are submitted first, with the catch-up ones.
    fn launch(&self, ctx: &JobContext, prepared: Prepared, extra: Vec<FileEvent>) -> Running {
        let Prepared {
            watcher,
            mut missed,
            catch_up,
        } = prepared;
        missed.extend(extra);
        let name = self.config.name.clone();
        let watches = watcher.watch_count();
        self.shared.watches.store(watches as u64, Ordering::Relaxed);
        self.shared.set_health(watcher.missing_roots());
        info!(listener = %name, watches, "listener started");
        for reason in watcher.missing_roots() {
            warn!(listener = %name, "{reason}; waiting for it");
        }
        let cancel = CancellationToken::new();
        let run = task::Run {
            config: self.config.clone(),
            ctx: ctx.clone(),
            shared: self.shared.clone(),
            catch_up,
            stage_order: stage_order(&self.config),
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let submit = tx.downgrade();
        let task = run
            .spawn(watcher, missed, (tx, rx), cancel.clone())
            .instrument(info_span!("listener", listener = %name));
        Running {
            cancel,
            task: tokio::spawn(task),
            submit,
        }
    }

    /// The files whose changes its scheduler has not finished (none when not running).
    async fn unsettled(&self) -> Vec<PathBuf> {
        let submit = self
            .running
            .lock()
            .await
            .as_ref()
            .and_then(|r| r.submit.upgrade());
        let Some(submit) = submit else { return Vec::new() };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if submit.send(crate::scheduler::Input::Unsettled(reply)).is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default().into_iter().collect()
    }

    /// Running or degraded.
    fn is_up(&self) -> bool {
        matches!(self.shared.get().0, State::Running | State::Degraded)
    }

    async fn stop(&self) -> bool {
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

    async fn jobs(&self) -> Vec<JobView> {
        let name = &self.config.name;
        let lossy = |p: &Path| p.to_string_lossy().into_owned();
        let mut views: Vec<JobView> = {
            let running = self.shared.running.lock().expect("jobs lock");
            running
                .values()
                .map(|j| JobView {
                    listener: name.clone(),
                    route: j.route.clone(),
                    file: lossy(&j.file),
                    state: "running".into(),
                    pid: Some(j.pid.load(Ordering::Relaxed)).filter(|&p| p != 0),
                    running_ms: Some(j.started.elapsed().as_millis() as u64),
                })
                .collect()
        };
        views.extend(self.queued().await.into_iter().map(|q| JobView {
            listener: name.clone(),
            route: self.config.routes[q.key.0].name.clone(),
            file: lossy(&q.key.1),
            state: q.state.into(),
            pid: None,
            running_ms: None,
        }));
        views
    }

    /// The runs its scheduler has not started (none when it is not running, starting or stopping).
    async fn queued(&self) -> Vec<crate::scheduler::Queued> {
        // Not waiting for the lock: a start or stop holds it (up to the grace), and a
        // listener being started or stopped has no queue worth reporting.
        let submit = self
            .running
            .try_lock()
            .ok()
            .and_then(|r| r.as_ref().and_then(|r| r.submit.upgrade()));
        let Some(submit) = submit else { return Vec::new() };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if submit.send(crate::scheduler::Input::Queued(reply)).is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    async fn info(&self) -> ListenerInfo {
        let (state, error) = self.shared.get();
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ListenerInfo {
            name: self.config.name.clone(),
            state,
            paths: roots(&self.config)
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            routes: self.config.routes.len(),
            watches: get(&s.watches),
            events: get(&s.events),
            jobs_started: get(&s.jobs_started),
            jobs_failed: get(&s.jobs_failed),
            jobs_running: get(&s.jobs_running),
            jobs_queued: self.queued().await.len() as u64,
            last_failure: s.last_failure.lock().expect("failure lock").clone(),
            error,
        }
    }
}

/// Where a listener's snapshot is persisted.
fn snapshot_path(ctx: &JobContext, listener: &str) -> PathBuf {
    ctx.state_dir.join(format!("{listener}.snapshot"))
}

/// The changes between the saved snapshot and the tree as it is now, to be
/// processed before live events, and the baseline to persist from: the saved
/// snapshot, or (missing or corrupt: a fresh start, with a warning if corrupt) the
/// tree as it is, saved at once.
fn catch_up_events(path: &Path, current: snapshot::Snapshot) -> (Vec<FileEvent>, snapshot::Snapshot) {
    match snapshot::load(path) {
        Ok(saved) => {
            let changes = snapshot::diff(&saved, &current);
            info!(
                changes = changes.len(),
                "catching up on changes made while stopped"
            );
            let events = changes
                .into_iter()
                .map(|(path, kind)| FileEvent { path, kind })
                .collect();
            (events, saved)
        }
        Err(snapshot::SnapshotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            info!(path = %path.display(), "no saved snapshot: starting fresh");
            (Vec::new(), fresh_baseline(path, current))
        }
        Err(e) => {
            warn!("cannot use the saved snapshot, starting fresh: {e}");
            (Vec::new(), fresh_baseline(path, current))
        }
    }
}

/// Saves the tree as it is, before the daemon reports ready: a crash right after a
/// fresh start still finds a baseline. (A saved snapshot needs no save at start: it is
/// already the baseline that unprocessed changes are measured from.)
fn fresh_baseline(path: &Path, current: snapshot::Snapshot) -> snapshot::Snapshot {
    if let Err(e) = snapshot::save(path, &snapshot::encode(&current)) {
        warn!("cannot save the snapshot: {e}");
    }
    current
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
