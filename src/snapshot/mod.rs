//! Snapshots of watched trees: per file its inode, size and mtime. The watcher
//! keeps one in memory to tell exactly what changed after an inotify queue
//! overflow or a missed interval; listeners with `catch_up` persist it
//! (temporary file, fsync, rename) to catch up on changes made while stopped.
//! [`files`] is one directory's files in compact form, [`dirs`] a whole
//! snapshot by directory (what is saved and loaded), [`format`](mod@format) the saved bytes.

mod dirs;
pub(crate) mod files;
mod format;

pub use dirs::Dirs;
pub(crate) use dirs::diff as diff_dirs;

use crate::events::EventKind;
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What identifies a version of a file. The change time is included because it
/// cannot be set back: a write that keeps size and mtime (`rsync -t`, `cp -p`) still
/// changes it.
///
/// Times are nanoseconds since the epoch in 64 bits (years 1677 to 2262); a time
/// outside that range is clamped. Two such times then compare equal, but the change
/// time, which the kernel sets from its clock, still tells a write apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
}

/// Nanoseconds since the epoch, clamped to 64 bits; never [`UNKNOWN`].
fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000)
        .saturating_add(nsec)
        .max(UNKNOWN + 1)
}

/// The mtime of a state not known yet.
const UNKNOWN: i64 = i64::MIN;

impl FileState {
    /// A file whose size and mtime are not known yet: equal to no real state, so a
    /// diff against it reports the file as changed (never as unchanged).
    pub fn unknown(ino: u64) -> Self {
        FileState {
            ino,
            size: 0,
            mtime_ns: UNKNOWN,
            ctime_ns: UNKNOWN,
        }
    }

    /// Whether size and mtime are known.
    pub fn is_known(&self) -> bool {
        self.mtime_ns != UNKNOWN
    }

    /// The state recorded in `meta`.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        FileState {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Files by absolute path: the flat form used for persistence and catch-up.
pub type Snapshot = BTreeMap<PathBuf, FileState>;

/// The changes from `old` to `new`: created, modified (inode, size, mtime or ctime differ) and
/// deleted files, in path order within each kind.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<(PathBuf, EventKind)> {
    diff_by(old, new, |a, b| a == b)
}

/// [`diff`] for two trees that may be different directories (a route path's old and
/// new target): a file is unchanged when it is the same file with the same content
/// as far as the kernel tells (inode, size, modification time). Its change time is
/// left out: removing another hard link of it (the old release) changes that alone.
pub fn diff_files(old: &Snapshot, new: &Snapshot) -> Vec<(PathBuf, EventKind)> {
    diff_by(old, new, |a, b| {
        a.is_known() && (a.ino, a.size, a.mtime_ns) == (b.ino, b.size, b.mtime_ns)
    })
}

fn diff_by(
    old: &Snapshot,
    new: &Snapshot,
    same: impl Fn(&FileState, &FileState) -> bool,
) -> Vec<(PathBuf, EventKind)> {
    // One merge of the two maps (both in path order): a lookup per file would compare
    // paths component by component some twenty times each.
    let (mut changes, mut deleted) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((x, _)), Some((y, _))) => x.cmp(y),
        };
        match order {
            std::cmp::Ordering::Less => {
                deleted.push((a.next().expect("peeked").0.clone(), EventKind::Delete))
            }
            std::cmp::Ordering::Greater => {
                changes.push((b.next().expect("peeked").0.clone(), EventKind::Create))
            }
            std::cmp::Ordering::Equal => {
                let ((_, before), (path, state)) = (a.next().expect("peeked"), b.next().expect("peeked"));
                if !same(before, state) {
                    changes.push((path.clone(), EventKind::Modify));
                }
            }
        }
    }
    changes.append(&mut deleted);
    changes
}

