//! Listeners: named groups of routes, each with its own inotify instance.
//!
//! [`Listeners`] is the registry the daemon and the control socket drive
//! (start, stop, snapshot, reload); [`slot`] is one listener's lifecycle, [`task`]
//! what a running listener does (its watcher on a thread of its own:
//! [`crate::watch::threaded`]), [`reload`] how a new config is applied.

mod explain;
mod keeping_up;
mod metered;
mod reload;
mod slot;
mod task;

use slot::Slot;

use crate::config::Config;
use crate::protocol::replies::{Failure, JobView, ListenerInfo, ListenerState as State};
use crate::watch::{FileEvent, WatchError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::error;

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
    /// A reload replaced or removed the listener while it was being started.
    #[error("listener {0:?} was replaced by a reload while starting; start it again")]
    Replaced(String),
    /// The listener is not running.
    #[error("listener {0:?} is not running")]
    NotRunning(String),
    /// A path that may not be used (`..`, NUL).
    #[error("path {} {reason}", crate::names::escaped(path))]
    BadPath {
        /// The path as given.
        path: PathBuf,
        /// Why not.
        reason: &'static str,
    },
    /// `explain`: the file system did not answer in time (a hung network mount).
    #[error(
        "path {} unreachable: the file system did not answer within {} s",
        crate::names::escaped(path),
        limit.as_secs()
    )]
    Unreachable {
        /// The path as explained.
        path: PathBuf,
        /// How long it waited.
        limit: std::time::Duration,
    },
    /// No listener has that name.
    #[error("no listener named {0:?}")]
    Unknown(String),
    /// The listener was stopped, or the daemon began shutting down, while it was
    /// still setting up its watches.
    #[error(
        "listener {name:?}: start abandoned after {} s setting up its watches ({why}); \
         the setup is left to finish on its own",
        waited.as_secs()
    )]
    Abandoned {
        /// The listener.
        name: String,
        /// How long its setup had run.
        waited: std::time::Duration,
        /// What abandoned it.
        why: &'static str,
    },
    /// The listener could not start.
    #[error("listener {name:?} failed to start: {source}")]
    StartFailed {
        /// The listener.
        name: String,
        /// Why.
        source: WatchError,
    },
}

/// How a listener whose watcher seems stuck says so (see [`Shared::report_stuck`]).
const STUCK: &str = "its watcher has been busy in one step";

/// Counters and state shared between a listener's slot and its running task.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Set when the listener stops: files whose changes it had not processed.
    handover: Mutex<Vec<(PathBuf, crate::events::EventSet)>>,
    watches: AtomicU64,
    events: AtomicU64,
    jobs_started: AtomicU64,
    jobs_failed: AtomicU64,
    jobs_running: AtomicU64,
    status: Mutex<Option<(State, Option<String>)>>,
    last_failure: Mutex<Option<Failure>>,
    running: Mutex<std::collections::BTreeMap<u64, RunningJob>>,
    next_job: AtomicU64,
    /// Why the last snapshot save failed, until one succeeds.
    save_failure: Mutex<Option<String>>,
    /// The subtrees polled, and why.
    polled: Mutex<Vec<(PathBuf, String)>>,
    /// Overflows, for `listeners` and `status`.
    pub(crate) keeping_up: keeping_up::KeepingUp,
    /// Counted up by the watcher's thread every [`crate::watch::threaded::BEAT`] while it is free.
    beats: AtomicU64,
    /// The files its watcher holds while writers have them open (those of its latest start).
    held: Mutex<crate::watch::HeldFiles>,
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

    /// Whether its watcher holds `file` while a writer has it open.
    fn held(&self, file: &Path) -> Option<crate::watch::HeldFile> {
        self.held.lock().expect("held lock").get(file)
    }

    /// Running, or degraded with the reasons when some roots are missing or the last
    /// snapshot save failed.
    fn set_health(&self, watcher: &crate::watch::Watcher) {
        *self.polled.lock().expect("polled lock") = watcher.polled();
        let mut reasons = watcher.health();
        reasons.extend(self.save_failure.lock().expect("save failure lock").clone());
        let health = if reasons.is_empty() {
            (State::Running, None)
        } else {
            (State::Degraded, Some(reasons.join("; ")))
        };
        *self.status.lock().expect("status lock") = Some(health);
    }

    /// Leaves `files` (changes not processed at a stop) for a listener replacing this one.
    fn hand_over(&self, files: impl IntoIterator<Item = (PathBuf, crate::events::EventSet)>) {
        *self.handover.lock().expect("handover lock") = files.into_iter().collect();
    }

    /// Says its watcher has been busy in one step for `quiet` (warned the first time):
    /// `degraded`, until the watcher is free again ([`Shared::stuck_reported`]).
    fn report_stuck(&self, quiet: std::time::Duration) {
        let said = self.stuck_reported();
        let why = format!(
            "{STUCK} for {} s: is a file system under it not answering?",
            quiet.as_secs()
        );
        if !said {
            tracing::warn!("{why}");
        }
        self.set(State::Degraded, Some(why));
    }

    /// Whether its state says its watcher is stuck ([`Shared::report_stuck`]).
    fn stuck_reported(&self) -> bool {
        self.get().1.is_some_and(|e| e.starts_with(STUCK))
    }

    /// Records how the last snapshot save went (`Err`: shown until a save succeeds).
    fn saved(&self, result: Result<(), String>) {
        let mut failure = self.save_failure.lock().expect("save failure lock");
        match result {
            Ok(()) if failure.take().is_some() => tracing::info!("snapshot saved again"),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("{e}; the last saved snapshot is kept");
                *failure = Some(e);
            }
        }
    }
}

