//! A running listener: reads its watcher, matches each file event against its
//! routes, feeds the matches to its scheduler and launches the jobs it decides.
//! On stop it closes inotify first, then terminates its running jobs.

use super::{Failure, JobContext, RunningJob, Shared, State};
use crate::config::{ListenerConfig, Mode, PostConfig, RouteConfig};
use crate::job::{self, JobSpec};
use crate::scheduler::{self, FrameEnd, Input, Start, Submission, Timing, Work};
use crate::snapshot::{self, Snapshot};
use crate::watch::{FileEvent, Watcher};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

/// How often a `catch_up` listener saves its snapshot while running.
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// What a running listener needs besides its watcher.
pub(super) struct Run {
    pub config: Arc<ListenerConfig>,
    pub ctx: JobContext,
    pub shared: Arc<Shared>,
    /// For `catch_up` listeners: where the snapshot is persisted, and what was last
    /// persisted (the baseline that changes not yet processed are kept at).
    pub catch_up: Option<(PathBuf, Snapshot)>,
    /// Route indexes, earlier stages first.
    pub stage_order: Vec<usize>,
}

impl Run {
    /// Runs the listener until `cancel` fires or its watcher fails. `missed` (catch-up
    /// changes) are submitted before any live event.
    /// `tx`/`rx` are the scheduler's channel; the slot keeps a weak sender (for
    /// `trigger`), so the channel closes when this task drops `tx`.
    pub(super) async fn spawn(
        mut self,
        mut watcher: Watcher,
        missed: Vec<FileEvent>,
        (tx, rx): (mpsc::Sender<Input>, mpsc::Receiver<Input>),
        cancel: CancellationToken,
    ) {
        let jobs_cancel = CancellationToken::new();
        // Posts still run at a stop (for the frames it cancelled too), until the grace
        // is over; they are killed at once if this task is aborted or unwinds.
        let posts_cancel = CancellationToken::new();
        let _jobs_guard = jobs_cancel.clone().drop_guard();
        let _posts_guard = posts_cancel.clone().drop_guard();
        let launcher = Launcher {
            config: self.config.clone(),
            ctx: self.ctx.clone(),
            shared: self.shared.clone(),
            cancel: jobs_cancel.clone(),
            posts_cancel: posts_cancel.clone(),
        };
        let max_jobs = self.config.max_jobs;
        let posts = !self.config.posts.is_empty();
        let scheduler = tokio::spawn(
            scheduler::drive(rx, max_jobs, posts, move |work| launcher.launch(work)).in_current_span(),
        );
        self.dispatch(missed, &tx).await;
        let mut save = tokio::time::interval_at(Instant::now() + SAVE_EVERY, SAVE_EVERY);
        let result = loop {
            tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                _ = save.tick(), if self.catch_up.is_some() => {
                    let unsettled = unsettled(&tx).await;
                    self.save(&watcher, unsettled).await;
                }
                events = watcher.next() => match events {
                    Ok(events) => {
                        self.shared.watches.store(watcher.watch_count() as u64, Ordering::Relaxed);
                        self.shared.set_health(watcher.missing_roots());
                        self.dispatch(events, &tx).await;
                    }
                    Err(e) => break Err(e),
                },
            }
        };
        let unsettled = self.hand_over(&mut watcher, &tx, result.is_ok()).await;
        self.save(&watcher, unsettled).await;
        drop(watcher);
        drop(tx);
        info!("inotify closed: no new events");
        if let Err(e) = result {
            error!("listener failed: {e}");
            self.shared.set(State::Failed, Some(e.to_string()));
        }
        let running = self.shared.jobs_running.load(Ordering::Relaxed);
        if running > 0 {
            info!(jobs = running, "terminating running jobs");
        }
        jobs_cancel.cancel();
        let mut scheduler = scheduler;
        let ended = tokio::select! {
            ended = &mut scheduler => ended,
            _ = tokio::time::sleep(self.ctx.grace), if posts => {
                info!("grace over: terminating post commands");
                posts_cancel.cancel();
                scheduler.await
            }
        };
        if let Err(e) = ended {
            error!("scheduler ended abnormally: {e}");
        }
    }

    /// Matches each event against the routes and submits the matches.
    /// Earlier stages first, so a later stage never becomes due before the earlier
    /// stage's submission for the same change has arrived.
    async fn dispatch(&self, events: Vec<FileEvent>, tx: &mpsc::Sender<Input>) {
        for event in events {
            self.shared.events.fetch_add(1, Ordering::Relaxed);
            for &index in &self.stage_order {
                if let Some(sub) = route_match(index, &self.config.routes[index], &event) {
                    let _ = tx.send(Input::Submit(sub)).await;
                }
            }
        }
    }

    /// At a stop: what a still healthy watcher held is submitted, and the files whose
    /// changes are not processed are left in `shared.handover` (for a listener
    /// replacing this one on reload: their runs are about to be dropped or terminated)
    /// and returned (for the snapshot).
    async fn hand_over(
        &self,
        watcher: &mut Watcher,
        tx: &mpsc::Sender<Input>,
        healthy: bool,
    ) -> HashSet<PathBuf> {
        if healthy {
            match watcher.flush() {
                Ok(events) => self.dispatch(events, tx).await,
                Err(e) => warn!("cannot flush the watcher at stop: {e}"),
            }
        }
        let files = unsettled(tx).await;
        *self.shared.handover.lock().expect("handover lock") = files.iter().cloned().collect();
        files
    }

    /// Persists the snapshot (catch-up listeners only). Files whose changes are not
    /// processed yet (pending, queued or running) keep their last persisted state, so
    /// after a crash or a stop they are found changed again and run.
    async fn save(&mut self, watcher: &Watcher, unsettled: HashSet<PathBuf>) {
        let Some((path, persisted)) = &mut self.catch_up else {
            return;
        };
        let mut baseline = watcher.snapshot();
        for file in unsettled {
            match persisted.get(&file) {
                Some(state) => baseline.insert(file, *state),
                None => baseline.remove(&file),
            };
        }
        let data = snapshot::encode(&baseline);
        *persisted = baseline;
        let path = path.clone();
        let saved = match tokio::task::spawn_blocking(move || snapshot::save(&path, &data)).await {
            Ok(Ok(())) => {
                debug!("snapshot saved");
                Ok(())
            }
            Ok(Err(e)) => Err(format!("cannot save the snapshot: {e}")),
            Err(e) => Err(format!("cannot save the snapshot: the save task failed: {e}")),
        };
        self.shared.saved(saved);
        self.shared.set_health(watcher.missing_roots());
    }
}

