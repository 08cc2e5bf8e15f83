//! The watched tree: each watched directory with its watch descriptor and the
//! state of the files in it (the snapshot, kept per directory so a file costs a
//! name, not a full path). Watches are always added before a directory is read,
//! so nothing created meanwhile is missed.

use super::{DirFilter, FileEvent, WatchError, sysctl};
use crate::events::EventKind;
use crate::snapshot::files::Builder;
pub(super) use crate::snapshot::files::Files;
use crate::snapshot::{FileState, Snapshot};
use inotify::{WatchDescriptor, WatchMask, Watches};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{debug, warn};

pub(super) const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MODIFY)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::EXCL_UNLINK);

struct Dir {
    /// Its watch; `None` when it has none: out of watches (then it is polled), or
    /// dropped by the kernel (deleted or unmounted: its parent's event or the mount
    /// table's change settles it, and its files are kept for that).
    wd: Option<WatchDescriptor>,
    files: Files,
}

/// A directory taken out of the tree: its path and descriptor.
type Detached = (Arc<Path>, Option<WatchDescriptor>);

/// What adding a watch gave.
enum Watched {
    Yes(WatchDescriptor),
    /// Out of watches (`ENOSPC`): recorded, and polled.
    NoSpace,
    /// It vanished, or cannot be watched: skipped.
    No,
}

/// What the tree holds in memory, by structure (bytes are what the structures
/// reserve, not counting the allocator's own overhead per block).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Footprint {
    /// Directories recorded.
    pub dirs: usize,
    /// Files recorded.
    pub files: usize,
    /// File entries (name span and state: 40 bytes each).
    pub entry_bytes: usize,
    /// File names (one arena per directory).
    pub name_bytes: usize,
    /// Per directory: its path (shared by both maps), its map slots and descriptor.
    pub dir_bytes: usize,
}

/// Whether files found while walking are stat'ed (size and mtime) or only named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stat {
    /// `stat` each file.
    Full,
    /// Record the name and inode only; size and mtime are filled in later.
    Deferred,
}

/// Watch maps and file snapshot of one inotify instance.
pub(super) struct Tree {
    watches: Watches,
    /// Each directory's path is one allocation, shared by both maps.
    by_wd: HashMap<WatchDescriptor, Arc<Path>>,
    dirs: BTreeMap<Arc<Path>, Dir>,
    filter: DirFilter,
    /// Directories recorded without a watch because the watch limit was reached.
    no_space: std::collections::BTreeSet<PathBuf>,
    /// Whether running out of watches was logged.
    warned_no_space: bool,
    /// Directories that could not be watched for another reason than the limit.
    unwatchable: Arc<Unwatchable>,
}

/// The directories a tree could not watch for a reason other than the watch limit or
/// a race (a directory gone or replaced meanwhile): no permission, a path longer
/// than `PATH_MAX`. Changes under them are not seen: each of the first
/// [`Unwatchable::WARN`] is a warning, and how many there are and the first are in
/// the listener's health (`status`). A directory leaves the set once it is watched
/// (a later rescan or poll succeeds) or is gone; at most [`Unwatchable::KEPT`] are
/// kept, past which the count is a lower bound.
#[derive(Debug, Default)]
pub(super) struct Unwatchable {
    dirs: std::sync::Mutex<BTreeMap<PathBuf, String>>,
    warned: std::sync::atomic::AtomicUsize,
    overflowed: std::sync::atomic::AtomicBool,
}

impl Unwatchable {
    /// Directories warned about one by one; the others are logged at debug.
    const WARN: usize = 10;
    /// Directories kept at most.
    const KEPT: usize = 1024;