/// Why a saved snapshot could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("{action} {}: {source}", crate::names::escaped(path))]
    Io {
        /// What was being done.
        action: &'static str,
        /// The snapshot file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not a valid snapshot.
    #[error("{} is corrupt: {reason}", crate::names::escaped(path))]
    Corrupt {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Writes `dirs` to `path` atomically: a temporary file beside it, fsync, rename, fsync
/// of the directory.
pub fn save(path: &Path, dirs: &Dirs) -> Result<(), SnapshotError> {
    let io_err = |action, source| SnapshotError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| io_err("creating the directory of", e))?;
    let tmp = path.with_extension("tmp");
    let written = std::fs::File::create(&tmp)
        .map_err(|e| io_err("creating", e))
        .and_then(|mut file| {
            format::write(dirs, &mut file).map_err(|e| io_err("writing", e))?;
            file.sync_all().map_err(|e| io_err("syncing", e))
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io_err("renaming into", e)));
    if let Err(e) = written {
        // The last good snapshot stays as it was; no half-written temporary is left.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a saved snapshot (of any version written so far).
pub fn load(path: &Path) -> Result<Dirs, SnapshotError> {
    let data = std::fs::read(path).map_err(|source| SnapshotError::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    })?;
    format::decode(&data).ok_or_else(|| SnapshotError::Corrupt {
        path: path.to_owned(),
        reason: "bad magic, length or checksum",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ino: u64, size: u64) -> FileState {
        FileState {
            ino,
            size,
            mtime_ns: 7,
            ctime_ns: 8,
        }
    }

    fn snap(entries: &[(&str, FileState)]) -> Snapshot {
        entries.iter().map(|(p, s)| (PathBuf::from(p), *s)).collect()
    }

    #[test]
    fn diff_reports_exactly_what_changed() {
        let old = snap(&[("/a", state(1, 1)), ("/b", state(2, 1)), ("/c", state(3, 1))]);
        let new = snap(&[("/a", state(1, 1)), ("/b", state(2, 5)), ("/d", state(4, 1))]);
        let changes = diff(&old, &new);
        assert_eq!(
            changes,
            vec![
                (PathBuf::from("/b"), EventKind::Modify),
                (PathBuf::from("/d"), EventKind::Create),
                (PathBuf::from("/c"), EventKind::Delete),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    proptest::proptest! {
        /// The one-merge diff reports what a lookup per file does, in the same order.
        #[test]
        fn diff_by_merge_matches_diff_by_lookup(
            old in proptest::collection::btree_map("/[ab]{1,2}(/[ab]{1,2}){0,2}", (0u64..3, 0u64..2), 0..20),
            new in proptest::collection::btree_map("/[ab]{1,2}(/[ab]{1,2}){0,2}", (0u64..3, 0u64..2), 0..20),
        ) {
            let to_snap = |m: &BTreeMap<String, (u64, u64)>| -> Snapshot {
                m.iter().map(|(p, (i, s))| (PathBuf::from(p), state(*i, *s))).collect()
            };
            let (old, new) = (to_snap(&old), to_snap(&new));
            let mut want = Vec::new();
            for (path, st) in &new {
                match old.get(path) {
                    None => want.push((path.clone(), EventKind::Create)),
                    Some(before) if before != st => want.push((path.clone(), EventKind::Modify)),
                    Some(_) => {}
                }
            }
            for path in old.keys().filter(|p| !new.contains_key(*p)) {
                want.push((path.clone(), EventKind::Delete));
            }
            proptest::prop_assert_eq!(diff(&old, &new), want);
        }
    }

    #[test]
    fn save_replaces_atomically_and_load_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/docs.snapshot");
        let s = snap(&[("/x", state(9, 9))]);
        save(&path, &Dirs::from_flat(&s)).unwrap();
        save(&path, &Dirs::from_flat(&s)).unwrap();
        assert_eq!(load(&path).unwrap().to_flat(), s);
        assert!(!path.with_extension("tmp").exists());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(load(&path), Err(SnapshotError::Corrupt { .. })));
    }
}
