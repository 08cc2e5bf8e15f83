//! From scheduled work to jobs: for a route's run or a frame's post commands, the
//! command, the working directory, the `EXECLIB_*` environment and stdin, then
//! [`super::run`] in its own process group, with the listener told of each start
//! and end through an [`Observer`].

use super::JobSpec;
use crate::config::{ListenerConfig, Mode, PostConfig};
use crate::protocol::observe::RunOutcome;
use crate::scheduler::{FrameEnd, Start, Work};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

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

/// What every job of the daemon shares.
#[derive(Debug, Clone)]
pub struct Context {
    /// The instance name (`EXECLIB_INSTANCE`).
    pub instance: String,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub grace: Duration,
    /// Where running jobs are recorded.
    pub ledger: Arc<crate::ledger::Ledger>,
    /// Told whether listeners are busy and how builds end (for LiveReload).
    pub builds: Arc<crate::builds::Builds>,
    /// The daemon's metrics: runs and events are counted there.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where finished runs are recorded.
    pub history: Arc<crate::history::History>,
}

/// Hears about the jobs a [`Launcher`] runs: the listener keeps its counters, its
/// list of running jobs and its last failure this way.
pub trait Observer: Send + Sync {
    /// A job of `route` for `file` is starting; its pid is published in `pid` once it
    /// runs. Returns an id for [`Observer::ended`].
    fn started(&self, route: &str, file: &Path, pid: &Arc<AtomicU32>) -> u64;
    /// Job `id` ended; `failure` says why when it failed.
    fn ended(&self, id: u64, route: &str, file: &Path, failure: Option<String>);
    /// A job of `route` for `file` ended with `outcome` after `took`; `cancelled`: ended
    /// by its listener's stop. Called before [`Observer::ended`]; for metrics and status.
    fn outcome(
        &self,
        _route: &str,
        _file: &Path,
        _outcome: &super::Outcome,
        _took: Duration,
        _cancelled: bool,
    ) {
    }
}

/// Turns a listener's scheduled work into jobs: the command, the `EXECLIB_*`
/// environment, the process group (see [`super::run`]).
pub struct Launcher {
    /// The listener's routes and posts.
    pub config: Arc<ListenerConfig>,
    /// What every job shares.
    pub ctx: Context,
    /// Told of each job's start and end.
    pub observer: Arc<dyn Observer>,
    /// Fired when the listener stops: running route jobs are terminated.
    pub cancel: CancellationToken,
    /// Fired when a stop's grace is over: post commands are terminated.
    pub posts_cancel: CancellationToken,
}

/// A launched job's future: yields whether it succeeded.
pub type JobFuture = std::pin::Pin<Box<dyn Future<Output = bool> + Send>>;

impl Launcher {
    /// The job for `work`, as a future that yields whether it succeeded.
    pub fn launch(&self, work: Work) -> JobFuture {
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
                let run = RunInfo {
                    listener: self.config.name.clone(),
                    route: post.name.clone(),
                    stage: None,
                    files: kept(&frame.files),
                    count: frame.files.len(),
                };
                tracked(
                    (self.observer.clone(), self.ctx.history.clone()),
                    run,
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
                ok &= job.await.0.is_none();
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
            limits: post.limits,
        }
    }

    fn run(&self, start: Start) -> impl Future<Output = bool> + Send + use<> {
        let route = &self.config.routes[start.key.0];
        let mut env = self.base_env(&route.env, &route.name);
        env.insert("EXECLIB_ENDPOINT".into(), route.path.as_os_str().to_owned());
        env.insert("EXECLIB_EVENT".into(), start.kinds.to_string().into());
        let run = RunInfo {
            listener: self.config.name.clone(),
            route: route.name.clone(),
            stage: Some(route.order.stage),
            files: kept(&start.files),
            count: start.files.len(),
        };
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
            limits: route.limits,
        };
        let span = info_span!(
            "job",
            route = %route.name,
            event_path = %crate::names::escaped(&path),
            event = %start.kinds,
            job_pid = tracing::field::Empty,
        );
        let (observer, grace) = (self.observer.clone(), self.ctx.grace);
        // A build's output goes to browsers, when it fails.
        let build = self.ctx.builds.counts(&self.config);
        let (builds, listener, name, file, cancel) = (
            self.ctx.builds.clone(),
            self.config.clone(),
            route.name.clone(),
            path.clone(),
            self.cancel.clone(),
        );
        let job = tracked(
            (observer, self.ctx.history.clone()),
            run,
            path,
            spec,
            grace,
            self.cancel.clone(),
        );
        async move {
            let (failure, output) = job.await;
            let ok = failure.is_none();
            // Ended by a stop (SIGTERM from us): no build result.
            if build && !cancel.is_cancelled() {
                builds.finished(&listener, &name, &file, failure, output);
            }
            ok
        }
        .instrument(span)
    }
}

/// What the history records of a run besides how it ended.
struct RunInfo {
    listener: String,
    route: String,
    stage: Option<u32>,
    /// The first files (a batch's may be thousands: not copied whole).
    files: Vec<PathBuf>,
    count: usize,
}

/// The files of a run the history keeps.
fn kept(files: &[PathBuf]) -> Vec<PathBuf> {
    files[..files.len().min(crate::history::FILES_KEPT)].to_vec()
}

/// Runs a job, telling the observer of its start and end and recording it in the
/// history once it has ended. Yields why it failed (`None`: it succeeded) and the
/// last lines of its output.
async fn tracked(
    (observer, history): (Arc<dyn Observer>, Arc<crate::history::History>),
    run: RunInfo,
    path: PathBuf,
    spec: JobSpec,
    grace: Duration,
    cancel: CancellationToken,
) -> (Option<String>, Vec<String>) {
    let id = observer.started(&run.route, &path, &spec.pid);
    let (started_ms, started) = (crate::history::now_ms(), std::time::Instant::now());
    let ended = super::run(&spec, grace, &cancel).await;
    observer.outcome(
        &run.route,
        &path,
        &ended.outcome,
        started.elapsed(),
        cancel.is_cancelled(),
    );
    let failure = ended.outcome.failure();
    observer.ended(id, &run.route, &path, failure.clone());
    let outcome = match ended.outcome {
        super::Outcome::Exited(0) => RunOutcome::Exited { code: 0 },
        _ if cancel.is_cancelled() => RunOutcome::Cancelled,
        super::Outcome::Exited(code) => RunOutcome::Exited { code },
        super::Outcome::Signaled(signal) => RunOutcome::Signaled { signal },
        super::Outcome::TimedOut => RunOutcome::Timeout,
        super::Outcome::OverMemory(reason) => RunOutcome::OverMemory { reason },
        super::Outcome::NotStarted(reason) => RunOutcome::NotStarted { reason },
    };
    let (files, count) = match run.files.is_empty() {
        true => (vec![path], 1),
        false => (run.files, run.count),
    };
    history.record(crate::history::Finished {
        listener: run.listener,
        route: run.route,
        stage: run.stage,
        files,
        count,
        started_ms,
        duration_ms: started.elapsed().as_millis() as u64,
        outcome,
        usage: ended.usage,
        output: ended.output.clone(),
    });
    (failure, ended.output)
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
