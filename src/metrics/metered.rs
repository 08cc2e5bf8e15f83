//! [`Metered`]: a listener's job observer that also counts its runs (started, ended
//! by outcome, duration) in the daemon's [`Metrics`].

use super::{Metrics, RunOutcome};
use crate::job::Outcome;
use crate::job::launch::Observer;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Passes every call to the listener's own observer and counts the runs.
pub struct Metered {
    inner: Arc<dyn Observer>,
    metrics: Arc<Metrics>,
    listener: String,
}

impl Metered {
    /// `inner`, with listener `listener`'s runs counted in `metrics`.
    pub fn new(inner: Arc<dyn Observer>, metrics: Arc<Metrics>, listener: &str) -> Self {
        Metered {
            inner,
            metrics,
            listener: listener.to_owned(),
        }
    }
}

/// The `outcome` label of a run that ended with `outcome`.
pub fn run_outcome(outcome: &Outcome, cancelled: bool) -> RunOutcome {
    match outcome {
        Outcome::Exited(0) => RunOutcome::succeeded,
        Outcome::TimedOut => RunOutcome::timed_out,
        // SIGTERM (or SIGKILL after the grace) from a stop, not a failure of the job.
        _ if cancelled => RunOutcome::cancelled,
        _ => RunOutcome::failed,
    }
}

impl Observer for Metered {
    fn started(&self, route: &str, file: &Path, pid: &Arc<AtomicU32>) -> u64 {
        self.metrics.run_started(&self.listener, route);
        self.inner.started(route, file, pid)
    }

    fn outcome(&self, route: &str, file: &Path, outcome: &Outcome, took: Duration, cancelled: bool) {
        let label = run_outcome(outcome, cancelled);
        self.metrics
            .run_finished(&self.listener, route, label, took.as_secs_f64());
        self.inner.outcome(route, file, outcome, took, cancelled);
    }

    fn ended(&self, id: u64, route: &str, file: &Path, failure: Option<String>) {
        self.inner.ended(id, route, file, failure);
    }
}