    /// Notes that `dir` could not be watched (`e` from `inotify_add_watch`).
    pub(super) fn record(&self, dir: &Path, e: &std::io::Error) {
        use std::sync::atomic::Ordering;
        let path = crate::names::escaped(dir);
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) {
            debug!(path = %path, "not watched: {e}");
            dirs.remove(dir); // gone meanwhile
            return;
        }
        if dirs.contains_key(dir) {
            return; // a retry (a rescan, a poll): said already
        }
        if dirs.len() >= Self::KEPT {
            self.overflowed.store(true, Ordering::Relaxed);
        } else {
            dirs.insert(dir.to_path_buf(), e.to_string());
        }
        match self.warned.fetch_add(1, Ordering::Relaxed) + 1 {
            n if n < Self::WARN => warn!(path = %path, "not watched, changes under it are not seen: {e}"),
            Self::WARN => warn!(
                path = %path,
                "not watched, changes under it are not seen: {e} (further directories that cannot be watched are logged at debug)"
            ),
            _ => debug!(path = %path, "not watched: {e}"),
        }
    }

    /// Whether `dir` is among the directories that could not be watched.
    pub(super) fn contains(&self, dir: &Path) -> bool {
        let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        dirs.contains_key(dir)
    }

    /// Those of the directories that could not be watched that are `dir` or directly
    /// in it: what a change of `dir`'s mode or owner may have opened.
    pub(super) fn at_or_in(&self, dir: &Path) -> Vec<PathBuf> {
        let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        use std::ops::Bound;
        dirs.range::<Path, _>((Bound::Included(dir), Bound::Unbounded))
            .take_while(|(d, _)| d.starts_with(dir))
            .filter(|(d, _)| **d == *dir || d.parent() == Some(dir))
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// The entries for `kept`, to be put back by [`Unwatchable::restore`] after a
    /// [`Unwatchable::forget_under`] that should not have dropped them.
    fn saved(&self, kept: &[Arc<Path>]) -> Vec<(PathBuf, String)> {
        let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .filter_map(|d| dirs.get(&**d).map(|why| (d.to_path_buf(), why.clone())))
            .collect()
    }

    /// Puts back entries [`Unwatchable::saved`] took, without a new warning.
    fn restore(&self, saved: Vec<(PathBuf, String)>) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        dirs.extend(saved);
    }

    /// Notes that `dir` is watched now.
    pub(super) fn watched(&self, dir: &Path) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if !dirs.is_empty() {
            dirs.remove(dir);
        }
    }

    /// Forgets the directories at or under `dir` (removed or renamed from the tree).
    pub(super) fn forget_under(&self, dir: &Path) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if !dirs.is_empty() {
            dirs.retain(|d, _| !d.starts_with(dir));
        }
    }

    /// The health line, while a directory that could not be watched is still there.
    pub(super) fn health(&self) -> Option<String> {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if dirs.is_empty() {
            return None;
        }
        // Gone when the system says so; a path too long to look at may still be there.
        dirs.retain(|dir, _| match std::fs::symlink_metadata(dir) {
            Ok(meta) => meta.is_dir(),
            Err(e) => !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)),
        });
        let (first, why) = dirs.first_key_value()?;
        let more = self.overflowed.load(std::sync::atomic::Ordering::Relaxed);
        Some(format!(
            "{}{} directories could not be watched and changes under them are not seen (the first: {}: {why})",
            if more { "at least " } else { "" },
            dirs.len(),
            crate::names::escaped(first),
        ))
    }
}

/// The directories at or under `dir` in a map ordered by path.
fn subtree<'a, V>(
    map: &'a BTreeMap<Arc<Path>, V>,
    dir: &'a Path,
) -> impl Iterator<Item = (&'a Arc<Path>, &'a V)> {
    map.range::<Path, _>((std::ops::Bound::Included(dir), std::ops::Bound::Unbounded))
        .take_while(move |(p, _)| p.starts_with(dir))
}

impl Tree {
    pub fn new(watches: Watches, filter: DirFilter) -> Self {
        Tree {
            watches,
            by_wd: HashMap::new(),
            dirs: BTreeMap::new(),
            filter,
            no_space: Default::default(),
            warned_no_space: false,
            unwatchable: Default::default(),
        }
    }

    pub fn watch_count(&self) -> usize {
        self.by_wd.len()
    }

    pub fn dir_of(&self, wd: &WatchDescriptor) -> Option<&Arc<Path>> {
        self.by_wd.get(wd)
    }

    pub fn is_watched(&self, dir: &Path) -> bool {
        self.dirs.contains_key(dir)
    }

