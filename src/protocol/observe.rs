//! The requests and replies that look back and in: `history` (finished runs),
//! `explain` (whether a change to a path would run each route, and why not) and
//! `events` (what the listeners receive, as a list or a stream). Kept apart from
//! [`super::replies`] because `events --follow` is the one reply of many lines.

use super::wire;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

fn is_false(b: &bool) -> bool {
    !*b
}

/// `history`'s query, also `execlibctl history`'s arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HistoryQuery {
    /// Only this listener's runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// Only this route's (or post command's) runs.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Only runs that did not succeed.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub failed: bool,
    /// Only runs for this file (any bytes). execlibctl makes a relative one absolute
    /// against its current directory; in a raw request it is relative to the config's
    /// directory or a route's path.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "wire::option")]
    pub file: Option<PathBuf>,
    /// At most N runs, newest first (default 20).
    #[arg(short = 'n', value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// One run by its id, with its output (`execlibctl history show ID`).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// `execlibctl history show ID` (the client sends it as `id`).
    #[command(subcommand)]
    #[serde(skip)]
    pub show: Option<HistoryShow>,
}

/// `execlibctl history`'s subcommand.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum HistoryShow {
    /// Print one run with the last lines of its output.
    Show {
        /// The run's id (the first column of `execlibctl history`).
        id: u64,
    },
}

/// How many runs `history` lists when `n` is not given.
pub const DEFAULT_HISTORY_LIST: usize = 20;

/// `history`: the runs that matched, newest first (without their output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Newest first.
    pub runs: Vec<RunRecord>,
}

/// `history` with `id`: that run, with its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRun {
    /// The run.
    pub run: RunRecord,
}

/// A finished run, as the history keeps it (and persists it, one JSON line each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Unique in this state directory, increasing.
    pub id: u64,
    /// The listener.
    pub listener: String,
    /// The route, or the post command.
    pub route: String,
    /// The route's stage; `null` for a post command.
    pub stage: Option<u32>,
    /// The files it ran for (the first few of a batch; `count` has them all).
    #[serde(with = "wire::list")]
    pub files: Vec<PathBuf>,
    /// How many files it ran for.
    pub count: usize,
    /// When it started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// How long it ran.
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: RunOutcome,
    /// CPU time (user plus system) in µs, when known.
    #[serde(default)]
    pub cpu_usec: Option<u64>,
    /// Peak memory in bytes, when known.
    #[serde(default)]
    pub memory_peak: Option<u64>,
    /// The last lines of its output, oldest first (only in `history show`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunOutcome {
    /// Its main process exited (0: success).
    Exited {
        /// The exit code.
        code: i32,
    },
    /// Its main process was killed by a signal it was not sent by its listener.
    Signaled {
        /// The signal.
        signal: i32,
    },
    /// It ran past its `timeout_ms` and was killed.
    Timeout,
    /// It ran out of its `memory_max`.
    OverMemory {
        /// How.
        reason: String,
    },
    /// It could not be started.
    NotStarted {
        /// Why.
        reason: String,
    },
    /// Its listener stopped (a `stop`, a reload or the daemon's shutdown) while it
    /// ran, and that is what ended it (a run that had exited by then keeps its exit).
    Cancelled,
}

impl RunOutcome {
    /// Whether the run succeeded.
    pub fn ok(&self) -> bool {
        *self == RunOutcome::Exited { code: 0 }
    }

    /// Why it failed, in a few words (as [`RunOutcome::describe`]); `None` on success.
    pub fn failure(&self) -> Option<String> {
        (!self.ok()).then(|| self.describe())
    }

