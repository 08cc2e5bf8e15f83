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

mod hold;
mod mounts;
mod poll;
mod timers;
mod tree;
mod walk;

pub use hold::HoldFor;
use hold::Holds;
pub use poll::{DEFAULT_POLL_MS, Poll, PollFor, PollMode};
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

/// The instance, its tree and its roots, before events are read.
pub struct Setup {
    inotify: Inotify,
    tree: Tree,
    roots: Vec<Root>,
    /// Files changed from this time on (ns since the epoch) are not filled in by the
    /// background stat pass: a second before the walk began, for coarse timestamps.
    changed_before: i64,
}

impl Setup {
    /// Creates the instance and watches every root recursively, recording every
    /// file. A root that is missing is recorded as such, not an error. Blocking:
    /// call it off the async threads.
    /// With `full_stat` every file is stat'ed now (needed to compare with a saved
    /// snapshot); otherwise only names are read now and sizes and mtimes are filled
    /// in by a background pass once the watcher runs, so start-up costs little more
    /// than the walk itself.
    pub fn new(roots: &[PathBuf], filter: DirFilter, full_stat: bool) -> Result<Setup, WatchError> {
        let inotify = Inotify::init().map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE) => WatchError::TooManyInstances {
                limit: sysctl("max_user_instances"),
            },
            _ => WatchError::Inotify {
                action: "creating an instance",
                source: e,
            },
        })?;
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let changed_before = since_epoch.as_nanos() as i64 - 1_000_000_000;
        check_aliases(roots)?;
        let mut tree = Tree::new(inotify.watches(), filter);
        let mut state = Vec::new();
        for root in roots {
            let stat = if full_stat { Stat::Full } else { Stat::Deferred };
            let missing = match tree.add_walked(root, stat) {
                Ok(()) => None,
                Err(WatchError::Root { source, .. }) => Some(format!(
                    "route path {} {}",
                    crate::names::escaped(root),
                    describe(&source)
                )),
                Err(e) => return Err(e),
            };
            state.push(Root::new(root, missing));
        }
        // The walk's transient buffers are freed: hand their pages back.
        crate::sys::release_free_memory();
        Ok(Setup {
            inotify,
            tree,
            roots: state,
            changed_before,
        })
    }

    /// The files found, by directory (a copy, in the compact form).
    pub fn by_dir(&self) -> crate::snapshot::Dirs {
        self.tree.by_dir()
    }

    /// The changes from `saved` to the files found, as events: exactly what comparing
    /// the two by full path would report, compared one directory at a time.
    pub fn changes_since(&self, saved: &crate::snapshot::Dirs) -> Vec<FileEvent> {
        let changes = crate::snapshot::diff_dirs(saved.iter(), self.tree.dirs());
        changes
            .into_iter()
            .map(|(path, kind)| FileEvent { path, kind })
            .collect()
    }

    /// Starts delivering events (needs a tokio runtime); files open for writing are
    /// held as `hold_for` says, route paths polled as `poll_for` says.
    pub fn into_watcher(self, hold_for: HoldFor, poll_for: PollFor) -> Result<Watcher, WatchError> {
        let stream = self
            .inotify
            .into_event_stream(vec![0u8; 64 * 1024])
            .map_err(|source| WatchError::Inotify {
                action: "registering with the runtime",
                source,
            })?;
        let unknown = self.tree.unknown_dirs();
        // One bounded, read-only pass over the tree, streamed in chunks so the extra
        // memory is one chunk; it stops early if the watcher is dropped (channel closed).
        let completion = (!unknown.is_empty()).then(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::task::spawn_blocking(move || {
                for chunk in unknown.chunks(COMPLETION_CHUNK) {
                    let found = chunk.iter().cloned().map(tree::stat_dir).collect();
                    if tx.blocking_send(found).is_err() {
                        return;
                    }
                }
            });
            rx
        });
        // Without the mount table (no /proc), mounts are not followed: said once.
        let mounts = crate::sys::MountTable::open()
            .map_err(|e| warn!("cannot follow mounts under the route paths: {e}"))
            .ok();
        let mount_table = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|text| mounts::mounts(&text))
            .unwrap_or_default();
        let mut watcher = Watcher {
            stream,
            mounts,
            mount_points: mounts::mount_points(&mount_table),
            mount_table,
            polls: Vec::new(),
            polls_dirty: true,
            polled_unwatched: 0,
            poll_for,
            tree: self.tree,
            roots: self.roots,
            moves: Vec::new(),
            overflow: Overflow::default(),
            next_poll: Instant::now() + ROOT_POLL,
            completion,
            changed_before: self.changed_before,
            holds: Holds::new(hold_for),
        };
        watcher.refresh_polls();
        if watcher.completion.is_none() {
            watcher.log_footprint();
        }
        Ok(watcher)
    }
}

