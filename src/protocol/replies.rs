//! The replies' bodies: what each request answers with on success, as serde types
//! the daemon writes and `execlibctl` reads.

use super::wire;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `listeners`: every listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listeners {
    /// In config order.
    pub listeners: Vec<ListenerInfo>,
    /// The watches all of them hold, against the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watches: Option<Watches>,
}

/// A listener's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerState {
    /// Watching and running jobs.
    Running,
    /// Not started, or stopped on request.
    Stopped,
    /// Setting up its watches (walking its tree); `error` says for how long once that
    /// is slow (a slow or hung file system under it).
    Starting,
    /// Running, but some routes cannot watch or its snapshot cannot be saved.
    Degraded,
    /// Could not start or broke; `error` says why.
    Failed,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerInfo {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: ListenerState,
    /// The directories its routes watch.
    #[serde(with = "wire::list")]
    pub paths: Vec<PathBuf>,
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
    /// Files whose changes are held while a writer has them open: they are queued at
    /// the writer's close, or `max_hold_ms` after their first change.
    #[serde(default)]
    pub files_open: u64,
    /// The most recent failed job.
    #[serde(default)]
    pub last_failure: Option<Failure>,
    /// Why it is not running (or degraded), when it is not by choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The paths of `paths` reached through symlinks, and where they resolve now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// The directories polled (where inotify cannot see), and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub polled: Vec<PolledPath>,
    /// inotify queue overflows since the daemon started (events the kernel dropped;
    /// each is followed by a rescan).
    #[serde(default)]
    pub overflows: u64,
    /// When the last overflow was read, milliseconds since the Unix epoch.
    #[serde(default)]
    pub last_overflow_ms: Option<u64>,
    /// How its last run ended.
    #[serde(default)]
    pub last_run: Option<LastRun>,
}

/// A directory polled by a listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolledPath {
    /// The directory (under a route path).
    #[serde(with = "wire")]
    pub path: PathBuf,
    /// Why it is polled.
    pub reason: String,
}

/// A watched path reached through a symlink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// The path as configured.
    #[serde(with = "wire")]
    pub path: PathBuf,
    /// Where it resolves.
    #[serde(with = "wire")]
    pub target: PathBuf,
}

/// A failed job, as `listeners` reports the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The route.
    pub route: String,
    /// The file (absolute).
    #[serde(with = "wire")]
    pub file: PathBuf,
    /// Why it failed ("exit code 2", "timed out", ...).
    pub reason: String,
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// `start` and `stop`: whether the listener's state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// `false`: it was already running (start) or stopped (stop).
    pub changed: bool,
}

/// `status`: the daemon's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The instance name.
    pub instance: String,
    /// The daemon's version.
    pub version: String,
    /// The daemon's pid.
    pub pid: u32,
    /// Time since start.
    pub uptime_ms: u64,
    /// Listener counts.
    pub listeners: ListenerCounts,
    /// The HTTP server, when there is one.
    pub server: Option<ServerInfo>,
    /// The systemd unit it runs in (from its cgroup), when it runs under systemd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// How jobs and their descendants are contained, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containment: Option<String>,
    /// How the last build ended (a run of a listener that builds the site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_build: Option<BuildResult>,
    /// The watches the listeners hold, against the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watches: Option<Watches>,
    /// Directories polled, all listeners together.
    #[serde(default)]
    pub polled_directories: u64,
    /// inotify queue overflows, all listeners together.
    #[serde(default)]
    pub overflows: u64,
    /// When the last one was read, milliseconds since the Unix epoch.
    #[serde(default)]
    pub last_overflow_ms: Option<u64>,
    /// Files whose changes wait for a run, all listeners together.
    #[serde(default)]
    pub jobs_queued: u64,
    /// Files whose changes are held while a writer has them open, all listeners together.
    #[serde(default)]
    pub files_open: u64,
    /// How each listener's last run ended, by listener (those that ran).
    #[serde(default)]
    pub last_runs: std::collections::BTreeMap<String, LastRun>,
    /// Where `/metrics` is served (`[metrics] listen`, its port once bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// How a build's run ended: what LiveReload shows in the browser and `status` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildResult {
    /// Whether it succeeded.
    pub ok: bool,
    /// The listener.
    pub listener: String,
    /// The route.
    pub route: String,
    /// The file (absolute; the route's path for a batch).
    #[serde(with = "wire")]
    pub file: PathBuf,
    /// Why it failed ("exit code 2", "killed by signal 9", "timed out", …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last lines of its output, when it failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// How many listeners run, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerCounts {
    /// Running (or degraded) listeners.
    pub running: usize,
    /// All listeners.
    pub total: usize,
}

