//! Small files kept in memory, so a hot page is answered without opening it.
//!
//! Only answers whose lookup crossed no symlink are kept. On each hit the request's
//! path is walked again from the root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` and `fstat`ed (no read, no blocking-pool trip): the entry is
//! served only if that reaches the same file (device, inode) with the same size,
//! mtime and ctime (nanoseconds). A file whose mtime or ctime was within a second of
//! the moment it was read is not kept: file timestamps come from a coarse clock, so
//! two writes in one tick could leave the same timestamps ("racy" entries, as git
//! calls them). So a cached answer is never older than the file, the same guarantee
//! the ETag gives.
//!
//! Only files on the root's own file system are kept, and none when the root's path
//! lies on a file system that may stop answering (NFS, SMB, FUSE…, as the root or a
//! folder above it): their `stat` may answer from a client-side attribute cache,
//! and a hit's walk and `fstat` run on the runtime's thread, which a dead server
//! could hold. A hit whose path lies on such a mount by the current mount table (one
//! mounted since its entry was kept) is not walked either
//! ([`super::path::direct_metadata`]).

use bytes::Bytes;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Files larger than this are not cached (nor read whole, unless they are HTML the
/// LiveReload script goes into).
pub const MAX_ENTRY: usize = 256 * 1024;
/// Bodies larger than this are not cached: an injected page may be up to
/// [`super::files::MAX_INJECT`] and its script tag. Kept once, a page that size is
/// shared by every request for it instead of read into memory for each.
const MAX_BODY: usize = super::files::MAX_INJECT as usize + 4096;
/// When the cache would hold more than this many bytes (bodies and keys), it is emptied.
const MAX_TOTAL: usize = 32 * 1024 * 1024;
/// When it would hold more than this many entries, it is emptied.
const MAX_ENTRIES: usize = 4096;
/// Request paths longer than this are not cached.
const MAX_KEY: usize = 1024;
/// Files modified less than this before they were read are not cached.
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

    /// Whether the file's last change (mtime or ctime) was at least [`QUIET`] before `at`.
    fn quiet_at(&self, at: SystemTime) -> bool {
        let Ok(at) = at.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        self.mtime.max(self.ctime) + QUIET.as_nanos() as i128 <= at.as_nanos() as i128
    }
}

/// A cached answer: the body (injected already, for HTML with LiveReload) and the
/// headers that depend on the file.
#[derive(Debug)]
pub struct Entry {
    /// The file's identity when it was read.
    pub id: FileId,
    /// The whole body.
    pub body: Bytes,
    /// `Content-Type`.
    pub content_type: String,
    /// The strong ETag.
    pub etag: String,
    /// `Last-Modified`, when the file's time has an HTTP date.
    pub modified: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Arc<Entry>>,
    /// Bytes of bodies and keys.
    total: usize,
}

/// The cache of one HTTP server, keyed by the request path as received.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    hidden: bool,
    /// The device whose files it keeps (the root's); `None`: it keeps none.
    device: Option<u64>,
    entries: RwLock<Entries>,
}

impl Cache {
    /// An empty cache for the site at `root`, which keeps files of `device` (see
    /// [`local_device`], and [`super::root::resolve`]); none when `None`.
    pub fn new(root: &Path, hidden: bool, device: Option<u64>) -> Self {
        Cache {
            root: root.to_owned(),
            hidden,
            device,
            entries: RwLock::default(),
        }
    }

    /// The entry for `key` if its path still leads, without symlinks, to the same
    /// unchanged file; a stale entry is dropped.
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let entry = self.entries.read().expect("cache lock").map.get(key).cloned()?;
        let now = super::path::direct_metadata(&self.root, key, self.hidden);
        if now.is_some_and(|m| FileId::of(&m) == entry.id) {
            return Some(entry);
        }
        let mut entries = self.entries.write().expect("cache lock");
        if entries.map.get(key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            entries.map.remove(key);
            entries.total -= key.len() + entry.body.len();
        }
        None
    }

    /// Keeps `entry` for `key` (an answer whose lookup crossed no symlink) when the
    /// file is on the root's device, had been quiet for a second when it was read
    /// (`read_at`, taken before its metadata), and is small enough.
    pub fn insert(&self, key: &str, entry: Entry, read_at: SystemTime) {
        let small = entry.body.len() <= MAX_BODY && key.len() <= MAX_KEY;
        if self.device != Some(entry.id.dev) || !small || !entry.id.quiet_at(read_at) {
            return;
        }
        let size = key.len() + entry.body.len();
        let mut entries = self.entries.write().expect("cache lock");
        if entries.map.len() >= MAX_ENTRIES || entries.total + size > MAX_TOTAL {
            *entries = Entries::default();
        }
        if let Some(old) = entries.map.insert(key.to_owned(), Arc::new(entry)) {
            entries.total -= key.len() + old.body.len();
        }
        entries.total += size;
    }

    /// How many entries it holds.
    pub fn entries(&self) -> usize {
        self.entries.read().expect("cache lock").map.len()
    }
}

/// The device of canonical `root`'s file system, unless it is one that may not
/// answer (NFS, SMB, FUSE…: [`crate::mountinfo::may_not_answer_type`]), whose `stat`
/// may also answer from an attribute cache that lags behind the file, or one is
/// mounted on a folder above it (a hit's walk would go through it). `None` for a
/// missing root: nothing will be cached from it anyway.
pub fn local_device(root: &Path) -> Option<u64> {
    let local = !crate::mountinfo::on_remote_mount(root)
        && crate::sys::fs_type(root).is_ok_and(|t| !crate::mountinfo::may_not_answer_type(t));
    local.then(|| std::fs::metadata(root).ok().map(|m| m.dev()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(meta: &std::fs::Metadata) -> Entry {
        Entry {
            id: FileId::of(meta),
            body: Bytes::from_static(b"x"),
            content_type: "text/plain".into(),
            etag: "\"e\"".into(),
            modified: None,
        }
    }

    #[test]
    fn only_quiet_files_are_kept_and_hits_never_cross_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "x").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let cache = Cache::new(dir.path(), false, local_device(dir.path()));
        cache.insert("/a.txt", entry(&meta), SystemTime::now());
        assert!(
            cache.entries() == 0,
            "two writes in one clock tick could share an mtime"
        );
        let later = SystemTime::now() + QUIET;
        cache.insert("/a.txt", entry(&meta), later);
        assert_eq!(cache.entries(), 1, "quiet for a second when read: kept");
        assert!(cache.get("/a.txt").is_some(), "unchanged: a hit");
        std::os::unix::fs::symlink(&path, dir.path().join("link.txt")).unwrap();
        cache.insert("/link.txt", entry(&meta), later);
        assert!(
            cache.get("/link.txt").is_none(),
            "a path through a symlink never hits"
        );
        std::fs::write(&path, "y").unwrap();
        assert!(cache.get("/a.txt").is_none(), "rewritten: dropped");
        assert_eq!(cache.entries(), 0);
        let elsewhere = Cache::new(dir.path(), false, Some(meta.dev() + 1));
        elsewhere.insert("/a.txt", entry(&meta), later);
        assert_eq!(elsewhere.entries(), 0, "a file on another device is never kept");
        let off = Cache::new(dir.path(), false, None);
        off.insert("/a.txt", entry(&meta), later);
        assert_eq!(off.entries(), 0, "a root that may not answer keeps nothing");
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
