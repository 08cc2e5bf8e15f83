//! The watcher: one inotify instance watching directory trees recursively.
//!
//! It keeps a map from watch descriptor to directory, adds watches for
//! directories as they appear (watch first, then scan, so files written into a
//! new directory before its watch existed are reported as created), and turns
//! raw inotify events into [`FileEvent`]s for the listener. Symlinks are never followed.

use crate::events::EventKind;
use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{debug, warn};

/// Decides whether a directory (absolute path) should be watched.
pub type DirFilter = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// A change to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEvent {
    /// The file's absolute path.
    pub path: PathBuf,
    /// What happened.
    pub kind: EventKind,
}

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
    /// The per-user limit of inotify watches is reached.
    #[error(
        "cannot watch {path}: out of inotify watches: fs.inotify.max_user_watches is {limit}; \
         raise it with `sysctl fs.inotify.max_user_watches=<more>` (persist it in /etc/sysctl.d/)"
    )]
    TooManyWatches {
        /// The directory that could not be watched.
        path: PathBuf,
        /// The current value of the sysctl.
        limit: String,
    },
    /// A route's directory is missing or not a directory.
    #[error("cannot watch {path}: {source}")]
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

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(Path::new("/proc/sys/fs/inotify").join(name))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MODIFY)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::EXCL_UNLINK);

/// The inotify instance and its directory map, before it is turned into a stream.
pub struct Tree {
    inotify: Inotify,
    dirs: Dirs,
}

struct Dirs {
    watches: Watches,
    map: HashMap<WatchDescriptor, PathBuf>,
    filter: DirFilter,
}

impl Tree {
    /// Creates the instance and watches every root recursively. Blocking: call it
    /// off the async threads for large trees.
    pub fn new(roots: &[PathBuf], filter: DirFilter) -> Result<Tree, WatchError> {
        let inotify = Inotify::init().map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE) => WatchError::TooManyInstances {
                limit: sysctl("max_user_instances"),
            },
            _ => WatchError::Inotify {
                action: "creating an instance",
                source: e,
            },
        })?;
        let mut dirs = Dirs {
            watches: inotify.watches(),
            map: HashMap::new(),
            filter,
        };
        for root in roots {
            match std::fs::symlink_metadata(root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(WatchError::Root {
                        path: root.clone(),
                        source: io::Error::from_raw_os_error(libc::ENOTDIR),
                    });
                }
                Err(source) => {
                    return Err(WatchError::Root {
                        path: root.clone(),
                        source,
                    });
                }
            }
            dirs.add_tree(root, None)?;
        }
        Ok(Tree { inotify, dirs })
    }

    /// How many directories are watched.
    pub fn watch_count(&self) -> usize {
        self.dirs.map.len()
    }

    /// Starts delivering events (needs a tokio runtime).
    pub fn into_watcher(self) -> Result<Watcher, WatchError> {
        let stream = self
            .inotify
            .into_event_stream(vec![0u8; 64 * 1024])
            .map_err(|source| WatchError::Inotify {
                action: "registering with the runtime",
                source,
            })?;
        Ok(Watcher {
            stream,
            dirs: self.dirs,
        })
    }
}

/// A running watcher; dropping it closes the inotify instance.
pub struct Watcher {
    stream: EventStream<Vec<u8>>,
    dirs: Dirs,
}

impl Watcher {
    /// Waits for the next inotify event and returns the file events it means (maybe none).
    pub async fn next(&mut self) -> Result<Vec<FileEvent>, WatchError> {
        let event = match self.stream.next().await {
            Some(Ok(event)) => event,
            Some(Err(source)) => {
                return Err(WatchError::Inotify {
                    action: "reading events",
                    source,
                });
            }
            None => {
                return Err(WatchError::Inotify {
                    action: "reading events",
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
        };
        let mut out = Vec::new();
        self.dirs
            .translate(event.wd, event.mask, event.name.as_deref(), &mut out)?;
        Ok(out)
    }

    /// How many directories are watched.
    pub fn watch_count(&self) -> usize {
        self.dirs.map.len()
    }
}

impl Dirs {
    fn translate(
        &mut self,
        wd: WatchDescriptor,
        mask: EventMask,
        name: Option<&std::ffi::OsStr>,
        out: &mut Vec<FileEvent>,
    ) -> Result<(), WatchError> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            warn!("inotify queue overflowed: changes may have been missed");
            return Ok(());
        }
        if mask.contains(EventMask::IGNORED) {
            self.map.remove(&wd);
            return Ok(());
        }
        let (Some(dir), Some(name)) = (self.map.get(&wd), name) else {
            return Ok(());
        };
        let path = dir.join(name);
        if mask.contains(EventMask::ISDIR) {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) && (self.filter)(&path) {
                self.add_tree(&path, Some(out))?;
            }
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
        out.push(FileEvent { path, kind });
        Ok(())
    }

    /// Watches `top` and every directory under it that passes the filter, then
    /// reports the files found as created (when `report` is given). Directories
    /// that vanish meanwhile are skipped.
    fn add_tree(&mut self, top: &Path, mut report: Option<&mut Vec<FileEvent>>) -> Result<(), WatchError> {
        let mut stack = vec![top.to_owned()];
        while let Some(dir) = stack.pop() {
            match self.watches.add(&dir, MASK) {
                // Re-adding a watched directory (a rename) returns its descriptor: the new path wins.
                Ok(wd) => {
                    self.map.insert(wd, dir.clone());
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    return Err(WatchError::TooManyWatches {
                        path: dir,
                        limit: sysctl("max_user_watches"),
                    });
                }
                Err(e) if dir == top && report.is_none() => {
                    return Err(WatchError::Root { path: dir, source: e });
                }
                Err(e) => {
                    debug!(path = %dir.display(), "not watched: {e}");
                    continue;
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
                } else if let Some(out) = report.as_deref_mut() {
                    out.push(FileEvent {
                        path,
                        kind: EventKind::Create,
                    });
                }
            }
        }
        Ok(())
    }
}
