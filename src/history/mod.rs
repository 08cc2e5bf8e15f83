//! The record of finished runs (`execlibctl history`, and `explain`'s last run):
//! the last [`RUNS_PER_LISTENER`] runs of each listener in memory, each with at most
//! [`FILES_KEPT`] of its files and [`OUTPUT_BYTES`] of its output's last lines.
//! A run's end records it here at once (a lock and a push) and queues it, without
//! waiting, for the [`file::Writer`] task that appends it to the state directory;
//! a daemon started later reads those files back ([`file`](mod@file)).

pub mod file;

use crate::protocol::observe::{DEFAULT_HISTORY_LIST, HistoryQuery, RunOutcome, RunRecord};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Lines of a job's output kept after it ends (for `history show` and a build's
/// failure in the browser): the last [`TAIL_LINES`], stdout and stderr as they came.
pub const TAIL_LINES: usize = 20;
/// Bytes of a line the tail keeps (cut at a character boundary).
pub const TAIL_LINE: usize = 1024;

/// What a finished job used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, user plus system, in µs.
    pub cpu_usec: u64,
    /// Peak memory in bytes.
    pub memory_peak: u64,
}

/// Runs kept per listener, in memory and on disk.
pub const RUNS_PER_LISTENER: usize = 200;
/// Files of a batch's run kept in its record (`count` says how many it had).
pub const FILES_KEPT: usize = 8;
/// Bytes of output lines a record keeps: the last lines (at most
/// [`TAIL_LINES`], each at most [`TAIL_LINE`] bytes) that fit.
pub const OUTPUT_BYTES: usize = 4096;
/// Records waiting for the writer; when it is this far behind, a record stays in
/// memory only (with a warning) rather than slow a job down.
pub const QUEUE: usize = 1024;
/// The highest run id read back (2^53, the largest integer every JSON reader keeps
/// exact): ids count runs one by one, so a record above it was not written by the
/// daemon, and would make the next ids wrap around.
pub const MAX_ID: u64 = 1 << 53;
/// Bytes of a record's route (or post command) name kept: the longest the config
/// allows ([`crate::config::MAX_JOB_NAME`]).
pub const ROUTE_BYTES: usize = crate::config::MAX_JOB_NAME;
/// Bytes of an outcome's reason (`over_memory`, `not_started`) kept.
pub const REASON_BYTES: usize = 1024;
/// The longest path a record keeps (`PATH_MAX`); a longer one is left out of its files.
pub const PATH_BYTES: usize = 4096;

/// The daemon's history of runs.
#[derive(Debug)]
pub struct History {
    runs: Mutex<HashMap<String, VecDeque<Arc<RunRecord>>>>,
    next_id: AtomicU64,
    tx: Option<mpsc::Sender<Arc<RunRecord>>>,
    unsaved: AtomicU64,
}

impl Default for History {
    /// A history kept in memory only.
    fn default() -> Self {
        History {
            runs: Mutex::default(),
            next_id: AtomicU64::new(1),
            tx: None,
            unsaved: AtomicU64::new(0),
        }
    }
}

/// A run that just ended, before the history gives it an id and bounds it.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The listener.
    pub listener: String,
    /// The route or post command.
    pub route: String,
    /// The route's stage (`None`: a post command).
    pub stage: Option<u32>,
    /// The files it ran for (only the first [`FILES_KEPT`] are kept).
    pub files: Vec<PathBuf>,
    /// How many files it ran for.
    pub count: usize,
    /// When it started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// How long it ran.
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: RunOutcome,
    /// What it used, when known.
    pub usage: Option<Usage>,
    /// The last lines of its output.
    pub output: Vec<String>,
}

impl History {
    /// The history persisted under `state_dir`: read back (a file that cannot be
    /// used is dropped with a warning), and the writer that will append to it. Blocks.
    pub fn open(state_dir: &Path) -> (Arc<History>, file::Writer) {
        let dir = file::dir(state_dir);
        let loaded = file::load_all(&dir);
        let (tx, rx) = mpsc::channel(QUEUE);
        // Read back ids are at most MAX_ID: no overflow.
        let next = loaded.values().flatten().map(|r| r.id + 1).max().unwrap_or(1);
        let runs = loaded
            .into_iter()
            .map(|(listener, runs)| (listener, runs.into_iter().map(Arc::new).collect()))
            .collect();
        let history = History {
            runs: Mutex::new(runs),
            next_id: AtomicU64::new(next),
            tx: Some(tx),
            unsaved: AtomicU64::new(0),
        };
        (Arc::new(history), file::Writer::new(dir, rx))
    }

