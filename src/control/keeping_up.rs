//! What `status` and `listeners` say about keeping up: watches in use against the
//! kernel's limit, polled directories, overflows, runs queued and the last runs,
//! summed over the listeners' snapshots.

use crate::protocol::replies::{LastRun, ListenerInfo, Watches};
use std::collections::BTreeMap;

/// The watches the listeners hold, against `fs.inotify.max_user_watches` (`None`
/// when it cannot be read).
pub(super) fn watches(listeners: &[ListenerInfo]) -> Watches {
    Watches {
        in_use: listeners.iter().map(|l| l.watches).sum(),
        limit: crate::watch::max_user_watches(),
    }
}

/// The listeners' figures, summed for `status`.
pub(super) struct Overview {
    pub watches: Watches,
    pub polled: u64,
    pub overflows: u64,
    pub last_overflow_ms: Option<u64>,
    pub jobs_queued: u64,
    pub files_open: u64,
    pub last_runs: BTreeMap<String, LastRun>,
}

impl Overview {
    /// The overview of `listeners`.
    pub(super) fn of(listeners: &[ListenerInfo]) -> Overview {
        Overview {
            watches: watches(listeners),
            polled: listeners.iter().map(|l| l.polled.len() as u64).sum(),
            overflows: listeners.iter().map(|l| l.overflows).sum(),
            last_overflow_ms: listeners.iter().filter_map(|l| l.last_overflow_ms).max(),
            jobs_queued: listeners.iter().map(|l| l.jobs_queued).sum(),
            files_open: listeners.iter().map(|l| l.files_open).sum(),
            last_runs: listeners
                .iter()
                .filter_map(|l| Some((l.name.clone(), l.last_run.clone()?)))
                .collect(),
        }
    }
}
