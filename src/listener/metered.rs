//! [`Metered`]: a listener's job observer that also counts its runs (started, ended
//! by outcome, duration) in the daemon's [`Metrics`].

use crate::job::Outcome;
use crate::job::launch::Observer;
use crate::metrics::Metrics;
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

impl Observer for Metered {
    fn started(&self, route: &str, file: &Path, pid: &Arc<AtomicU32>) -> u64 {
        self.metrics.run_started(&self.listener, route);
        self.inner.started(route, file, pid)
    }

    fn outcome(&self, route: &str, file: &Path, outcome: &Outcome, took: Duration) {
        self.metrics
            .run_finished(&self.listener, route, outcome, took.as_secs_f64());
        self.inner.outcome(route, file, outcome, took);
    }

    fn ended(&self, id: u64, route: &str, file: &Path, failure: Option<String>) {
        self.inner.ended(id, route, file, failure);
    }
}