impl crate::job::launch::Observer for Shared {
    fn started(&self, route: &str, file: &Path, pid: &Arc<std::sync::atomic::AtomicU32>) -> u64 {
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let entry = RunningJob {
            route: route.to_owned(),
            file: file.to_owned(),
            pid: pid.clone(),
            started: std::time::Instant::now(),
        };
        self.running.lock().expect("jobs lock").insert(id, entry);
        self.jobs_started.fetch_add(1, Ordering::Relaxed);
        self.jobs_running.fetch_add(1, Ordering::Relaxed);
        id
    }

    fn ended(&self, id: u64, route: &str, file: &Path, failure: Option<String>) {
        self.jobs_running.fetch_sub(1, Ordering::Relaxed);
        self.running.lock().expect("jobs lock").remove(&id);
        let Some(reason) = failure else { return };
        self.jobs_failed.fetch_add(1, Ordering::Relaxed);
        let at_ms = crate::protocol::epoch_ms(std::time::SystemTime::now());
        *self.last_failure.lock().expect("failure lock") = Some(Failure {
            route: route.to_owned(),
            file: file.to_owned(),
            reason,
            at_ms,
        });
    }
}

/// What the daemon's listeners share: what their jobs share, and where snapshots go.
#[derive(Debug, Clone)]
pub(crate) struct JobContext {
    pub jobs: crate::job::launch::Context,
    pub state_dir: PathBuf,
    /// Where the events they receive are published (`execlibctl events`).
    pub feed: Arc<crate::feed::Feed>,
}

/// The daemon's listeners.
pub struct Listeners {
    /// In config order; replaced as a whole by a reload.
    slots: std::sync::RwLock<Vec<Arc<Slot>>>,
    ctx: JobContext,
    /// Cancelled by [`Listeners::stop_all`]: no listener may start after it, and
    /// starts still setting up their watches are abandoned.
    closing: CancellationToken,
    /// Held by whatever changes which listeners run, so a reload never races a stop
    /// of a slot it replaces; a start holds it only to find its slot (a slot a reload
    /// replaced is retired, and refuses to start).
    changing: tokio::sync::Mutex<()>,
    /// What a reload is starting, for `stop` (see [`reload::Reloading`]).
    reloading: std::sync::Mutex<reload::Reloading>,
}

impl Listeners {
    /// Where the listeners say whether they are busy.
    pub fn builds(&self) -> Arc<crate::builds::Builds> {
        self.ctx.jobs.builds.clone()
    }