    /// Records a run that ended; returns its id. Never waits.
    pub fn record(&self, run: Finished) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut record = RunRecord {
            id,
            listener: run.listener,
            route: run.route,
            stage: run.stage,
            count: run.count,
            files: run.files,
            started_ms: run.started_ms,
            duration_ms: run.duration_ms,
            outcome: run.outcome,
            cpu_usec: run.usage.map(|u| u.cpu_usec),
            memory_peak: run.usage.map(|u| u.memory_peak),
            output: run.output,
        };
        bound(&mut record);
        let record = Arc::new(record);
        push(&mut self.runs.lock().expect("history lock"), record.clone());
        if let Some(tx) = &self.tx
            && tx.try_send(record).is_err()
        {
            let n = self.unsaved.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                run = id,
                unsaved = n,
                "history writer behind: run kept in memory only"
            );
        }
        id
    }

    /// The runs `query` asks for, newest first, without their output. `file` is
    /// matched as given and as each of `resolve`'s candidates.
    pub fn query(&self, query: &HistoryQuery, files: &[PathBuf]) -> Vec<RunRecord> {
        let n = query.n.unwrap_or(DEFAULT_HISTORY_LIST);
        let runs = self.runs.lock().expect("history lock");
        let mut all: Vec<&Arc<RunRecord>> = runs
            .iter()
            .filter(|(l, _)| query.listener.as_ref().is_none_or(|q| q == *l))
            .flat_map(|(_, runs)| runs.iter())
            .filter(|r| query.route.as_ref().is_none_or(|q| *q == r.route))
            .filter(|r| !query.failed || !r.outcome.ok())
            .filter(|r| query.file.is_none() || r.files.iter().any(|f| files.contains(f)))
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.id));
        all.into_iter()
            .take(n)
            .map(|r| RunRecord {
                output: Vec::new(),
                ..(**r).clone()
            })
            .collect()
    }

    /// Whether it holds runs of `listener`.
    pub fn knows(&self, listener: &str) -> bool {
        let runs = self.runs.lock().expect("history lock");
        runs.get(listener).is_some_and(|r| !r.is_empty())
    }

    /// The run of `listener` that ended last.
    pub fn newest(&self, listener: &str) -> Option<Arc<RunRecord>> {
        let runs = self.runs.lock().expect("history lock");
        runs.get(listener)?.back().cloned()
    }

    /// Run `id`, with its output.
    pub fn get(&self, id: u64) -> Option<RunRecord> {
        let runs = self.runs.lock().expect("history lock");
        runs.values()
            .flatten()
            .find(|r| r.id == id)
            .map(|r| (**r).clone())
    }

    /// The latest run of `listener`'s `route` that had `file` among its files.
    pub fn last_for(&self, listener: &str, route: &str, file: &Path) -> Option<Arc<RunRecord>> {
        let runs = self.runs.lock().expect("history lock");
        runs.get(listener)?
            .iter()
            .rev()
            .find(|r| r.route == route && r.files.iter().any(|f| f == file))
            .cloned()
    }
}

/// Adds `record` to its listener's runs, dropping the oldest past the bound.
fn push(runs: &mut HashMap<String, VecDeque<Arc<RunRecord>>>, record: Arc<RunRecord>) {
    let list = runs.entry(record.listener.clone()).or_default();
    if list.len() >= RUNS_PER_LISTENER {
        list.pop_front();
    }
    list.push_back(record);
}

/// Holds a record to the bounds: [`FILES_KEPT`] files of at most [`PATH_BYTES`]
/// each, a route of at most [`ROUTE_BYTES`], a reason of at most [`REASON_BYTES`],
/// the last output lines that fit [`OUTPUT_BYTES`], each cut at
/// [`TAIL_LINE`] bytes. (Also applied to what is read back from disk,
/// which may have been edited.)
pub fn bound(record: &mut RunRecord) {
    record.files.truncate(FILES_KEPT);
    record.files.retain(|f| f.as_os_str().len() <= PATH_BYTES);
    cut(&mut record.route, ROUTE_BYTES);
    if let RunOutcome::OverMemory { reason } | RunOutcome::NotStarted { reason } = &mut record.outcome {
        cut(reason, REASON_BYTES);
    }
    let lines = record.output.len();
    record.output.drain(..lines.saturating_sub(TAIL_LINES));
    for line in &mut record.output {
        cut(line, TAIL_LINE);
    }
    let mut total = 0;
    let keep = record
        .output
        .iter()
        .rev()
        .take_while(|l| {
            total += l.len() + 1;
            total <= OUTPUT_BYTES
        })
        .count();
    let skip = record.output.len() - keep;
    record.output.drain(..skip);
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn cut(text: &mut String, max: usize) {
    let mut at = max.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
}

#[cfg(test)]
mod tests;
