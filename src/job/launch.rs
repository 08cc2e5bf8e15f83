//! From scheduled work to jobs: for a route's run or a frame's post commands, the
//! command, the working directory, the `EXECLIB_*` environment and stdin, then
//! [`super::run`] in its own process group, with the listener told of each start
//! and end through an [`Observer`].

use super::JobSpec;
use super::Outcome;
use crate::config::{List, ListenerConfig, Mode, PostConfig};
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

/// Sets `EXECLIB_COUNT` (`files`'s length) and `EXECLIB_PATHS` (their
/// [`path_lines`] without the last newline) or `EXECLIB_PATHS_TRUNCATED=1`;
/// returns the list for stdin, as `list` says.
fn batch_env(env: &mut BTreeMap<String, OsString>, files: &[PathBuf], list: List) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    env.insert("EXECLIB_COUNT".into(), files.len().to_string().into());
    let lines = path_lines(files, list);
    let paths = &lines[..lines.len().saturating_sub(1)];
    if paths.len() <= PATHS_ENV_LIMIT {
        env.insert(
            "EXECLIB_PATHS".into(),
            std::ffi::OsStr::from_bytes(paths).to_owned(),
        );
    } else {
        env.insert("EXECLIB_PATHS_TRUNCATED".into(), "1".into());
    }
    match list {
        List::Lines => lines,
        List::Nul => nul_list(files),
    }
}

