//! Setting a watcher up: the inotify instance, every root watched recursively and
//! every file recorded, before events are read ([`Setup`]); then the running
//! [`Watcher`].

use super::*;

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