/// Refuses two route paths that reach the same directory, or one inside the other,
/// through a symlink (nested paths as written are fine: one tree covers both).
fn check_aliases(roots: &[PathBuf]) -> Result<(), WatchError> {
    let resolved: Vec<Option<PathBuf>> = roots.iter().map(|r| mounts::resolve(r)).collect();
    for (i, a) in roots.iter().enumerate() {
        for (j, b) in roots.iter().enumerate() {
            let (Some(ra), Some(rb)) = (&resolved[i], &resolved[j]) else {
                continue;
            };
            if i != j && ra.starts_with(rb) && !a.starts_with(b) {
                return Err(WatchError::Alias {
                    first: b.clone(),
                    second: a.clone(),
                });
            }
        }
    }
    Ok(())
}

fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "does not exist".to_owned(),
        Some(libc::ENOTDIR) => "is not a directory".to_owned(),
        _ => format!("cannot be watched: {e}"),
    }
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

    fn handle(&mut self, event: EventOwned, out: &mut Vec<FileEvent>) -> Result<(), WatchError> {
        let mask = event.mask;
        if mask.contains(EventMask::Q_OVERFLOW) {
            self.overflowed(Instant::now());
            return Ok(());
        }
        let Some(dir) = self.tree.dir_of(&event.wd).cloned() else {
            return Ok(());
        };
        if self.moved_away(&dir, out)? {
            return Ok(()); // about the old target of a route path swapped since
        }
        let Some(name) = event.name else {
            return self.self_event(mask, &event.wd, &dir, out);
        };
        if self.overflow.due.is_some() {
            // The queue overflowed and a rescan is due: it will find this change (and the
            // directories to watch) from the disk. In a storm, this keeps the cost of an
            // event to reading it.
            return Ok(());
        }
        let path = dir.join(name);
        if self
            .moves
            .iter()
            .any(|m| path.starts_with(&m.path) && path != m.path)
        {
            return Ok(()); // inside a directory being moved: its old name is stale
        }
        if mask.contains(EventMask::ISDIR) {
            return self.dir_event(mask, event.cookie, path, out);
        }
        if mask.contains(EventMask::CLOSE_WRITE) {
            self.holds.release(&path, out);
            return Ok(());
        }
        let kind = if mask.contains(EventMask::CREATE) {
            EventKind::Create
        } else if mask.contains(EventMask::MODIFY) {
            EventKind::Modify
        } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            EventKind::Delete
        } else if mask.contains(EventMask::MOVED_TO) {
            EventKind::Move
        } else if mask.contains(EventMask::ATTRIB) {
            EventKind::Attrib
        } else {
            return Ok(());
        };
        self.file_event(path, kind, out);
        Ok(())
    }

    /// Records a change to a file and reports it, unless it is held (being written).
    /// A held file's state is recorded once, when it is released.
    fn file_event(&mut self, path: PathBuf, kind: EventKind, out: &mut Vec<FileEvent>) {
        match kind {
            EventKind::Delete => {
                // Held changes first: a file written, then deleted, keeps its order.
                self.holds.release(&path, out);
                self.tree.remove_file(&path);
            }
            EventKind::Modify => {
                if self.holds.hold(&path, kind, Instant::now()) {
                    return;
                }
                self.tree.refresh(&path);
            }
            EventKind::Create => {
                let meta = self.tree.refresh(&path);
                if meta.as_ref().is_some_and(hold::may_be_written)
                    && self.holds.hold(&path, kind, Instant::now())
                {
                    return;
                }
            }
            EventKind::Move => {
                self.holds.release(&path, out);
                self.tree.refresh(&path);
            }
            EventKind::Attrib => {
                self.tree.refresh(&path);
            }
        }
        out.push(FileEvent { path, kind });
    }

    /// Records the state of the files released since last asked.
    fn record_released(&mut self) {
        for path in self.holds.take_released() {
            self.tree.refresh(&path);
        }
    }

    /// An event about a watched directory itself.
    fn self_event(
        &mut self,
        mask: EventMask,
        wd: &inotify::WatchDescriptor,
        dir: &Path,
        out: &mut Vec<FileEvent>,
    ) -> Result<(), WatchError> {
        let root = self
            .roots
            .iter()
            .position(|r| r.path == dir && r.missing.is_none());
        let gone = EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::UNMOUNT | EventMask::IGNORED;
        match root {
            Some(i) if mask.intersects(gone) => {
                let how = if mask.contains(EventMask::UNMOUNT) {
                    "was unmounted"
                } else if mask.contains(EventMask::MOVE_SELF) {
                    "was moved away"
                } else {
                    "was deleted"
                };
                let path = self.roots[i].path.clone();
                warn!(path = %crate::names::escaped(&path), "route path {how}; waiting for it to come back");
                self.holds.release_under(&path, out);
                self.roots[i].lost = self.tree.drop_dir(&path);
                self.roots[i].missing = Some(format!("route path {} {how}", crate::names::escaped(&path)));
                self.next_poll = Instant::now() + ROOT_POLL;
            }
            _ if mask.contains(EventMask::IGNORED) => self.tree.forget(wd),
            _ => {}
        }
        Ok(())
    }

    fn dir_event(
        &mut self,
        mask: EventMask,
        cookie: u32,
        path: PathBuf,
        out: &mut Vec<FileEvent>,
    ) -> Result<(), WatchError> {
        if mask.contains(EventMask::MOVED_FROM) {
            self.moves.push(PendingMove {
                cookie,
                path,
                at: Instant::now(),
            });
            return Ok(());
        }
        if mask.contains(EventMask::MOVED_TO)
            && let Some(i) = self.moves.iter().position(|m| m.cookie == cookie)
        {
            let from = self.moves.remove(i).path;
            return self.rename_dir(&from, &path, out);
        }
        if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            self.settle_moves_under(&path, out);
            if self.tree.wants(&path) {
                self.tree
                    .add(&path, false, Stat::Full, Some((EventKind::Create, out)))?;
            }
        } else if mask.contains(EventMask::DELETE) {
            self.dir_gone(&path, out);
        }
        Ok(())
    }

    /// A directory has left the tree (deleted, or moved out): what its files held is
    /// released, its watches dropped, and its files reported deleted.
    pub(super) fn dir_gone(&mut self, dir: &Path, out: &mut Vec<FileEvent>) {
        self.holds.release_under(dir, out);
        out.extend(self.tree.drop_dir(dir).into_keys().map(|path| FileEvent {
            path,
            kind: EventKind::Delete,
        }));
    }

    /// A directory appears at `path` while one that stood there (or under it) was moved
    /// away and its pair is still awaited: that one has left the tree; settle it now,
    /// before the new directory takes its place.
    fn settle_moves_under(&mut self, path: &Path, out: &mut Vec<FileEvent>) {
        while let Some(i) = self.moves.iter().position(|m| m.path.starts_with(path)) {
            let gone = self.moves.remove(i).path;
            self.dir_gone(&gone, out);
        }
    }

    /// A directory renamed inside the tree: old names deleted, new names moved; its
    /// watches are kept (re-adding returns the same descriptors) under the new path.
    fn rename_dir(&mut self, from: &Path, to: &Path, out: &mut Vec<FileEvent>) -> Result<(), WatchError> {
        self.holds.release_under(from, out);
        let mut moved = Vec::new();
        let gone = self.tree.rename(from, to, &mut moved)?;
        out.extend(gone.into_keys().map(|path| FileEvent {
            path,
            kind: EventKind::Delete,
        }));
        out.extend(moved);
        Ok(())
    }
}
