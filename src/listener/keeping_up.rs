//! Whether a listener keeps up: its queue overflows and rescans, and how its last run
//! ended, kept for `listeners` and `status`.

use crate::job::Outcome;
use crate::protocol::replies::LastRun;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// A listener's overflows and last run (kept across its stops and starts).
#[derive(Debug, Default)]
pub(crate) struct KeepingUp {
    overflows: AtomicU64,
    last_overflow: Mutex<Option<SystemTime>>,
    last_run: Mutex<Option<LastRun>>,
}

/// Milliseconds since the Unix epoch.
fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl KeepingUp {
    /// `overflows` more overflows, the last at `last`.
    pub(crate) fn overflowed(&self, overflows: u64, last: Option<SystemTime>) {
        self.overflows.fetch_add(overflows, Ordering::Relaxed);
        if overflows > 0 && last.is_some() {
            *self.last_overflow.lock().expect("overflow lock") = last;
        }
    }

    /// A run of `route` for `file` ended with `outcome` after `took`.
    pub(crate) fn ran(&self, route: &str, file: &Path, outcome: &Outcome, took: Duration, cancelled: bool) {
        let label = crate::metrics::run_outcome(outcome, cancelled);
        let run = LastRun {
            route: route.to_owned(),
            file: file.to_owned(),
            outcome: label.as_str().to_owned(),
            reason: outcome.failure(),
            duration_ms: took.as_millis() as u64,
            at_ms: epoch_ms(SystemTime::now()),
        };
        *self.last_run.lock().expect("last run lock") = Some(run);
    }

    /// Overflows so far.
    pub(crate) fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// When the last overflow was read, milliseconds since the Unix epoch.
    pub(crate) fn last_overflow_ms(&self) -> Option<u64> {
        self.last_overflow.lock().expect("overflow lock").map(epoch_ms)
    }

    /// How the last run ended.
    pub(crate) fn last_run(&self) -> Option<LastRun> {
        self.last_run.lock().expect("last run lock").clone()
    }
}