/// The HTTP server, in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The address it serves.
    pub listen: String,
    /// Whether the socket came from systemd (`LISTEN_FDS`).
    pub socket_activated: bool,
    /// Whether the LiveReload endpoint is on.
    pub livereload: bool,
    /// LiveReload clients connected now.
    pub livereload_clients: usize,
    /// Small files kept in memory.
    pub cached_files: usize,
}

/// `jobs`: the jobs not finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Jobs {
    /// Running ones first, then queued ones.
    pub jobs: Vec<JobView>,
}

/// A job that has not finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The listener.
    pub listener: String,
    /// The route.
    pub route: String,
    /// The file (absolute); for a batch route's run, the route's path.
    #[serde(with = "wire")]
    pub file: PathBuf,
    /// `running`, `waiting` (due, for a free slot), `pending` (debounce, delay, or
    /// the file's current run) or `held` (due, for a version-control operation to end).
    pub state: String,
    /// The job's pid, once running.
    pub pid: Option<u32>,
    /// How long it has been running.
    pub running_ms: Option<u64>,
}

/// `trigger`: how many routes matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triggered {
    /// Routes the synthetic change was submitted to.
    pub matched: usize,
}

/// `reload`: what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The listeners, by what happened to them.
    pub listeners: Applied,
    /// The HTTP server: `unchanged`, `started`, `restarted`, `stopped`, or
    /// `failed: REASON` (the new `[server]` could not start).
    pub server: String,
    /// Sections that changed but apply only at the next start (`[daemon]`, `[control]`, `[metrics]`).
    pub restart_needed: Vec<String>,
}

/// What a reload did to the listeners, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Same definition: left running (or stopped) as they were.
    pub unchanged: Vec<String>,
    /// Changed definition: replaced (and restarted if they were up).
    pub changed: Vec<String>,
    /// New in the config.
    pub added: Vec<String>,
    /// Gone from the config: stopped.
    pub removed: Vec<String>,
}

/// A success with nothing more to say (`shutdown`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// A failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    /// What went wrong.
    pub error: super::ErrorBody,
}

/// How a listener's last run ended, in `listeners` and `status`: the newest run of
/// the listener in the history (so it survives a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    /// The run's id (`execlibctl history show ID`).
    #[serde(default)]
    pub id: u64,
    /// The route (or post command).
    pub route: String,
    /// The file (absolute; a batch's first; empty for a post command run for no file).
    #[serde(with = "wire")]
    pub file: PathBuf,
    /// `succeeded`, `failed`, `timed_out` or `cancelled` (ended by a stop): the
    /// metrics' `outcome` label ([`super::observe::RunOutcome::label`]).
    pub outcome: String,
    /// Why it failed ("exit code 2", "killed by signal 9", …), when it `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long it ran.
    pub duration_ms: u64,
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl From<&super::observe::RunRecord> for LastRun {
    fn from(r: &super::observe::RunRecord) -> Self {
        let label = r.outcome.label();
        LastRun {
            id: r.id,
            route: r.route.clone(),
            file: r.files.first().cloned().unwrap_or_default(),
            outcome: label.to_owned(),
            reason: (label == "failed").then(|| r.outcome.describe()),
            duration_ms: r.duration_ms,
            at_ms: r.started_ms.saturating_add(r.duration_ms),
        }
    }
}

/// Directories watched with inotify against the kernel's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watches {
    /// Watches the daemon's listeners hold now.
    pub in_use: u64,
    /// `fs.inotify.max_user_watches` (for all of the user's processes); `null` when
    /// unreadable (/proc/sys hidden, as under `ProcSubset=pid`).
    pub limit: Option<u64>,
}

/// `metrics`: the Prometheus (OpenMetrics) text exposition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// The exposition, `# EOF` line included.
    pub text: String,
}