    /// Whether `dir` is recorded with an inotify watch (not polled for want of one).
    pub fn has_watch(&self, dir: &Path) -> bool {
        self.dirs.get(dir).is_some_and(|d| d.wd.is_some())
    }

    pub fn wants(&self, dir: &Path) -> bool {
        (self.filter)(dir)
    }

    /// Forgets a descriptor the kernel dropped (`IN_IGNORED`): the directory keeps its
    /// files until its parent's event or a rescan says what became of them (an unmount
    /// sends no event to the parent).
    pub fn forget(&mut self, wd: &WatchDescriptor) {
        if let Some(path) = self.by_wd.remove(wd)
            && let Some(dir) = self.dirs.get_mut(&path)
            && dir.wd.as_ref() == Some(wd)
        {
            dir.wd = None;
        }
    }

    /// The directories recorded without a watch (out of watches) whose parent has
    /// one: polling each of these subtrees covers them all.
    pub fn unwatched_tops(&self) -> Vec<PathBuf> {
        self.no_space
            .iter()
            .filter(|d| d.parent().is_none_or(|p| !self.no_space.contains(p)))
            .cloned()
            .collect()
    }

    /// How many directories have no watch for want of one.
    pub fn unwatched_count(&self) -> usize {
        self.no_space.len()
    }

    /// Watches again, as a directory made, those of the directories that could not be
    /// watched (no permission, say) that are `dir` or directly in it: `dir`'s mode or
    /// owner changed. What they hold is reported as `kind` into `out`.
    pub fn retry_unwatchable(
        &mut self,
        dir: &Path,
        kind: EventKind,
        out: &mut Vec<FileEvent>,
    ) -> Result<(), WatchError> {
        for d in self.unwatchable.at_or_in(dir) {
            // Still not watched (adding `dir` walks into those in it).
            if self.unwatchable.contains(&d) {
                self.add(&d, false, Stat::Full, Some((kind, &mut *out)))?;
            }
        }
        Ok(())
    }

    /// The health line about directories that could not be watched, if any.
    pub fn unwatchable(&self) -> Option<String> {
        self.unwatchable.health()
    }