/// The files with changes not processed yet, from the scheduler (asked in order, after
/// every submission sent before).
async fn unsettled(tx: &mpsc::Sender<Input>) -> HashSet<PathBuf> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    match tx.send(Input::Unsettled(reply)).await {
        Ok(()) => answer.await.unwrap_or_default(),
        Err(_) => HashSet::new(),
    }
}

/// The submission for `route` if the event is under its path, matches its globs
/// and is of a kind it wants.
pub(super) fn route_match(index: usize, route: &RouteConfig, event: &FileEvent) -> Option<Submission> {
    let rel = event.path.strip_prefix(&route.path).ok()?;
    let wanted =
        !rel.as_os_str().is_empty() && route.events.contains(event.kind) && route.matcher.matches(rel);
    let key_path = match route.mode {
        Mode::Each => event.path.clone(),
        Mode::Batch => PathBuf::new(), // one key for the whole route
    };
    wanted.then(|| Submission {
        key: (index, key_path),
        file: event.path.clone(),
        kind: event.kind,
        timing: Timing {
            debounce: route.debounce,
            delay: route.delay,
        },
        order: route.order,
    })
}

/// Between SIGTERM and SIGKILL for post commands still running when a stop's grace ends.
const POST_KILL_GRACE: Duration = Duration::from_secs(1);

/// Above this, `EXECLIB_PATHS` is left out (stdin always has every path).
const PATHS_ENV_LIMIT: usize = 64 * 1024;

/// `EXECLIB_COUNT`, and `EXECLIB_PATHS` (newline-separated) or `EXECLIB_PATHS_TRUNCATED=1`.
fn batch_env(env: &mut BTreeMap<String, OsString>, files: &[PathBuf]) {
    env.insert("EXECLIB_COUNT".into(), files.len().to_string().into());
    let mut paths = OsString::new();
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            paths.push("\n");
        }
        paths.push(file.as_os_str());
    }
    if paths.len() <= PATHS_ENV_LIMIT {
        env.insert("EXECLIB_PATHS".into(), paths);
    } else {
        env.insert("EXECLIB_PATHS_TRUNCATED".into(), "1".into());
    }
}

struct Launcher {
    config: Arc<ListenerConfig>,
    ctx: JobContext,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    posts_cancel: CancellationToken,
}

/// A launched job's future: yields whether it succeeded.
type JobFuture = std::pin::Pin<Box<dyn Future<Output = bool> + Send>>;

impl Launcher {
    fn launch(&self, work: Work) -> JobFuture {
        match work {
            Work::Run(start) => Box::pin(self.run(start)),
            Work::Post(frame) => Box::pin(self.post(frame)),
        }
    }

    /// The variables every job of the listener gets.
    fn base_env(&self, env: &BTreeMap<String, String>, route: &str) -> BTreeMap<String, OsString> {
        let mut out: BTreeMap<String, OsString> = env.iter().map(|(k, v)| (k.clone(), v.into())).collect();
        for (key, value) in [
            ("EXECLIB_INSTANCE", self.ctx.instance.as_str()),
            ("EXECLIB_LISTENER", self.config.name.as_str()),
            ("EXECLIB_ROUTE", route),
        ] {
            out.insert(key.to_owned(), value.into());
        }
        out
    }

