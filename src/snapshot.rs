//! Snapshots of watched trees: per file its inode, size and mtime. The watcher
//! keeps one in memory to tell exactly what changed after an inotify queue
//! overflow or a missed interval; listeners with `catch_up` persist it
//! (temporary file, fsync, rename) to catch up on changes made while stopped.

use crate::events::EventKind;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
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

const MAGIC: &[u8; 12] = b"EXECLIBSNAP2";

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

/// Encodes a snapshot: magic, entries (path length, path bytes, inode, size, mtime, ctime), checksum.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(snapshot.len() * 96 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    for (path, state) in snapshot {
        let bytes = path.as_os_str().as_bytes();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(&state.ino.to_le_bytes());
        out.extend_from_slice(&state.size.to_le_bytes());
        // 128-bit times on disk, as the format has always had them.
        out.extend_from_slice(&i128::from(state.mtime_ns).to_le_bytes());
        out.extend_from_slice(&i128::from(state.ctime_ns).to_le_bytes());
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Decodes [`encode`]'s output; `None` for anything malformed.
pub fn decode(data: &[u8]) -> Option<Snapshot> {
    let (body, sum) = data.split_at_checked(data.len().checked_sub(8)?)?;
    if checksum(body) != u64::from_le_bytes(sum.try_into().ok()?) {
        return None;
    }
    let mut rest = body.strip_prefix(MAGIC.as_slice())?;
    let most = rest.len() / 44;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let count = u64::from_le_bytes(take(8)?.try_into().ok()?);
    // Collected, then built at once: entries are saved in path order, so the sort is one
    // pass and the map is built without a search per entry. A count beyond what the
    // data can hold (44 bytes an entry at least) is not trusted for the reservation.
    let mut entries = Vec::with_capacity(usize::try_from(count).unwrap_or(usize::MAX).min(most));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let path = PathBuf::from(std::ffi::OsString::from_vec(take(len)?.to_vec()));
        let ino = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let size = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let mtime_ns = time(take(16)?)?;
        let ctime_ns = time(take(16)?)?;
        entries.push((
            path,
            FileState {
                ino,
                size,
                mtime_ns,
                ctime_ns,
            },
        ));
    }
    take(0).filter(|_| rest.is_empty())?;
    Some(entries.into_iter().collect())
}

/// A saved 128-bit time, clamped to 64 bits (the unknown mark, `i128::MIN` in files
/// saved before times were 64 bits, stays the unknown mark).
fn time(bytes: &[u8]) -> Option<i64> {
    let t = i128::from_le_bytes(bytes.try_into().ok()?);
    Some(match i64::try_from(t) {
        Ok(t) => t,
        Err(_) if t < 0 && t != i128::MIN => UNKNOWN + 1,
        Err(_) if t < 0 => UNKNOWN,
        Err(_) => i64::MAX,
    })
}

/// FNV-1a, 64 bits: enough to catch torn or damaged files.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Writes `data` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the directory.
pub fn save(path: &Path, data: &[u8]) -> Result<(), SnapshotError> {
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
            file.write_all(data).map_err(|e| io_err("writing", e))?;
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

/// Reads a saved snapshot.
pub fn load(path: &Path) -> Result<Snapshot, SnapshotError> {
    let data = std::fs::read(path).map_err(|source| SnapshotError::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    })?;
    decode(&data).ok_or_else(|| SnapshotError::Corrupt {
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
    fn encoding_round_trips_and_detects_damage() {
        let mut s = snap(&[("/a b", state(1, 2))]);
        s.insert(
            PathBuf::from(std::ffi::OsString::from_vec(b"/\xff\xfe".to_vec())),
            state(3, 4),
        );
        let data = encode(&s);
        assert_eq!(decode(&data), Some(s));
        for cut in [0, 5, data.len() - 1] {
            assert_eq!(decode(&data[..cut]), None, "truncated at {cut}");
        }
        let mut flipped = data.clone();
        flipped[20] ^= 1;
        assert_eq!(decode(&flipped), None);
    }

    /// Snapshots saved when times were held in 128 bits load: the unknown mark stays
    /// unknown, and times beyond 64 bits of nanoseconds are clamped, not refused.
    #[test]
    fn snapshots_saved_with_128_bit_times_load() {
        let mut old = MAGIC.to_vec();
        old.extend_from_slice(&3u64.to_le_bytes());
        for (name, mtime) in [(&b"/a"[..], i128::MIN), (b"/b", 5), (b"/c", i128::MAX)] {
            old.extend_from_slice(&(name.len() as u32).to_le_bytes());
            old.extend_from_slice(name);
            old.extend_from_slice(&1u64.to_le_bytes());
            old.extend_from_slice(&2u64.to_le_bytes());
            old.extend_from_slice(&mtime.to_le_bytes());
            old.extend_from_slice(&mtime.to_le_bytes());
        }
        let sum = checksum(&old);
        old.extend_from_slice(&sum.to_le_bytes());
        let s = decode(&old).expect("an old snapshot loads");
        assert!(!s[Path::new("/a")].is_known());
        assert_eq!(s[Path::new("/b")].mtime_ns, 5);
        assert_eq!(s[Path::new("/c")].mtime_ns, i64::MAX);
        assert_eq!(decode(&encode(&s)), Some(s), "and saves back the same");
    }

    #[test]
    fn save_replaces_atomically_and_load_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/docs.snapshot");
        let s = snap(&[("/x", state(9, 9))]);
        save(&path, &encode(&s)).unwrap();
        save(&path, &encode(&s)).unwrap();
        assert_eq!(load(&path).unwrap(), s);
        assert!(!path.with_extension("tmp").exists());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(load(&path), Err(SnapshotError::Corrupt { .. })));
    }
}
