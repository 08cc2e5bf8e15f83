//! Small files kept in memory, so a hot page is answered without opening it.
//!
//! An entry is served only after checking, with one `stat` of the requested path
//! (following symlinks, as a fresh lookup would), that it still names the same file
//! in the same state: device, inode, size, mtime and ctime (nanoseconds). A file
//! modified within the last second is not cached: file timestamps come from a coarse
//! clock, so two writes in one tick could leave the same mtime ("racy" entries, as
//! git calls them); once a file has been quiet for a second, any later write gives
//! it a newer timestamp. So a cached answer is never older than the file, the same
//! guarantee the ETag gives.

use bytes::Bytes;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Files larger than this are not cached.
pub const MAX_ENTRY: usize = 256 * 1024;
/// When the cache would hold more than this many bytes, it is emptied.
const MAX_TOTAL: usize = 32 * 1024 * 1024;
/// When it would hold more than this many entries, it is emptied.
const MAX_ENTRIES: usize = 4096;
/// Files modified more recently than this are not cached.
const QUIET: Duration = Duration::from_secs(1);

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i128,
    ctime: i128,
}

impl FileId {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: ns(meta.mtime(), meta.mtime_nsec()),
            ctime: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// A cached answer: the body (injected already, for HTML with LiveReload) and the
/// headers that depend on the file.
#[derive(Debug)]
pub struct Entry {
    /// The path the request names (under the root, unresolved), checked on each hit.
    pub path: PathBuf,
    /// The file's identity when it was read.
    pub id: FileId,
    /// The whole body.
    pub body: Bytes,
    /// `Content-Type`.
    pub content_type: String,
    /// The strong ETag.
    pub etag: String,
    /// `Last-Modified`.
    pub modified: SystemTime,
}

/// The cache of one HTTP server, keyed by the request path as received.
#[derive(Debug, Default)]
pub struct Cache {
    entries: RwLock<HashMap<String, Arc<Entry>>>,
}

impl Cache {
    /// The entry for `key` if its file is unchanged (one `stat`); a stale entry is dropped.
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let entry = self.entries.read().expect("cache lock").get(key).cloned()?;
        let fresh = std::fs::metadata(&entry.path).is_ok_and(|m| FileId::of(&m) == entry.id);
        if !fresh {
            self.entries.write().expect("cache lock").remove(key);
            return None;
        }
        Some(entry)
    }

    /// Keeps `entry` for `key`, unless it is too large or its file changed too recently.
    pub fn insert(&self, key: &str, entry: Entry, meta: &std::fs::Metadata) {
        let quiet = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age >= QUIET);
        let changed = meta
            .ctime()
            .checked_add(QUIET.as_secs() as i64)
            .is_none_or(|t| t as u64 > now_secs());
        if entry.body.len() > MAX_ENTRY || !quiet || changed {
            return;
        }
        let mut entries = self.entries.write().expect("cache lock");
        let total: usize = entries.values().map(|e| e.body.len()).sum();
        if entries.len() >= MAX_ENTRIES || total + entry.body.len() > MAX_TOTAL {
            entries.clear();
        }
        entries.insert(key.to_owned(), Arc::new(entry));
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.entries.read().expect("cache lock").len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: PathBuf, meta: &std::fs::Metadata) -> Entry {
        Entry {
            path,
            id: FileId::of(meta),
            body: Bytes::from_static(b"x"),
            content_type: "text/plain".into(),
            etag: "\"e\"".into(),
            modified: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_file_changed_within_the_last_second_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "x").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let cache = Cache::default();
        cache.insert("/a.txt", entry(path, &meta), &meta);
        assert!(
            cache.is_empty(),
            "two writes in one clock tick could share an mtime"
        );
    }

    #[test]
    fn ids_differ_when_a_file_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "one").unwrap();
        let before = FileId::of(&std::fs::metadata(&path).unwrap());
        std::fs::write(dir.path().join("b.txt"), "two").unwrap();
        std::fs::rename(dir.path().join("b.txt"), &path).unwrap();
        assert_ne!(before, FileId::of(&std::fs::metadata(&path).unwrap()));
    }
}