/// Each path as it is, ended by a NUL byte: no path can hold one.
fn nul_list(files: &[PathBuf]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut list = Vec::with_capacity(files.iter().map(|f| f.as_os_str().len() + 1).sum());
    for file in files {
        list.extend_from_slice(file.as_os_str().as_bytes());
        list.push(0);
    }
    list
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
    /// A job of `route` for `file` ended with `outcome` after `took`. Called before
    /// [`Observer::ended`]; for metrics.
    fn outcome(&self, _route: &str, _file: &Path, _outcome: &super::Outcome, _took: Duration) {}
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

    /// What the history records of a run of `route`, without files.
    fn run_info(&self, route: &str, stage: Option<u32>) -> RunInfo {
        RunInfo {
            listener: self.config.name.clone(),
            route: route.to_owned(),
            stage,
            files: Vec::new(),
            count: 0,
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
                    files: kept(&frame.files),
                    count: frame.files.len(),
                    ..self.run_info(&post.name, None)
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
                ok &= job.await.0.ok();
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
        let lines = batch_env(&mut env, &frame.files, post.list);
        JobSpec {
            command: post.command.clone(),
            workdir: post.workdir.clone(),
            env,
            timeout: post.timeout,
            kill_grace: post.kill_grace,
            pid: Default::default(),
            stdin: Some(lines),
            ledger: Some(self.ctx.ledger.clone()),
            limits: post.limits,
        }
    }

    fn run(&self, start: Start) -> impl Future<Output = bool> + Send + use<> {
        let route = &self.config.routes[start.key.0];
        let mut env = self.base_env(&route.env, &route.name);
        env.insert("EXECLIB_ENDPOINT".into(), route.path.as_os_str().to_owned());
        env.insert("EXECLIB_EVENT".into(), start.kinds.to_string().into());
        // A run is for at least its key's file.
        let run = match start.files.is_empty() {
            true => RunInfo {
                files: vec![start.key.1.clone()],
                count: 1,
                ..self.run_info(&route.name, Some(route.order.stage))
            },
            false => RunInfo {
                files: kept(&start.files),
                count: start.files.len(),
                ..self.run_info(&route.name, Some(route.order.stage))
            },
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
                let lines = batch_env(&mut env, &start.files, route.list);
                (route.path.clone(), Some(lines))
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
        let (builds, listener, name, file) = (
            self.ctx.builds.clone(),
            self.config.clone(),
            route.name.clone(),
            path.clone(),
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
            let (outcome, output) = job.await;
            let ok = outcome.ok();
            // Ended by a stop (SIGTERM from us): no build result.
            if build && outcome != Outcome::Cancelled {
                builds.finished(&listener, &name, &file, outcome.failure(), output);
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
/// history once it has ended. Yields how it ended and the last lines of its output.
async fn tracked(
    (observer, history): (Arc<dyn Observer>, Arc<crate::history::History>),
    run: RunInfo,
    path: PathBuf,
    spec: JobSpec,
    grace: Duration,
    cancel: CancellationToken,
) -> (Outcome, Vec<String>) {
    let id = observer.started(&run.route, &path, &spec.pid);
    let started_ms = crate::protocol::epoch_ms(std::time::SystemTime::now());
    let started = std::time::Instant::now();
    let ending = Ending {
        observer: &*observer,
        id,
        route: &run.route,
        path: &path,
        started,
    };
    let ended = super::run(&spec, grace, &cancel).await;
    let took = started.elapsed();
    std::mem::forget(ending);
    observer.outcome(&run.route, &path, &ended.outcome, took);
    observer.ended(id, &run.route, &path, ended.outcome.failure());
    history.record(crate::history::Finished {
        listener: run.listener,
        route: run.route,
        stage: run.stage,
        files: run.files,
        count: run.count,
        started_ms,
        duration_ms: took.as_millis() as u64,
        outcome: ended.outcome.clone(),
        usage: ended.usage,
        output: ended.output.clone(),
    });
    (ended.outcome, ended.output)
}

/// Tells the observer a job ended when its supervision ends without saying so (a
/// panic, or the runtime's end), so the listener does not list it as running forever.
struct Ending<'a> {
    observer: &'a dyn Observer,
    id: u64,
    route: &'a str,
    path: &'a Path,
    started: std::time::Instant,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let why = match std::thread::panicking() {
            true => "the daemon's supervision of the job panicked (see the log)",
            false => "the daemon stopped supervising the job before it ended",
        };
        // Counted as a failed run, so the metrics' runs started and finished still agree.
        let outcome = super::Outcome::NotStarted {
            reason: why.to_owned(),
        };
        let took = self.started.elapsed();
        self.observer.outcome(self.route, self.path, &outcome, took);
        self.observer
            .ended(self.id, self.route, self.path, Some(why.to_owned()));
    }
}

/// The paths, one per line, for a job's stdin: each as [`crate::names::list_line`]
/// writes it (quoted when its name holds a line break, so no name adds a line). One
/// warning per list says how many were quoted, and names the first; with
/// `List::Nul` stdin has them as they are, and only `EXECLIB_PATHS` is quoted.
fn path_lines(files: &[PathBuf], list: List) -> Vec<u8> {
    let mut lines = Vec::new();
    let mut quoted: Option<(&PathBuf, usize)> = None;
    for file in files {
        let line = crate::names::list_line(file.as_os_str());
        if matches!(line, std::borrow::Cow::Owned(_)) {
            quoted.get_or_insert((file, 0)).1 += 1;
        }
        lines.extend_from_slice(&line);
        lines.push(b'\n');
    }
    if let Some((first, count)) = quoted {
        let quoted_in = match list {
            List::Lines => "they are listed quoted",
            List::Nul => "they are quoted in EXECLIB_PATHS (stdin has them as they are)",
        };
        tracing::warn!(
            path = %crate::names::escaped(first),
            quoted = count,
            "paths in a batch's list hold a line break: {quoted_in}, as git quotes paths"
        );
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command;
    use std::panic::AssertUnwindSafe;

    struct Quiet;

    impl Observer for Quiet {
        fn started(&self, _: &str, _: &Path, _: &Arc<AtomicU32>) -> u64 {
            0
        }
        fn ended(&self, _: u64, _: &str, _: &Path, _: Option<String>) {}
    }

    fn spec(shell: &str) -> JobSpec {
        crate::job::tests::test_spec(Command::Shell(shell.into()))
    }

    fn info(files: Vec<PathBuf>) -> RunInfo {
        RunInfo {
            listener: "docs".into(),
            route: "pages".into(),
            stage: None,
            count: files.len(),
            files,
        }
    }

    /// Runs `shell` tracked; `stop` fires once `when` says so of its main process's pid.
    async fn stopped_when(
        shell: &str,
        when: fn(u32) -> bool,
    ) -> (Outcome, crate::protocol::observe::RunRecord) {
        let history = Arc::new(crate::history::History::default());
        let (spec, stop) = (spec(shell), CancellationToken::new());
        let pid = spec.pid.clone();
        let job = tokio::spawn(tracked(
            (Arc::new(Quiet), history.clone()),
            info(vec!["/s/a".into()]),
            "/s/a".into(),
            spec,
            Duration::from_secs(5),
            stop.clone(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let p = pid.load(std::sync::atomic::Ordering::Relaxed);
            if p != 0 && when(p) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the job never got there");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        let (outcome, _) = job.await.unwrap();
        (outcome, history.newest("docs").map(|r| (*r).clone()).unwrap())
    }

    #[tokio::test]
    async fn a_job_that_exited_on_its_own_before_a_stop_is_recorded_as_exited_not_cancelled() {
        // The main process exits 3 and is reaped (gone from /proc) while a stray that
        // ignores SIGTERM holds its output open: the output drain (500 ms) is under
        // way when the stop comes.
        let shell = "(trap '' TERM; exec sleep 5) & exit 3";
        let gone = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists();
        let (outcome, record) = stopped_when(shell, gone).await;
        assert_eq!(outcome, Outcome::Exited { code: 3 });
        assert_eq!(record.outcome, Outcome::Exited { code: 3 });
        assert_eq!(record.outcome.label(), "failed", "the metrics say so too");
        // And one the stop ended is cancelled.
        let (outcome, record) = stopped_when("exec sleep 30", |_| true).await;
        assert_eq!(
            (outcome, record.outcome),
            (Outcome::Cancelled, Outcome::Cancelled)
        );
    }

    #[test]
    fn regression_a_job_whose_supervision_panics_is_not_listed_as_running_forever() {
        struct Ends(std::sync::Mutex<Vec<(u64, Option<String>)>>);
        impl Observer for Ends {
            fn started(&self, _: &str, _: &Path, _: &Arc<AtomicU32>) -> u64 {
                7
            }
            fn ended(&self, id: u64, _: &str, _: &Path, failure: Option<String>) {
                self.0.lock().unwrap().push((id, failure));
            }
        }
        let observer = Ends(std::sync::Mutex::new(Vec::new()));
        let path = PathBuf::from("/s/a");
        let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _ending = Ending {
                observer: &observer,
                id: 7,
                route: "pages",
                path: &path,
                started: std::time::Instant::now(),
            };
            panic!("a bug");
        }));
        assert!(panicked.is_err());
        let ends = observer.0.lock().unwrap();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].0, 7);
        assert!(ends[0].1.as_deref().unwrap().contains("panicked"), "{ends:?}");
    }

    #[tokio::test]
    async fn a_post_command_for_no_file_records_no_files() {
        let history = Arc::new(crate::history::History::default());
        let (outcome, _) = tracked(
            (Arc::new(Quiet), history.clone()),
            info(Vec::new()),
            PathBuf::new(),
            spec("exit 0"),
            Duration::from_secs(1),
            CancellationToken::new(),
        )
        .await;
        assert!(outcome.ok());
        let record = history.newest("docs").unwrap();
        assert_eq!((record.files.len(), record.count), (0, 0), "{record:?}");
    }
}
