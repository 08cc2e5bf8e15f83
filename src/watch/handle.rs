//! One raw inotify event turned into file events: files changed, directories made,
//! renamed, moved in or out, roots gone, queue overflows, files held until closed.

use super::*;

impl Watcher {
    /// Turns one raw event into file events (appended to `out`).
    pub(super) fn handle(&mut self, event: EventOwned, out: &mut Vec<FileEvent>) -> Result<(), WatchError> {
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
    pub(super) fn record_released(&mut self) {
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
            // Its mode or owner changed (a route path made searchable, say).
            _ if mask.contains(EventMask::ATTRIB) && self.overflow.due.is_none() => {
                self.tree.retry_unwatchable(dir, EventKind::Create, out)?
            }
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
            // A directory that stood at `path` and was moved away (out of the tree, its
            // pair never to come) has left it: settle it before this one takes its name.
            self.settle_moves_under(&path, out);
            return self.rename_dir(&from, &path, out);
        }
        if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            self.settle_moves_under(&path, out);
            if self.tree.wants(&path) {
                let mut found = Vec::new();
                self.tree
                    .add(&path, false, Stat::Full, Some((EventKind::Create, &mut found)))?;
                self.found(found, out);
            }
        } else if mask.contains(EventMask::DELETE) {
            self.dir_gone(&path, out);
        } else if mask.contains(EventMask::ATTRIB) {
            // Its mode or owner changed: it, or a folder in it that could not be reached
            // through it, may be readable now. What such a folder holds is new to the
            // listener, as in a folder made.
            self.tree.retry_unwatchable(&path, EventKind::Create, out)?;
        }
        Ok(())
    }

    /// Reports the files found in a directory just watched (made, moved in): each may
    /// have been made before the watch and still be open for writing, its close
    /// unseen. One that a writer has open is held as any other; one that cannot be
    /// asked about ([`crate::sys::open_for_writing`]; asked only on local file
    /// systems, whose leases say it), and was changed within [`hold::SETTLE`], is held
    /// that long, or until its close or a write. Files no route holds, and those in a
    /// directory without a watch (whose close could not be seen), are not asked about.
    fn found(&mut self, found: Vec<FileEvent>, out: &mut Vec<FileEvent>) {
        let now = Instant::now();
        for event in found {
            let meta = std::fs::symlink_metadata(&event.path);
            let held = meta.as_ref().is_ok_and(hold::may_be_written)
                && self.holds.holds(&event.path)
                && event.path.parent().is_some_and(|dir| self.tree.has_watch(dir))
                && match self.ask_open(&event.path) {
                    Some(open) => open && self.holds.hold(&event.path, event.kind, now),
                    None => {
                        meta.is_ok_and(|m| hold::changed_lately(&m))
                            && self.holds.hold_briefly(&event.path, event.kind, now)
                    }
                };
            if !held {
                out.push(event);
            }
        }
    }

    /// Whether a writer has `path` open, where the file system's leases can say
    /// ([`crate::sys::open_for_writing`]): network file systems answer `EAGAIN` for
    /// want of a delegation, and may not answer at all.
    fn ask_open(&self, path: &Path) -> Option<bool> {
        let local = crate::sys::fs_type(path).is_ok_and(|t| !crate::mountinfo::may_not_answer_type(t));
        local.then(|| crate::sys::open_for_writing(path)).flatten()
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
