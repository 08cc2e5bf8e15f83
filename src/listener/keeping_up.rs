//! Whether a listener keeps up: its queue overflows and when the last was read, kept
//! for `listeners` and `status` (its last run comes from the history).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// A listener's overflows (kept across its stops and starts).
#[derive(Debug, Default)]
pub(crate) struct KeepingUp {
    overflows: AtomicU64,
    last_overflow: Mutex<Option<SystemTime>>,
}

impl KeepingUp {
    /// `overflows` more overflows, the last at `last`.
    pub(crate) fn overflowed(&self, overflows: u64, last: Option<SystemTime>) {
        self.overflows.fetch_add(overflows, Ordering::Relaxed);
        if overflows > 0 && last.is_some() {
            *self.last_overflow.lock().expect("overflow lock") = last;
        }
    }

    /// Overflows so far.
    pub(crate) fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// When the last overflow was read, milliseconds since the Unix epoch.
    pub(crate) fn last_overflow_ms(&self) -> Option<u64> {
        self.last_overflow
            .lock()
            .expect("overflow lock")
            .map(crate::protocol::epoch_ms)
    }
}
