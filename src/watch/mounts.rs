//! Where a root's files really are: file systems mounted over (or unmounted from)
//! a watched directory, and route paths that are symlinks (or have one on the way)
//! whose target changes.
//!
//! inotify watches an inode: a file system mounted over a watched directory hides
//! it, and the watch goes on reporting the hidden directory, which nothing changes.
//! So the watcher keeps `/proc/self/mountinfo` open; the kernel signals it when the
//! mount table changes ([`crate::sys::MountTable`]), and every mount point that
//! appeared or went at or under a root has its directory rescanned: watched anew
//! (the new file system, or the uncovered directory) and compared with what was
//! recorded, so exactly the differences are reported (hidden files deleted, new
//! ones created; an unmount and remount of the same files, nothing). A mount over
//! a root or one of its ancestors replaces the whole root the same way.
//!
//! A route path is watched through its symlinks (the last one included; inside
//! the tree none is followed). Where it resolves is looked up again every
//! [`super::ROOT_POLL`]: when it changes (`ln -sfn`, `mv -T`), the new target is
//! watched and scanned and the differences with the old one are reported under
//! the configured path.

use super::{FileEvent, Stat, WatchError, Watcher};
use crate::names::escaped;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

pub(super) use crate::mountinfo::{Mount, parse as mounts};

/// The mounts of `mounts` by id and point: a file system mounted over another at the
/// same point, or unmounted and another mounted there between two looks, is a new
/// pair; a remount keeps its pair.
pub(super) fn mount_points(mounts: &[Mount]) -> BTreeSet<(u64, PathBuf)> {
    mounts.iter().map(|m| (m.id, m.point.clone())).collect()
}

/// Where `path` resolves, when it is a directory (through any symlinks).
pub(super) fn resolve(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok().filter(|p| p.is_dir())
}