    fn files_of<'a>(&mut self, path: &'a Path) -> Option<(&mut Files, &'a OsStr)> {
        let (parent, name) = (path.parent()?, path.file_name()?);
        Some((&mut self.dirs.get_mut(parent)?.files, name))
    }

    /// Records the current state of a file; returns its metadata (not following a symlink).
    pub fn refresh(&mut self, path: &Path) -> Option<std::fs::Metadata> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.is_dir()
            && let Some((files, name)) = self.files_of(path)
        {
            files.insert(name, FileState::of(&meta));
        }
        Some(meta)
    }

    /// Forgets a file.
    pub fn remove_file(&mut self, path: &Path) {
        if let Some((files, name)) = self.files_of(path) {
            files.remove(name);
        }
    }

    /// Watches `top` and the wanted directories under it and records their files,
    /// reporting each file found as `kind` into `out` when given. With `strict`, a
    /// failure to watch `top` itself is an error; otherwise vanished directories are skipped.
    pub fn add(
        &mut self,
        top: &Path,
        strict: bool,
        stat: Stat,
        mut report: Option<(EventKind, &mut Vec<FileEvent>)>,
    ) -> Result<(), WatchError> {
        let mut stack = vec![top.to_owned()];
        while let Some(dir) = stack.pop() {
            let dir: Arc<Path> = dir.into();
            let wd = match self.watch(&dir, strict && *dir == *top)? {
                Watched::Yes(wd) => Some(wd),
                Watched::NoSpace => None,
                Watched::No => continue,
            };
            let files = self.read(&dir, stat, &mut stack);
            if let Some((kind, out)) = report.as_mut() {
                out.extend(files.iter().map(|(name, _)| FileEvent {
                    path: dir.join(name),
                    kind: *kind,
                }));
            }
            self.dirs.insert(dir, Dir { wd, files });
        }
        Ok(())
    }

    /// Stops watching `dir` and everything under it and returns the files they held.
    pub fn drop_dir(&mut self, dir: &Path) -> Snapshot {
        let (wds, files) = self.detach(dir);
        self.release(wds);
        files
    }

    /// Removes the watches that still stand for the directory they were detached as
    /// (a descriptor re-added under another path, after a rename, is kept).
    fn release(&mut self, wds: Vec<Detached>) {
        for (path, wd) in wds {
            self.no_space.remove(&*path);
            let Some(wd) = wd else { continue };
            if self.by_wd.get(&wd) == Some(&path) {
                self.by_wd.remove(&wd);
                let _ = self.watches.remove(wd);
            }
        }
    }

    /// A directory renamed inside the tree: returns the old file paths; its watches are
    /// kept (re-adding the new path returns the same descriptors) and its files reported
    /// under the new path as `Move` into `out`.
    pub fn rename(
        &mut self,
        from: &Path,
        to: &Path,
        out: &mut Vec<FileEvent>,
    ) -> Result<Snapshot, WatchError> {
        let (wds, old_files) = self.detach(from);
        if self.wants(to) {
            self.add(to, false, Stat::Full, Some((EventKind::Move, out)))?;
        }
        self.release(wds);
        Ok(old_files)
    }

    /// Removes `dir` and the directories under it from the tree (not their watches);
    /// returns each one's path and descriptor, and their files.
    fn detach(&mut self, dir: &Path) -> (Vec<Detached>, Snapshot) {
        self.unwatchable.forget_under(dir);
        let paths: Vec<Arc<Path>> = subtree(&self.dirs, dir).map(|(p, _)| p.clone()).collect();
        let mut wds = Vec::with_capacity(paths.len());
        let mut files = Snapshot::new();
        for path in paths {
            let d = self.dirs.remove(&path).expect("listed");
            files.extend(d.files.iter().map(|(name, state)| (path.join(name), *state)));
            wds.push((path, d.wd));
        }
        (wds, files)
    }

    /// The files at or under `dir`, by path.
    pub fn subtree_snapshot(&self, dir: &Path) -> Snapshot {
        flatten(subtree(&self.dirs, dir))
    }

    /// Re-reads `dir` from disk: watches directories that appeared, drops the ones
    /// that vanished, and returns the file changes against the snapshot. `None`, with
    /// nothing changed, when `dir` itself cannot be watched (gone, or not a directory):
    /// the caller says what became of it. A `root` (a route path) is watched through
    /// the symlink it may be, as when it was added.
    pub fn rescan(&mut self, dir: &Path, root: bool) -> Result<Option<Vec<FileEvent>>, WatchError> {
        let mut changes = Vec::new();
        let mut visited = Vec::new();
        let mut unwatched = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let d: Arc<Path> = d.into();
            let follow = root && *d == *dir;
            let wd = match self.watch_as(&d, false, follow)? {
                Watched::Yes(wd) => Some(wd),
                Watched::NoSpace => None,
                Watched::No if *d == *dir => return Ok(None),
                Watched::No => {
                    unwatched.push(d);
                    continue;
                }
            };
            let fresh = self.read(&d, Stat::Full, &mut stack);
            let old = match self.dirs.remove(&d) {
                Some(old) => {
                    // Another inode at this path now (a mount over it, or one gone):
                    // the old watch is stale.
                    if old.wd.is_some() && old.wd != wd {
                        self.release(vec![(d.clone(), old.wd)]);
                    }
                    old.files
                }
                None => Default::default(),
            };
            diff_dir(&d, &old, &fresh, &mut changes);
            visited.push((d, Dir { wd, files: fresh }));
        }
        // Whatever is still recorded under `dir` was not found on disk: gone. (A directory
        // renamed meanwhile keeps its re-added watch: `release` matches exact paths.)
        // Those still there and still not watchable stay known as such.
        let still = self.unwatchable.saved(&unwatched);
        let gone = self.drop_dir(dir);
        self.unwatchable.restore(still);
        for path in gone.into_keys() {
            changes.push(FileEvent {
                path,
                kind: EventKind::Delete,
            });
        }
        for (path, d) in visited {
            match &d.wd {
                Some(wd) => {
                    self.by_wd.insert(wd.clone(), path.clone());
                    self.no_space.remove(&*path);
                }
                None => {
                    self.no_space.insert(path.to_path_buf());
                }
            }
            self.dirs.insert(path, d);
        }
        Ok(Some(changes))
    }

    /// The whole snapshot as one map by absolute path.
    #[cfg(test)]
    pub fn snapshot(&self) -> Snapshot {
        flatten(self.dirs.iter())
    }

    /// Each directory's path and files, in path order.
    pub fn dirs(&self) -> impl Iterator<Item = (&Path, &Files)> {
        self.dirs.iter().map(|(p, d)| (&**p, &d.files))
    }

    /// A copy of the snapshot by directory (directories without files left out).
    pub fn by_dir(&self) -> crate::snapshot::Dirs {
        let dirs = self.dirs().filter(|(_, f)| f.len() > 0);
        crate::snapshot::Dirs::from_sorted(dirs.map(|(p, f)| (p.to_owned(), f.clone())).collect())
    }

    /// What the tree holds, by structure.
    pub fn footprint(&self) -> Footprint {
        let mut f = Footprint {
            dirs: self.dirs.len(),
            ..Footprint::default()
        };
        for (path, d) in &self.dirs {
            let (entries, names) = d.files.heap_bytes();
            f.files += d.files.len();
            f.entry_bytes += entries;
            f.name_bytes += names;
            // The path's shared allocation (two counters and the bytes), a B-tree slot
            // (key and value) and a hash-map slot (descriptor and key).
            f.dir_bytes += 16 + path.as_os_str().len() + size_of::<(Arc<Path>, Dir)>();
            f.dir_bytes += size_of::<(WatchDescriptor, Arc<Path>)>();
        }
        f
    }

    /// The directories holding files whose size and mtime are not known yet.
    pub fn unknown_dirs(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .filter(|(_, d)| d.files.states().any(|s| !s.is_known()))
            .map(|(p, _)| p.to_path_buf())
            .collect()
    }

    /// Fills in states found by [`stat_dir`], for files still unknown with the same inode
    /// (a file an event refreshed or replaced meanwhile keeps its newer state). A file
    /// changed at or after `changed_before` (ns since the epoch, by ctime) stays unknown:
    /// its event may yet be lost to an overflow, and an unknown state never hides it.
    pub fn complete(&mut self, found: Vec<(PathBuf, Files)>, changed_before: i64) {
        for (dir, states) in found {
            let Some(d) = self.dirs.get_mut(dir.as_path()) else {
                continue;
            };
            for (name, state) in states.iter() {
                if let Some(current) = d.files.get_mut(name)
                    && !current.is_known()
                    && current.ino == state.ino
                    && state.ctime_ns < changed_before
                {
                    *current = *state;
                }
            }
        }
    }

    /// Adds (or re-adds) the watch of `dir`. `Ok(None)` when it vanished or cannot be
    /// watched and `strict` is off. A `strict` one (a route path) is watched through a
    /// symlink it may be; any other is never followed.
    fn watch(&mut self, dir: &Arc<Path>, strict: bool) -> Result<Watched, WatchError> {
        self.watch_as(dir, strict, strict)
    }

    /// [`Tree::watch`], following a symlink at `dir` itself when `follow`.
    fn watch_as(&mut self, dir: &Arc<Path>, strict: bool, follow: bool) -> Result<Watched, WatchError> {
        let mask = if follow {
            MASK.difference(WatchMask::DONT_FOLLOW)
        } else {
            MASK
        };
        match self.watches.add(&**dir, mask) {
            Ok(wd) => {
                // Re-adding a directory known under an old name (a rename) returns its
                // descriptor: the new path wins; the old entry is reported and dropped by the caller.
                self.by_wd.insert(wd.clone(), dir.clone());
                self.no_space.remove(&**dir);
                self.unwatchable.watched(dir);
                Ok(Watched::Yes(wd))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                self.out_of_watches(dir);
                Ok(Watched::NoSpace)
            }
            Err(e) if strict => Err(WatchError::Root {
                path: dir.to_path_buf(),
                source: e,
            }),
            Err(e) => {
                self.unwatchable.record(dir, &e);
                Ok(Watched::No)
            }
        }
    }

    /// Records `dir` as having no watch for want of one (it is polled), and says so
    /// the first time.
    fn out_of_watches(&mut self, dir: &Path) {
        if !std::mem::replace(&mut self.warned_no_space, true) {
            let limit = sysctl("max_user_watches");
            warn!(
                path = %crate::names::escaped(dir),
                "out of inotify watches (fs.inotify.max_user_watches is {limit}): directories \
                 without a watch are polled; raise it with `sysctl fs.inotify.max_user_watches=<more>`"
            );
        }
        self.no_space.insert(dir.to_path_buf());
    }

    /// Reads one directory: wanted subdirectories go on `stack`, files are returned.
    fn read(&self, dir: &Path, stat: Stat, stack: &mut Vec<PathBuf>) -> Files {
        read_dir(dir, stat, &self.filter, stack)
    }

    /// [`Tree::add`] for a route path at start-up (nothing reported): `top` is watched
    /// and read here, the directories under it by [`super::walk`] on several threads.
    pub fn add_walked(&mut self, top: &Path, stat: Stat) -> Result<(), WatchError> {
        let dir: Arc<Path> = top.into();
        let wd = match self.watch(&dir, true)? {
            Watched::Yes(wd) => Some(wd),
            Watched::NoSpace => None,
            Watched::No => return Ok(()),
        };
        let mut stack = Vec::new();
        let files = self.read(top, stat, &mut stack);
        self.dirs.insert(dir, Dir { wd, files });
        let (watches, filter, unwatchable) = (
            self.watches.clone(),
            self.filter.clone(),
            self.unwatchable.clone(),
        );
        super::walk::walk(&watches, (&filter, &unwatchable), stat, stack, |found| {
            self.record(found)
        });
        Ok(())
    }

    /// Records a directory a walker watched (or found no watch for) and read.
    fn record(&mut self, found: super::walk::Found) {
        match &found.wd {
            Some(wd) => {
                self.by_wd.insert(wd.clone(), found.dir.clone());
                self.no_space.remove(&*found.dir);
            }
            None => self.out_of_watches(&found.dir),
        }
        self.dirs.insert(
            found.dir,
            Dir {
                wd: found.wd,
                files: found.files,
            },
        );
    }
}