    /// These listeners, counting their events and runs in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.ctx.jobs.metrics = metrics;
        self
    }

    /// The daemon's metrics, where the listeners count their events and runs.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.ctx.jobs.metrics.clone()
    }

    /// Records their runs in `history` (by default, a history in memory only).
    pub fn with_history(mut self, history: Arc<crate::history::History>) -> Self {
        self.ctx.jobs.history = history;
        self
    }

    /// Where their finished runs are recorded.
    pub fn history(&self) -> &crate::history::History {
        &self.ctx.jobs.history
    }

    /// Where the events they receive are published.
    pub fn feed(&self) -> &Arc<crate::feed::Feed> {
        &self.ctx.feed
    }

    /// Every route's path, in config order.
    pub fn route_paths(&self) -> Vec<PathBuf> {
        let slots = self.slots();
        slots
            .iter()
            .flat_map(|s| s.config.routes.iter().map(|r| r.path.clone()))
            .collect()
    }

    /// Whether a listener has that name.
    pub fn exists(&self, name: &str) -> bool {
        self.slot(name).is_ok()
    }

    /// The listeners of `config`, all stopped; their jobs are recorded in `ledger`,
    /// and whether they are busy told to `builds`.
    pub fn new(
        config: &Config,
        ledger: Arc<crate::ledger::Ledger>,
        builds: Arc<crate::builds::Builds>,
    ) -> Self {
        Listeners {
            slots: config
                .listeners
                .iter()
                .map(|l| Arc::new(Slot::new(l)))
                .collect::<Vec<_>>()
                .into(),
            ctx: JobContext {
                jobs: crate::job::launch::Context {
                    instance: config.instance.clone(),
                    grace: config.daemon.shutdown_grace,
                    ledger,
                    builds,
                    metrics: Arc::default(),
                    history: Default::default(),
                },
                state_dir: config.daemon.state_dir.clone(),
                feed: Default::default(),
            },
            closing: CancellationToken::new(),
            changing: tokio::sync::Mutex::new(()),
            reloading: Default::default(),
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
        // Not held across the starts (one may wait on a file system that does not
        // answer): a reload meanwhile retires the slots it replaces, which then refuse.
        let slots = {
            let _changing = self.changing.lock().await;
            self.slots()
        };
        let starts = slots
            .iter()
            .filter(|s| s.config.autostart)
            .map(|s| s.start(&self.ctx, &self.closing));
        for result in futures::future::join_all(starts).await {
            match result {
                Err(e @ ListenerError::Abandoned { .. }) => tracing::warn!("{e}"),
                Err(e) => error!("{e}"),
                Ok(_) => {}
            }
        }
    }

    /// Abandons every start still setting up its watches; none may start after this
    /// (the daemon is shutting down).
    pub fn abandon_starts(&self) {
        self.closing.cancel();
    }

    /// Starts a listener; `Ok(false)` when it was already running.
    pub async fn start(&self, name: &str) -> Result<bool, ListenerError> {
        // As in `start_autostart`: other requests are not held up by a slow start.
        let slot = {
            let _changing = self.changing.lock().await;
            self.slot(name)?
        };
        slot.start(&self.ctx, &self.closing).await
    }

    /// Stops a listener and its jobs; `Ok(false)` when it was not running. A start
    /// still setting up its watches is abandoned first (it holds what stopping waits
    /// for, and may be stuck on a hung file system).
    pub async fn stop(&self, name: &str) -> Result<bool, ListenerError> {
        let stopping = self.stopping(name);
        let mut abandoned = stopping.abandoned;
        match self.slot(name) {
            Ok(slot) => abandoned |= slot.abandon_start(),
            Err(e) if !stopping.reloading => return Err(e),
            Err(_) => {} // added by the reload: in the registry once it is done
        }
        let _changing = self.changing.lock().await;
        drop(stopping);
        Ok(self.slot(name)?.stop().await || abandoned)
    }

    /// Submits a synthetic `modify` of `path` to listener `name`'s routes; returns how
    /// many routes matched. `path` is absolute, or relative to the config file's
    /// directory (as every path in the config is); a relative path that lies under
    /// none of the listener's routes that way is taken relative to each route's path.
    pub async fn trigger(&self, name: &str, path: &Path, config_dir: &Path) -> Result<usize, ListenerError> {
        explain::check_path(path)?;
        let slot = self.slot(name)?;
        let running = slot.running.lock().await;
        let Some(submit) = running.as_ref().and_then(|r| r.submit.upgrade()) else {
            return Err(ListenerError::NotRunning(name.to_owned()));
        };
        let routes = &slot.config.routes;
        let from_config = config_dir.join(path);
        let config_relative = routes.iter().any(|r| from_config.starts_with(&r.path));
        let mut matched = 0;
        for (index, route) in routes.iter().enumerate() {
            let file = if config_relative {
                from_config.clone()
            } else {
                route.path.join(path)
            };
            if !file.starts_with(&route.path) {
                continue;
            }
            let event = FileEvent {
                path: file,
                kind: crate::events::EventKind::Modify,
            };
            if let Some(sub) = crate::route::submission(index, route, &event).filter(|s| !s.gone_only) {
                let _ = submit.send(crate::scheduler::Input::Submit(sub)).await;
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
        self.closing.cancel();
        let _changing = self.changing.lock().await;
        let slots = self.slots();
        futures::future::join_all(slots.iter().map(|s| s.stop())).await;
    }

    /// A snapshot of every listener, without `links` (which ask the file system).
    pub async fn infos(&self) -> Vec<ListenerInfo> {
        let slots = self.slots();
        let mut infos = Vec::with_capacity(slots.len());
        for slot in slots {
            infos.push(slot.info(self.history()).await);
        }
        infos
    }

    /// [`Listeners::infos`] with each listener's `links`: the route paths reached
    /// through symlinks and where they resolve now. Resolving runs on a blocking
    /// thread, bounded as `explain`'s probes are: when the file system does not answer
    /// in time (a hung mount) the links are left out, and the reply still comes.
    pub async fn infos_with_links(&self) -> Vec<ListenerInfo> {
        let mut infos = self.infos().await;
        let roots: Vec<PathBuf> = infos.iter().flat_map(|i| i.paths.clone()).collect();
        let resolve = move || {
            let links = roots.into_iter().filter_map(|path| {
                let target = crate::paths::resolves_elsewhere(&path)?;
                Some(crate::protocol::replies::Link { path, target })
            });
            links.collect::<Vec<_>>()
        };
        let Some(links) = explain::bounded(explain::FS_TIMEOUT, resolve).await else {
            tracing::warn!(
                "listeners: route paths not resolved within {:?}: links left out",
                explain::FS_TIMEOUT
            );
            return infos;
        };
        for info in &mut infos {
            info.links = links
                .iter()
                .filter(|l| info.paths.contains(&l.path))
                .cloned()
                .collect();
        }
        infos
    }

    /// The names of the listeners setting up their watches now.
    pub fn starting(&self) -> Vec<String> {
        let slots = self.slots();
        let starting = slots.iter().filter(|s| s.shared.get().0 == State::Starting);
        starting.map(|s| s.config.name.clone()).collect()
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