    /// The post commands for ended frames, one after the other. At a stop they run
    /// until the grace is over, then get SIGTERM and, a second later, SIGKILL.
    fn post(&self, frame: FrameEnd) -> impl Future<Output = bool> + Send + use<> {
        let kill_grace = self.ctx.grace.min(POST_KILL_GRACE);
        let jobs: Vec<_> = self
            .config
            .posts
            .iter()
            .map(|post| {
                let spec = self.post_spec(post, &frame);
                let file = frame.files.first().cloned().unwrap_or_default();
                let span = info_span!(
                    "post",
                    route = %post.name,
                    frame_status = frame.status.as_str(),
                    files = frame.files.len(),
                    job_pid = tracing::field::Empty,
                );
                let cancel = self.posts_cancel.clone();
                tracked(
                    self.shared.clone(),
                    post.name.clone(),
                    file,
                    spec,
                    kill_grace,
                    cancel,
                )
                .instrument(span)
            })
            .collect();
        async move {
            let mut ok = true;
            for job in jobs {
                ok &= job.await;
            }
            ok
        }
    }

    fn post_spec(&self, post: &PostConfig, frame: &FrameEnd) -> JobSpec {
        let mut env = self.base_env(&post.env, &post.name);
        env.insert("EXECLIB_FRAME_STATUS".into(), frame.status.as_str().into());
        if let [file] = frame.files.as_slice() {
            env.insert("EXECLIB_PATH".into(), file.as_os_str().to_owned());
        }
        batch_env(&mut env, &frame.files);
        JobSpec {
            command: post.command.clone(),
            workdir: post.workdir.clone(),
            env,
            timeout: post.timeout,
            kill_grace: post.kill_grace,
            pid: Default::default(),
            stdin: Some(path_lines(&frame.files)),
            ledger: Some(self.ctx.ledger.clone()),
        }
    }

    fn run(&self, start: Start) -> impl Future<Output = bool> + Send + use<> {
        let route = &self.config.routes[start.key.0];
        let mut env = self.base_env(&route.env, &route.name);
        env.insert("EXECLIB_ENDPOINT".into(), route.path.as_os_str().to_owned());
        env.insert("EXECLIB_EVENT".into(), start.kinds.to_string().into());
        let (path, stdin) = match route.mode {
            Mode::Each => {
                let path = start.files.into_iter().next().unwrap_or(start.key.1);
                let name = path
                    .strip_prefix(&route.path)
                    .unwrap_or(&path)
                    .as_os_str()
                    .to_owned();
                env.insert("EXECLIB_PATH".into(), path.as_os_str().to_owned());
                env.insert("EXECLIB_NAME".into(), name);
                (path, None)
            }
            Mode::Batch => {
                batch_env(&mut env, &start.files);
                (route.path.clone(), Some(path_lines(&start.files)))
            }
        };
        let spec = JobSpec {
            command: route.command.clone(),
            workdir: route.workdir.clone(),
            env,
            timeout: route.timeout,
            kill_grace: route.kill_grace,
            pid: Default::default(),
            stdin,
            ledger: Some(self.ctx.ledger.clone()),
        };
        let span = info_span!(
            "job",
            route = %route.name,
            event_path = %crate::names::escaped(&path),
            event = %start.kinds,
            job_pid = tracing::field::Empty,
        );
        let (shared, grace) = (self.shared.clone(), self.ctx.grace);
        tracked(shared, route.name.clone(), path, spec, grace, self.cancel.clone()).instrument(span)
    }
}

/// Runs a job, listed in `jobs` while it runs and counted; a failure is recorded as
/// the listener's last failure. Yields whether it succeeded.
async fn tracked(
    shared: Arc<Shared>,
    route: String,
    path: PathBuf,
    spec: JobSpec,
    grace: Duration,
    cancel: CancellationToken,
) -> bool {
    let id = shared.next_job.fetch_add(1, Ordering::Relaxed);
    let entry = RunningJob {
        route: route.clone(),
        file: path.clone(),
        pid: spec.pid.clone(),
        started: std::time::Instant::now(),
    };
    shared.running.lock().expect("jobs lock").insert(id, entry);
    shared.jobs_started.fetch_add(1, Ordering::Relaxed);
    shared.jobs_running.fetch_add(1, Ordering::Relaxed);
    let outcome = job::run(&spec, grace, &cancel).await;
    shared.jobs_running.fetch_sub(1, Ordering::Relaxed);
    shared.running.lock().expect("jobs lock").remove(&id);
    let Some(reason) = outcome.failure() else {
        return true;
    };
    shared.jobs_failed.fetch_add(1, Ordering::Relaxed);
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    *shared.last_failure.lock().expect("failure lock") = Some(Failure {
        route,
        file: path,
        reason,
        at_ms,
    });
    false
}

/// The paths, one per line, for a job's stdin.
fn path_lines(files: &[PathBuf]) -> Vec<u8> {
    let mut lines = Vec::new();
    for file in files {
        lines.extend_from_slice(file.as_os_str().as_encoded_bytes());
        lines.push(b'\n');
    }
    lines
}