impl Watcher {
    /// The mount table changed (its new text): rescans what a mount appeared at or
    /// went from, at or under a root, or replaces a root it covers.
    pub(super) fn mounts_changed(
        &mut self,
        mountinfo: &str,
        out: &mut Vec<FileEvent>,
    ) -> Result<(), WatchError> {
        let table = mounts(mountinfo);
        let now = mount_points(&table);
        let changed: BTreeSet<PathBuf> = now
            .symmetric_difference(&self.mount_points)
            .map(|(_, point)| point.clone())
            .collect();
        self.mount_points = now;
        self.mount_table = table;
        self.polls_dirty |= !changed.is_empty();
        for point in changed {
            for i in 0..self.roots.len() {
                let root = &self.roots[i];
                let (Some(resolved), None) = (root.resolved.clone(), &root.missing) else {
                    continue;
                };
                if resolved.starts_with(&point) {
                    // Over the root itself, or one of its ancestors.
                    self.replace_root(i, &format!("a mount at {} changed", escaped(&point)), out)?;
                } else if let Ok(rest) = point.strip_prefix(&resolved) {
                    let dir = root.path.join(rest);
                    let parent_watched = dir.parent().is_some_and(|p| self.tree.is_watched(p));
                    if parent_watched && self.tree.wants(&dir) {
                        let before = out.len();
                        self.rescan_dir(&dir, out)?;
                        info!(
                            path = %escaped(&dir),
                            changes = out.len() - before,
                            "a file system was mounted or unmounted here: rescanned"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Rescans `dir` (a route path, or a directory under one) and reports what changed,
    /// except for files held open by a writer (their close reports them); a route path
    /// that cannot be read any more is missing from then on, a directory under one is
    /// gone.
    pub(super) fn rescan_dir(&mut self, dir: &Path, out: &mut Vec<FileEvent>) -> Result<(), WatchError> {
        let root = self
            .roots
            .iter()
            .position(|r| r.path == dir && r.missing.is_none());
        match self.tree.rescan(dir, root.is_some())? {
            Some(changes) => out.extend(changes.into_iter().filter(|e| !self.holds.is_held(&e.path))),
            None => match root {
                Some(i) => self.replace_root(i, "can no longer be read", out)?,
                None => self.dir_gone(dir, out),
            },
        }
        Ok(())
    }

    /// Looks again where each symlinked root resolves; replaces those that moved.
    pub(super) fn check_resolutions(&mut self, out: &mut Vec<FileEvent>) -> Result<(), WatchError> {
        for i in 0..self.roots.len() {
            self.check_resolution(i, out)?;
        }
        Ok(())
    }

    /// Before an event from `dir` is taken: when `dir` is under a symlinked root that
    /// now resolves elsewhere, the root is replaced at once (so a deploy that swaps
    /// the link and then deletes the old release reports the difference between the
    /// releases, not the deletion) and `true` says the event is stale.
    pub(super) fn moved_away(&mut self, dir: &Path, out: &mut Vec<FileEvent>) -> Result<bool, WatchError> {
        let under = self
            .roots
            .iter()
            .position(|r| r.via_symlink && r.missing.is_none() && dir.starts_with(&r.path));
        match under {
            Some(i) => self.check_resolution(i, out),
            None => Ok(false),
        }
    }

    /// Replaces root `i` when it is reached through a symlink and now resolves
    /// elsewhere; `true` when it did.
    fn check_resolution(&mut self, i: usize, out: &mut Vec<FileEvent>) -> Result<bool, WatchError> {
        let root = &self.roots[i];
        if root.missing.is_some() || !root.via_symlink {
            return Ok(false);
        }
        let now = resolve(&root.path);
        if now == root.resolved {
            return Ok(false);
        }
        let why = match &now {
            Some(target) => format!("now resolves to {}", escaped(target)),
            None => "no longer resolves to a directory".to_owned(),
        };
        self.replace_root(i, &why, out)?;
        Ok(true)
    }

    /// Watches root `i` anew where it now resolves and reports what differs from what
    /// was recorded for it; when it is no longer a directory it is missing (polled).
    pub(super) fn replace_root(
        &mut self,
        i: usize,
        why: &str,
        out: &mut Vec<FileEvent>,
    ) -> Result<(), WatchError> {
        let path = self.roots[i].path.clone();
        self.holds.release_under(&path, out);
        // Directories moved away under the old target are not the new one's.
        self.moves.retain(|m| !m.path.starts_with(&path));
        let before = self.tree.drop_dir(&path);
        let resolved = resolve(&path);
        let added = match &resolved {
            Some(_) => match self.tree.add(&path, true, Stat::Full, None) {
                Ok(()) => true,
                Err(WatchError::Root { .. }) => false,
                Err(e) => return Err(e),
            },
            None => false,
        };
        if !added {
            warn!(path = %escaped(&path), "route path {why}; waiting for it to come back");
            self.roots[i].lost = before;
            self.roots[i].missing = Some(format!("route path {} {why}", escaped(&path)));
            self.roots[i].resolved = None;
            self.polls_dirty = true;
            self.next_poll = tokio::time::Instant::now() + super::ROOT_POLL;
            return Ok(());
        }
        let now = self.tree.subtree_snapshot(&path);
        let changes = crate::snapshot::diff_files(&before, &now);
        info!(
            path = %escaped(&path),
            resolves_to = %resolved.as_deref().map(escaped).map(|e| e.to_string()).unwrap_or_default(),
            changes = changes.len(),
            "route path {why}: watching it there"
        );
        out.extend(changes.into_iter().map(|(path, kind)| FileEvent { path, kind }));
        self.roots[i].set_resolved(resolved);
        self.polls_dirty = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_the_points_of_the_table() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    90 22 0:50 / /srv/my\\040site\\134x rw - fuse.sshfs host:/ rw\n";
        let table = mounts(text);
        let points: Vec<(u64, PathBuf)> = mount_points(&table).into_iter().collect();
        assert_eq!(
            points,
            [(22, PathBuf::from("/")), (90, PathBuf::from("/srv/my site\\x"))]
        );
        assert_eq!(table[1].fstype, "fuse.sshfs");
    }
}