    /// The metrics' `outcome` label, also `status`'s last run: `succeeded`,
    /// `failed` (a non-zero exit, a signal, over its memory, not started),
    /// `timed_out` or `cancelled`.
    pub fn label(&self) -> &'static str {
        match self {
            RunOutcome::Exited { code: 0 } => "succeeded",
            RunOutcome::Timeout => "timed_out",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Exited { .. }
            | RunOutcome::Signaled { .. }
            | RunOutcome::OverMemory { .. }
            | RunOutcome::NotStarted { .. } => "failed",
        }
    }

    /// In a few words: `ok`, `exit code 2`, `signal 9`, `timed out`, ….
    pub fn describe(&self) -> String {
        match self {
            RunOutcome::Exited { code: 0 } => "ok".into(),
            RunOutcome::Exited { code } => format!("exit code {code}"),
            RunOutcome::Signaled { signal } => format!("killed by signal {signal}"),
            RunOutcome::Timeout => "timed out".into(),
            RunOutcome::OverMemory { reason } => reason.clone(),
            RunOutcome::NotStarted { reason } => format!("not started: {reason}"),
            RunOutcome::Cancelled => "cancelled".into(),
        }
    }
}

/// `explain`'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ExplainArgs {
    /// The file (any bytes). execlibctl makes a relative one absolute against its
    /// current directory; in a raw request it is relative to the config's directory
    /// or a route's path.
    #[serde(with = "wire")]
    pub path: PathBuf,
    /// The kind of change to explain.
    #[arg(long, default_value = "modify", value_parser = ["create", "modify", "delete", "move", "attrib"])]
    #[serde(default = "modify")]
    pub event: String,
}

fn modify() -> String {
    "modify".into()
}

/// `explain`: for every listener and route, whether the change would run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explained {
    /// The path explained, absolute.
    #[serde(with = "wire")]
    pub path: PathBuf,
    /// The kind of change explained.
    pub event: String,
    /// Every route of every listener, in config order.
    pub routes: Vec<RouteVerdict>,
    /// About the path itself (where it resolves through symlinks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One route's answer in `explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteVerdict {
    /// The listener.
    pub listener: String,
    /// The route.
    pub route: String,
    /// Whether a change to the path would run it now.
    pub runs: bool,
    /// `runs`, `outside_path`, `route_dir`, `ignored`, `not_included`, `event_kind`,
    /// `listener_stopped`, `listener_starting`, `unwatched`, `through_symlink`, `polled` (runs, at the
    /// next poll) or `open_for_writing` (runs at its writer's close, or `max_hold_ms`
    /// after its first held change).
    pub reason: String,
    /// The reason for people: the glob, the kinds the route takes, the listener's state.
    pub detail: String,
    /// The route's latest run for this file (a batch route's latest run that had it
    /// among its first files), from the history.
    #[serde(default)]
    pub last_run: Option<LastRun>,
}

/// A route's latest run, in `explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    /// The run's id (`execlibctl history show ID`).
    pub id: u64,
    /// When it started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// How it ended.
    pub outcome: RunOutcome,
}

/// `events`: the recent events (at most [`RECENT_EVENTS`]), oldest first; with
/// `follow`, the connection then carries one [`Streamed`] line per event until it closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Events {
    /// The recent events, oldest first.
    pub events: Vec<SeenEvent>,
    /// Whether a stream of [`Streamed`] lines follows.
    pub following: bool,
}

/// How many events the daemon remembers for `events` (all listeners together).
pub const RECENT_EVENTS: usize = 256;

/// An event a listener received, with the routes it matched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenEvent {
    /// When it was dispatched, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The listener.
    pub listener: String,
    /// The file.
    #[serde(with = "wire")]
    pub path: PathBuf,
    /// `create`, `modify`, `delete`, `move` or `attrib`.
    pub kind: String,
    /// The routes it was submitted to (none: it ran nothing).
    pub routes: Vec<String>,
}

/// A line of an `events --follow` stream, after the first reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Streamed {
    /// `{"event":{…}}`: an event.
    Event(SeenEvent),
    /// `{"lagged":N}`: N events were not sent, this subscriber being behind.
    Lagged(u64),
    /// `{"end":"…"}`: the stream ends (the daemon is stopping); the connection closes.
    End(String),
    /// `{"keepalive":true}`: nothing to send for the idle timeout; the follower must
    /// read it (by the next one) or be closed. Carries nothing else.
    Keepalive(bool),
}
