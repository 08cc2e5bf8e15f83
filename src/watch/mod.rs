//! The watcher: one inotify instance watching directory trees recursively,
//! turning raw inotify events into [`FileEvent`]s for the listener without
//! losing a change:
//!
//! - a new directory is watched, then scanned: files already in it are reported as created;
//! - directory renames are paired by cookie: a rename inside the tree reports the old
//!   names deleted and the new ones moved; a directory moved in reports its files created;
//!   one moved out (no pair within [`MOVE_BOUND`]) reports its files deleted;
//! - on queue overflow the tree is rescanned and compared with the in-memory
//!   [`Snapshot`]: exactly the files created, changed or deleted are reported, and
//!   repeated overflows back off; until the rescan, events about files are only read
//!   (the rescan finds what they say), so a storm costs little more than the reads;
//! - a root that is missing or goes away makes the watcher report it missing; it is
//!   polled and, when it is back, scanned and its files reported as created;
//! - a file being written is reported when its writer closes it ([`hold`]).
//!
//! Symlinks are never followed.

mod handle;
mod hold;
mod mounts;
mod poll;
mod setup;
pub mod threaded;
mod timers;
mod tree;
mod walk;

use hold::Holds;
pub use hold::{HeldFile, HeldFiles, HoldFor};
pub use poll::{DEFAULT_POLL_MS, Poll, PollFor, PollMode};
pub use setup::Setup;
use timers::Overflow;
pub use timers::OverflowStats;

use crate::events::EventKind;
pub use crate::events::FileEvent;
use crate::snapshot::Snapshot;
use futures::StreamExt;
use inotify::{EventMask, EventOwned, EventStream, Inotify};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::warn;
use tree::{Stat, Tree};

/// Decides whether a directory (absolute path) should be watched.
pub type DirFilter = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// How long a directory's `IN_MOVED_FROM` waits for its `IN_MOVED_TO` before it
/// counts as moved out of the tree.
pub const MOVE_BOUND: Duration = Duration::from_millis(50);
/// How often missing roots are looked for.
pub const ROOT_POLL: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why watching failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The per-user limit of inotify instances is reached.
    #[error(
        "too many inotify instances: fs.inotify.max_user_instances is {limit}; raise it with \
         `sysctl fs.inotify.max_user_instances=<more>` (persist it in /etc/sysctl.d/)"
    )]
    TooManyInstances {
        /// The current value of the sysctl.
        limit: String,
    },
    /// Two route paths reach one directory (one through a symlink): inotify has one
    /// watch for it, which cannot report under both.
    #[error(
        "route paths {} and {} are the same directory (through a symlink): give one of them",
        crate::names::escaped(first),
        crate::names::escaped(second)
    )]
    Alias {
        /// One route path.
        first: PathBuf,
        /// The other, reaching the same directory (or one inside the first).
        second: PathBuf,
    },
    /// A route's directory cannot be watched.
    #[error("cannot watch {}: {source}", crate::names::escaped(path))]
    Root {
        /// The route's directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Any other inotify failure.
    #[error("inotify: {action}: {source}")]
    Inotify {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        source: io::Error,
    },
}

/// `fs.inotify.max_user_watches`, or `None` where /proc/sys cannot be read (a unit
/// with `ProcSubset=pid`, for one).
pub fn max_user_watches() -> Option<u64> {
    sysctl("max_user_watches").parse().ok()
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(Path::new("/proc/sys/fs/inotify").join(name))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[derive(Debug)]
struct Root {
    path: PathBuf,
    /// Why it is not watched, when it is not.
    missing: Option<String>,
    /// The files it held when it went away, to compare with when it is back.
    lost: Snapshot,
    /// Where it resolves (symlinks followed), while it is watched.
    resolved: Option<PathBuf>,
    /// Whether a symlink is on its way (then where it resolves is checked every
    /// [`ROOT_POLL`]).
    via_symlink: bool,
}

impl Root {
    fn new(path: &Path, missing: Option<String>) -> Root {
        let mut root = Root {
            path: path.to_owned(),
            missing,
            lost: Snapshot::new(),
            resolved: None,
            via_symlink: false,
        };
        if root.missing.is_none() {
            root.set_resolved(mounts::resolve(path));
        }
        root
    }

    fn set_resolved(&mut self, resolved: Option<PathBuf>) {
        self.via_symlink = resolved.as_deref().is_some_and(|r| r != self.path);
        if self.via_symlink
            && let Some(target) = &resolved
        {
            tracing::info!(
                path = %crate::names::escaped(&self.path),
                resolves_to = %crate::names::escaped(target),
                "route path is reached through a symlink: watching where it resolves"
            );
        }
        self.resolved = resolved;
    }
}

struct PendingMove {
    cookie: u32,
    path: PathBuf,
    at: Instant,
}

/// A running watcher; dropping it closes the inotify instance.
pub struct Watcher {
    stream: EventStream<Vec<u8>>,
    /// The mount table, signalled when it changes.
    mounts: Option<crate::sys::MountTable>,
    /// The mount points it listed last.
    mount_points: std::collections::BTreeSet<(u64, PathBuf)>,
    /// The mounts it listed last, with their types.
    mount_table: Vec<mounts::Mount>,
    /// The subtrees polled (see [`poll`]).
    polls: Vec<poll::Polled>,
    /// Whether what is polled must be worked out again.
    polls_dirty: bool,
    /// How many directories had no watch when that was last worked out.
    polled_unwatched: usize,
    /// How each route path is polled.
    poll_for: PollFor,
    tree: Tree,
    roots: Vec<Root>,
    moves: Vec<PendingMove>,
    overflow: Overflow,
    next_poll: Instant,
    /// Chunks of the background pass filling in sizes and mtimes after a fast start.
    completion: Option<Completion>,
    /// See [`Setup`]: the background pass leaves files changed since then unknown.
    changed_before: i64,
    /// Files whose writer has not closed them yet.
    holds: Holds,
}

type Completion = tokio::sync::mpsc::Receiver<Vec<(PathBuf, tree::Files)>>;

/// Directories per chunk of the background stat pass.
const COMPLETION_CHUNK: usize = 256;

/// The mount table's text once it changed (never without one).
async fn mount_changes(mounts: &Option<crate::sys::MountTable>) -> io::Result<String> {
    match mounts {
        Some(table) => table.changed().await,
        None => std::future::pending().await,
    }
}

/// The next chunk of the background stat pass (empty once it is over).
async fn completed(completion: &mut Option<Completion>) -> Vec<(PathBuf, tree::Files)> {
    let Some(rx) = completion else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Some(chunk) => chunk,
        None => {
            *completion = None;
            // It walks the allocator's arenas under their locks: not on a runtime thread.
            let _ = tokio::task::spawn_blocking(crate::sys::release_free_memory).await;
            Vec::new()
        }
    }
}

