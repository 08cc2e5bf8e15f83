//! Route matching: which routes a file event is for, and what each submits to its
//! listener's scheduler. A route takes an event under its path, of a kind it
//! wants, whose path (relative to the route's) matches its globs and escapes its
//! ignores.

use crate::config::{Mode, RouteConfig};
use crate::events::FileEvent;
use crate::scheduler::{Submission, Timing};
use std::path::PathBuf;

/// The submission for `route` (the listener's route number `index`) if the event is
/// for it. An `each` route's runs are per file; a `batch` route's share one key.
pub fn submission(index: usize, route: &RouteConfig, event: &FileEvent) -> Option<Submission> {
    let rel = event.path.strip_prefix(&route.path).ok()?;
    let wanted =
        !rel.as_os_str().is_empty() && route.events.contains(event.kind) && route.matcher.matches(rel);
    let key_path = match route.mode {
        Mode::Each => event.path.clone(),
        Mode::Batch => PathBuf::new(), // one key for the whole route
    };
    wanted.then(|| Submission {
        key: (index, key_path),
        file: event.path.clone(),
        kind: event.kind,
        timing: Timing {
            debounce: route.debounce,
            delay: route.delay,
        },
        order: route.order,
    })
}