/// Reads one directory: wanted subdirectories go on `stack`, files are returned.
pub(super) fn read_dir(dir: &Path, stat: Stat, filter: &DirFilter, stack: &mut Vec<PathBuf>) -> Files {
    let mut files = Builder::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files.finish();
    };
    for entry in entries.flatten() {
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            let path = entry.path();
            if filter(&path) {
                stack.push(path);
            }
            continue;
        }
        let state = match stat {
            Stat::Deferred => FileState::unknown(entry.ino()),
            Stat::Full => match entry.metadata() {
                Ok(meta) => FileState::of(&meta),
                Err(_) => continue,
            },
        };
        files.push(&entry.file_name(), state);
    }
    files.finish()
}

/// The files of `dirs` by full path. Collected, then built at once: the map's own
/// sort of nearly ordered entries is one pass, where inserting each would search.
fn flatten<'a>(dirs: impl Iterator<Item = (&'a Arc<Path>, &'a Dir)>) -> Snapshot {
    let mut flat = Vec::new();
    for (path, d) in dirs {
        flat.extend(d.files.iter().map(|(name, state)| (path.join(name), *state)));
    }
    flat.into_iter().collect()
}

/// The changes from `old` to `new`, the files of directory `dir`, into `out`:
/// created, modified (any field of the state differs) and deleted files, in name order.
fn diff_dir(dir: &Path, old: &Files, new: &Files, out: &mut Vec<FileEvent>) {
    old.merge(new, |name, before, after| {
        let kind = match (before, after) {
            (None, Some(_)) => EventKind::Create,
            (Some(b), Some(a)) if b != a => EventKind::Modify,
            (Some(_), None) => EventKind::Delete,
            _ => return,
        };
        out.push(FileEvent {
            path: dir.join(name),
            kind,
        });
    });
}