impl Watcher {
    /// Waits for the next inotify event or timer and returns the file events it means (maybe none).
    pub async fn next(&mut self) -> Result<Vec<FileEvent>, WatchError> {
        // Each event costs the task a unit of tokio's budget: however fast events come,
        // a busy watcher yields its thread to the HTTP server and the control socket.
        tokio::task::consume_budget().await;
        let wakeup = self.next_wakeup();
        let event = tokio::select! {
            event = self.stream.next() => Some(event),
            found = completed(&mut self.completion) => {
                self.tree.complete(found, self.changed_before);
                if self.completion.is_none() {
                    self.log_footprint();
                }
                return Ok(Vec::new());
            }
            table = mount_changes(&self.mounts) => {
                let mut out = Vec::new();
                match table {
                    Ok(text) => self.mounts_changed(&text, &mut out)?,
                    Err(e) => {
                        warn!("cannot read the mount table: {e}; mounts are no longer followed");
                        self.mounts = None;
                    }
                }
                self.record_released();
                self.refresh_polls();
                return Ok(out);
            }
            _ = tokio::time::sleep_until(wakeup.unwrap_or_else(Instant::now)), if wakeup.is_some() => None,
        };
        let mut out = Vec::new();
        match event {
            Some(Some(Ok(event))) => self.handle(event, &mut out)?,
            Some(Some(Err(source))) => {
                return Err(WatchError::Inotify {
                    action: "reading events",
                    source,
                });
            }
            Some(None) => {
                return Err(WatchError::Inotify {
                    action: "reading events",
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            None => {}
        }
        self.run_timers(Instant::now(), &mut out)?;
        self.record_released();
        self.refresh_polls();
        Ok(out)
    }

    /// Emits at once what would otherwise come later: events already queued in the
    /// inotify instance, directories moved out and not (yet) seen arriving (their files
    /// are reported gone), and a rescan due after an overflow. For a listener about to
    /// stop whose successor (a reload) must not miss them.
    pub fn flush(&mut self) -> Result<Vec<FileEvent>, WatchError> {
        use futures::FutureExt;
        let mut out = Vec::new();
        while let Some(Some(Ok(event))) = self.stream.next().now_or_never() {
            self.handle(event, &mut out)?;
        }
        for moved in std::mem::take(&mut self.moves) {
            self.dir_gone(&moved.path, &mut out);
        }
        if self.overflow.due.is_some() {
            self.rescan(Instant::now(), &mut out)?;
        }
        self.holds.release_all(&mut out);
        self.record_released();
        Ok(out)
    }

    /// Logs (debug) what the snapshot holds in memory, by structure.
    fn log_footprint(&self) {
        let f = self.tree.footprint();
        let mib = |bytes: usize| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
        tracing::debug!(
            dirs = f.dirs,
            files = f.files,
            entries = %mib(f.entry_bytes),
            names = %mib(f.name_bytes),
            directories = %mib(f.dir_bytes),
            "snapshot in memory"
        );
    }

    /// Its overflows and rescans so far.
    pub fn overflow_stats(&self) -> OverflowStats {
        self.overflow.stats
    }

    /// The files it holds while writers have them open, shared: they change as it runs.
    pub fn held_files(&self) -> HeldFiles {
        self.holds.files()
    }

    /// How many directories are watched.
    pub fn watch_count(&self) -> usize {
        self.tree.watch_count()
    }

    /// What is wrong (empty when all is well): roots not watched, and directories
    /// polled for want of inotify watches.
    pub fn health(&self) -> Vec<String> {
        let mut reasons: Vec<String> = self.roots.iter().filter_map(|r| r.missing.clone()).collect();
        let unwatched = self.tree.unwatched_count();
        if unwatched > 0 {
            reasons.push(format!(
                "out of inotify watches: fs.inotify.max_user_watches is {}; {unwatched} directories \
                 are polled instead; raise it with `sysctl fs.inotify.max_user_watches=<more>` \
                 (persist it in /etc/sysctl.d/)",
                sysctl("max_user_watches")
            ));
        }
        reasons.extend(self.tree.unwatchable());
        reasons
    }

    /// Every file under the watched directories, by directory (a copy, in the compact form).
    pub fn by_dir(&self) -> crate::snapshot::Dirs {
        self.tree.by_dir()
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let moves = self.moves.iter().map(|m| m.at + MOVE_BOUND);
        let poll = self
            .roots
            .iter()
            .any(|r| r.missing.is_some() || r.via_symlink)
            .then_some(self.next_poll);
        moves
            .chain(self.overflow.due)
            .chain(poll)
            .chain(self.holds.next_due())
            .chain(self.polls.iter().map(|p| p.next))
            .min()
    }
}
