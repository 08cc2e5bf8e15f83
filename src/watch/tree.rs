//! The watched tree: which directory each watch descriptor stands for, and the
//! snapshot of every file under the watched directories. Watches are always
//! added before a directory is read, so nothing created meanwhile is missed.

use super::{DirFilter, FileEvent, WatchError, sysctl};
use crate::events::EventKind;
use crate::snapshot::{self, FileState, Snapshot};
use inotify::{WatchDescriptor, WatchMask, Watches};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use tracing::debug;

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MODIFY)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::EXCL_UNLINK);

/// Watch maps and file snapshot of one inotify instance.
pub(super) struct Tree {
    watches: Watches,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: BTreeMap<PathBuf, WatchDescriptor>,
    /// Every file under the watched directories.
    pub files: Snapshot,
    filter: DirFilter,
}

impl Tree {
    pub fn new(watches: Watches, filter: DirFilter) -> Self {
        Tree {
            watches,
            by_wd: HashMap::new(),
            by_path: BTreeMap::new(),
            files: Snapshot::new(),
            filter,
        }
    }

    pub fn watch_count(&self) -> usize {
        self.by_wd.len()
    }

    pub fn dir_of(&self, wd: &WatchDescriptor) -> Option<&PathBuf> {
        self.by_wd.get(wd)
    }

    pub fn is_watched(&self, dir: &Path) -> bool {
        self.by_path.contains_key(dir)
    }

    pub fn wants(&self, dir: &Path) -> bool {
        (self.filter)(dir)
    }

    /// Forgets a descriptor the kernel dropped (`IN_IGNORED`).
    pub fn forget(&mut self, wd: &WatchDescriptor) {
        if let Some(path) = self.by_wd.remove(wd)
            && self.by_path.get(&path) == Some(wd)
        {
            self.by_path.remove(&path);
        }
    }

    /// Records the current state of a file; returns whether it exists.
    pub fn refresh(&mut self, path: &Path) -> bool {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.is_dir() => {
                self.files.insert(path.to_owned(), FileState::of(&meta));
                true
            }
            _ => false,
        }
    }

    /// Watches `top` and the wanted directories under it and records their files,
    /// reporting each file found as `kind` into `out` when given. With `strict`, a
    /// failure to watch `top` itself is an error; otherwise vanished directories are skipped.
    pub fn add(
        &mut self,
        top: &Path,
        strict: bool,
        mut report: Option<(EventKind, &mut Vec<FileEvent>)>,
    ) -> Result<(), WatchError> {
        let mut found = Vec::new();
        self.walk(top, strict, &mut |path, state| found.push((path, state)))?;
        for (path, state) in found {
            if let Some((kind, out)) = report.as_mut() {
                out.push(FileEvent {
                    path: path.clone(),
                    kind: *kind,
                });
            }
            self.files.insert(path, state);
        }
        Ok(())
    }

    /// Stops watching `dir` and everything under it; removes its files from the
    /// snapshot and returns their paths.
    pub fn drop_dir(&mut self, dir: &Path) -> Vec<PathBuf> {
        let dirs: Vec<(PathBuf, WatchDescriptor)> = self
            .by_path
            .range::<Path, _>((std::ops::Bound::Included(dir), std::ops::Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(dir))
            .map(|(p, wd)| (p.clone(), wd.clone()))
            .collect();
        for (path, wd) in dirs {
            self.by_path.remove(&path);
            self.by_wd.remove(&wd);
            let _ = self.watches.remove(wd);
        }
        snapshot::take_under(&mut self.files, dir)
    }

    /// Re-reads `dir` from disk: watches directories that appeared, drops the ones
    /// that vanished, and returns the file changes against the snapshot.
    pub fn rescan(&mut self, dir: &Path) -> Result<Vec<FileEvent>, WatchError> {
        let mut fresh = Snapshot::new();
        let mut seen_dirs = HashSet::new();
        seen_dirs.insert(dir.to_owned());
        self.walk(dir, false, &mut |path, state| {
            fresh.insert(path, state);
        })?;
        let stale: Vec<PathBuf> = self
            .by_path
            .range::<Path, _>((std::ops::Bound::Excluded(dir), std::ops::Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(dir))
            .filter(|(p, _)| !p.exists())
            .map(|(p, _)| p.clone())
            .collect();
        for gone in stale {
            self.drop_dir(&gone);
        }
        let old: Snapshot = snapshot::under(&self.files, dir)
            .map(|(p, s)| (p.clone(), *s))
            .collect();
        let changes = snapshot::diff(&old, &fresh);
        for (path, kind) in &changes {
            match kind {
                EventKind::Delete => self.files.remove(path),
                _ => self.files.insert(path.clone(), fresh[path]),
            };
        }
        Ok(changes
            .into_iter()
            .map(|(path, kind)| FileEvent { path, kind })
            .collect())
    }

    fn watch(&mut self, dir: &Path) -> std::io::Result<()> {
        let wd = self.watches.add(dir, MASK)?;
        // Re-adding a watched directory (after a rename) returns its descriptor: the new path wins.
        if let Some(old) = self.by_wd.insert(wd.clone(), dir.to_owned())
            && old != dir
            && self.by_path.get(&old) == Some(&wd)
        {
            self.by_path.remove(&old);
        }
        self.by_path.insert(dir.to_owned(), wd);
        Ok(())
    }

    /// Depth-first: watch a directory, then read it; files go to `visit`.
    fn walk(
        &mut self,
        top: &Path,
        strict: bool,
        visit: &mut dyn FnMut(PathBuf, FileState),
    ) -> Result<(), WatchError> {
        let mut stack = vec![top.to_owned()];
        while let Some(dir) = stack.pop() {
            if let Err(e) = self.watch(&dir) {
                match e.raw_os_error() {
                    Some(libc::ENOSPC) => {
                        return Err(WatchError::TooManyWatches {
                            path: dir,
                            limit: sysctl("max_user_watches"),
                        });
                    }
                    _ if strict && dir == top => return Err(WatchError::Root { path: dir, source: e }),
                    _ => {
                        debug!(path = %dir.display(), "not watched: {e}");
                        continue;
                    }
                }
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                let path = entry.path();
                if file_type.is_dir() {
                    if (self.filter)(&path) {
                        stack.push(path);
                    }
                } else if let Ok(meta) = entry.metadata() {
                    visit(path, FileState::of(&meta));
                }
            }
        }
        Ok(())
    }
}