/// Stats the files of one directory (blocking): the deferred half of a fast start.
pub(super) fn stat_dir(dir: PathBuf) -> (PathBuf, Files) {
    let mut files = Builder::default();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if let Ok(meta) = entry.metadata()
            && !meta.is_dir()
        {
            files.push(&entry.file_name(), FileState::of(&meta));
        }
    }
    (dir, files.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_cannot_be_watched_counts_once_and_until_it_is_watched_or_gone() {
        let dir = tempfile::tempdir().unwrap();
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        let unwatchable = Unwatchable::default();
        assert_eq!(unwatchable.health(), None);
        // A rescan or a poll retries it: still one.
        unwatchable.record(dir.path(), &denied);
        unwatchable.record(dir.path(), &denied);
        let health = unwatchable.health().expect("degraded");
        assert!(
            health.starts_with("1 directories could not be watched"),
            "{health}"
        );
        unwatchable.watched(dir.path());
        assert_eq!(unwatchable.health(), None, "watched now");
        unwatchable.record(&dir.path().join("gone"), &denied);
        assert_eq!(unwatchable.health(), None, "no longer there");
        // A race (gone before its watch) is not counted at all.
        unwatchable.record(dir.path(), &std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(unwatchable.health(), None);
    }
    use std::sync::Arc;

    fn tree() -> Tree {
        let inotify = inotify::Inotify::init().unwrap();
        Tree::new(inotify.watches(), Arc::new(|_: &Path| true))
    }

    #[test]
    fn deferred_stat_fills_in_unknown_files_but_keeps_newer_states() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        let mut t = tree();
        t.add(dir.path(), true, Stat::Deferred, None).unwrap();
        assert!(t.snapshot().values().all(|s| !s.is_known()));
        let found: Vec<_> = t.unknown_dirs().into_iter().map(stat_dir).collect();
        // An event refreshed b after the pass read it: its newer state must win.
        std::fs::write(&b, "longer").unwrap();
        t.refresh(&b);
        t.complete(found, i64::MAX);
        let snap = t.snapshot();
        assert_eq!(snap[&a].size, 1);
        assert_eq!(snap[&b].size, 6);
        assert!(t.unknown_dirs().is_empty());
    }

    #[test]
    fn deferred_stat_leaves_files_changed_since_setup_unknown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("recent"), "1").unwrap();
        let mut t = tree();
        t.add(dir.path(), true, Stat::Deferred, None).unwrap();
        let found: Vec<_> = t.unknown_dirs().into_iter().map(stat_dir).collect();
        // The file's ctime is after the cutoff: its event may have been lost, so no state
        // is filled in that could make a later rescan think it unchanged.
        t.complete(found, 0);
        assert!(!t.snapshot()[&dir.path().join("recent")].is_known());
    }

    fn dir_of(entries: &std::collections::BTreeMap<Vec<u8>, FileState>) -> Files {
        let mut b = Builder::default();
        for (name, state) in entries {
            b.push(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name), *state);
        }
        b.finish()
    }

    fn flat(dir: &Path, entries: &std::collections::BTreeMap<Vec<u8>, FileState>) -> Snapshot {
        use std::os::unix::ffi::OsStrExt;
        entries
            .iter()
            .map(|(n, s)| (dir.join(OsStr::from_bytes(n)), *s))
            .collect()
    }

    fn entries() -> impl proptest::strategy::Strategy<Value = std::collections::BTreeMap<Vec<u8>, FileState>>
    {
        use proptest::prelude::*;
        // Names of any bytes but `/` and NUL (not UTF-8 included); few distinct states.
        let name = prop::collection::vec(1u8..=255, 1..5).prop_map(|v| {
            v.into_iter()
                .map(|b| if b == b'/' { 0xfe } else { b })
                .collect::<Vec<u8>>()
        });
        let state = (0u64..3, 0u64..3, -2i64..2, -2i64..2).prop_map(|(ino, size, m, c)| FileState {
            ino,
            size,
            mtime_ns: m,
            ctime_ns: c,
        });
        prop::collection::btree_map(name, state, 0..24)
    }

    proptest::proptest! {
        /// The per-directory diff of the compact form reports exactly what
        /// [`crate::snapshot::diff`] reports on the same files by full path.
        #[test]
        fn compact_diff_matches_the_flat_diff(old in entries(), new in entries()) {
            let dir = Path::new(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"/w/d\xff"));
            let mut got = Vec::new();
            diff_dir(dir, &dir_of(&old), &dir_of(&new), &mut got);
            let mut got: Vec<(PathBuf, EventKind)> = got.into_iter().map(|e| (e.path, e.kind)).collect();
            let mut want = crate::snapshot::diff(&flat(dir, &old), &flat(dir, &new));
            got.sort_by(|a, b| a.0.cmp(&b.0));
            want.sort_by(|a, b| a.0.cmp(&b.0));
            proptest::prop_assert_eq!(got, want);
        }
    }

    /// The threaded start-up walk finds exactly what the one-thread walk does: every
    /// directory watched (hidden ones left out by the filter) and every file's state.
    #[test]
    fn threaded_walk_records_what_the_sequential_walk_does() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        for i in 0..6 {
            for j in 0..5 {
                let sub = dir.path().join(format!("d{i}/e{j}"));
                std::fs::create_dir_all(sub.join(".hidden")).unwrap();
                std::fs::write(sub.join("f.md"), "1").unwrap();
                std::fs::write(sub.join(OsStr::from_bytes(b"\xff\xfe")), "22").unwrap();
                std::fs::write(sub.join(".hidden/x"), "1").unwrap();
            }
            std::fs::write(dir.path().join(format!("d{i}/top")), "333").unwrap();
        }
        let filtered = || {
            let inotify = inotify::Inotify::init().unwrap();
            let filter: DirFilter =
                Arc::new(|p: &Path| !p.file_name().is_some_and(|n| n.as_bytes().starts_with(b".")));
            (Tree::new(inotify.watches(), filter), inotify)
        };
        let ((mut one, _a), (mut many, _b)) = (filtered(), filtered());
        one.add(dir.path(), true, Stat::Full, None).unwrap();
        many.add_walked(dir.path(), Stat::Full).unwrap();
        assert_eq!(many.snapshot(), one.snapshot());
        assert_eq!(many.snapshot().len(), 6 * 5 * 2 + 6);
        assert_eq!(many.watch_count(), one.watch_count());
        assert_eq!(many.watch_count(), 1 + 6 + 6 * 5);
        assert!(!many.is_watched(&dir.path().join("d0/e0/.hidden")));
    }

    #[test]
    fn regression_a_panic_in_the_threaded_walk_reaches_the_caller_instead_of_hanging() {
        // A walker that panicked never handed its directory back, and the others
        // waited for it forever: start-up hung with no error.
        let dir = tempfile::tempdir().unwrap();
        for i in 0..8 {
            std::fs::create_dir_all(dir.path().join(format!("d{i}/e"))).unwrap();
        }
        let root = dir.path().to_owned();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let inotify = inotify::Inotify::init().unwrap();
            let bad = root.join("d3/e");
            let filter: DirFilter = Arc::new(move |p: &Path| {
                assert!(p != bad, "a filter that fails on one directory");
                true
            });
            let mut tree = Tree::new(inotify.watches(), filter);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tree.add_walked(&root, Stat::Full).map(|_| ())
            }));
            let _ = done_tx.send(outcome.is_err());
        });
        let panicked = done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the walk ended (it hung)");
        assert!(panicked, "the filter's panic reached the caller");
    }

    #[test]
    fn rescan_reports_exactly_the_differences() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["same", "changed", "gone"] {
            std::fs::write(dir.path().join(name), "1").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut t = tree();
        t.add(dir.path(), true, Stat::Full, None).unwrap();
        std::fs::write(dir.path().join("changed"), "22").unwrap();
        std::fs::remove_file(dir.path().join("gone")).unwrap();
        std::fs::write(dir.path().join("sub/new"), "1").unwrap();
        let mut got: Vec<String> = t
            .rescan(dir.path(), true)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e.path.strip_prefix(dir.path()).unwrap().display(),
                    e.kind
                )
            })
            .collect();
        got.sort();
        assert_eq!(got, ["changed modify", "gone delete", "sub/new create"]);
        assert!(
            t.rescan(dir.path(), true).unwrap().unwrap().is_empty(),
            "a second rescan finds nothing"
        );
    }
}
