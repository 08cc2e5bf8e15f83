//! Files being written: their changes are held until the writer closes them.
//!
//! A regular file's `create` (made by `open`, one link) and its `modify`s are not
//! reported while a descriptor may still be writing it; `IN_CLOSE_WRITE` releases
//! them, in order, so every route, batch and LiveReload sees whole files, and
//! debounce and delay count from the close. A file that stays open and keeps
//! changing (a log being appended, a writer through `mmap`) is released anyway
//! once it has been held for its route's `max_hold_ms`, so nothing waits forever.
//! A close with nothing held (a file opened for writing and left unchanged)
//! reports nothing. Deleting or renaming a held file away releases what it held
//! first, so the order of events is kept. A queue overflow releases everything held
//! (the closes may be among the events the kernel dropped), as does a stop.

use crate::events::{EventKind, FileEvent};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// For a file (absolute path): how long its changes may be held while it is open for
/// writing; `None` to report them at once.
pub type HoldFor = Arc<dyn Fn(&Path) -> Option<Duration> + Send + Sync>;

#[derive(Debug)]
struct Held {
    /// The kinds seen, in order, each once.
    kinds: Vec<EventKind>,
    /// Since when.
    since: Instant,
    /// When it is released even if still open.
    until: Instant,
    /// Held only in case a writer has it open ([`Holds::hold_briefly`]): released
    /// after [`SETTLE`] unless a write shows that one has.
    brief: bool,
}

/// How long a file found in a directory just watched is held when no one can say
/// whether a writer has it open, unless a write or its close comes first.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The files a watcher holds, shared with its listener, which says so in `explain`
/// and `listeners` (a file being written is otherwise nowhere to be seen).
#[derive(Debug, Clone, Default)]
pub struct HeldFiles(Arc<Mutex<HashMap<PathBuf, Held>>>);

/// A file held now: for how long already, and how long it may still be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldFile {
    /// Held since this long.
    pub held_for: Duration,
    /// Released at the latest this much later (`max_hold_ms`), if not closed before.
    pub at_most: Duration,
    /// Held only in case a writer has it (found in a new directory, where none could
    /// be asked about): for [`SETTLE`] unless written to.
    pub brief: bool,
}

impl HeldFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Held>> {
        // The map stays whole across a panic elsewhere: every change is one call.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many files are held.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Whether `path` is held, and since and until when.
    pub fn get(&self, path: &Path) -> Option<HeldFile> {
        let now = Instant::now();
        self.lock().get(path).map(|h| HeldFile {
            held_for: now - h.since,
            at_most: h.until.saturating_duration_since(now),
            brief: h.brief,
        })
    }
}

/// The held files of one watcher.
pub(super) struct Holds {
    held: HeldFiles,
    hold_for: HoldFor,
    /// Released since last asked: the snapshot records their state then (a held
    /// file's writes are not looked at one by one).
    released: Vec<PathBuf>,
}

impl Holds {
    pub(super) fn new(hold_for: HoldFor) -> Self {
        Holds {
            held: HeldFiles::default(),
            hold_for,
            released: Vec::new(),
        }
    }

    /// Whether `path` is held now (a writer has it open).
    pub(super) fn is_held(&self, path: &Path) -> bool {
        self.held.lock().contains_key(path)
    }

    /// Whether a change to `path` would be held at all (a route holds it).
    pub(super) fn holds(&self, path: &Path) -> bool {
        (self.hold_for)(path).is_some()
    }

    /// The held files, as the listener sees them.
    pub(super) fn files(&self) -> HeldFiles {
        self.held.clone()
    }

    /// A `create` or `modify` of `path`: held (`true`) when a writer may have the file
    /// open; otherwise the caller reports it at once.
    pub(super) fn hold(&mut self, path: &Path, kind: EventKind, now: Instant) -> bool {
        if let Some(held) = self.held.lock().get_mut(path) {
            if !held.kinds.contains(&kind) {
                held.kinds.push(kind);
            }
            if std::mem::take(&mut held.brief)
                && let Some(limit) = (self.hold_for)(path)
            {
                held.until = held.since + limit; // a write: a writer has it open after all
            }
            return true;
        }
        self.insert(path, kind, now, false)
    }

    /// A `create` of a file found in a directory just watched, which may have been
    /// made, and still be open for writing, before the watch could see its close, when
    /// no one can say whether it is ([`crate::sys::open_for_writing`]): held until its
    /// close, or as any other once it is written to, or else for [`SETTLE`] only.
    pub(super) fn hold_briefly(&mut self, path: &Path, kind: EventKind, now: Instant) -> bool {
        self.insert(path, kind, now, true)
    }

    fn insert(&mut self, path: &Path, kind: EventKind, now: Instant, brief: bool) -> bool {
        let Some(limit) = (self.hold_for)(path) else {
            return false;
        };
        let held = Held {
            kinds: vec![kind],
            since: now,
            until: now + if brief { limit.min(SETTLE) } else { limit },
            brief,
        };
        self.held.lock().insert(path.to_owned(), held);
        true
    }

    /// The writer closed `path`: what it held is reported now.
    pub(super) fn release(&mut self, path: &Path, out: &mut Vec<FileEvent>) {
        let held = self.held.lock().remove(path);
        if let Some(held) = held {
            out.extend(held.kinds.into_iter().map(|kind| FileEvent {
                path: path.to_owned(),
                kind,
            }));
            self.released.push(path.to_owned());
        }
    }

    /// The files released since last asked, whose state the snapshot must record.
    pub(super) fn take_released(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.released)
    }

    /// Releases every file held under `dir` (a directory moved or deleted).
    pub(super) fn release_under(&mut self, dir: &Path, out: &mut Vec<FileEvent>) {
        let under: Vec<PathBuf> = self
            .held
            .lock()
            .keys()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for path in under {
            self.release(&path, out);
        }
    }

    /// Releases the files held for their whole limit by `now`.
    pub(super) fn release_due(&mut self, now: Instant, out: &mut Vec<FileEvent>) {
        let due: Vec<PathBuf> = self
            .held
            .lock()
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for path in due {
            self.release(&path, out);
        }
    }

    /// Releases everything (a listener stopping: nothing may be lost).
    pub(super) fn release_all(&mut self, out: &mut Vec<FileEvent>) {
        let all: Vec<PathBuf> = self.held.lock().keys().cloned().collect();
        for path in all {
            self.release(&path, out);
        }
    }

    /// When the next held file reaches its limit.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.held.lock().values().map(|h| h.until).min()
    }
}

/// Whether a `create` of this file may be followed by writes through a descriptor:
/// a regular file with one link (`open(O_CREAT)`), not a hard link, a symlink or a
/// device, which are whole as they appear.
pub(super) fn may_be_written(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.is_file() && meta.nlink() == 1
}

/// Whether a file was changed within [`SETTLE`] (or has a time in the future).
pub(super) fn changed_lately(meta: &std::fs::Metadata) -> bool {
    meta.modified()
        .is_ok_and(|t| t.elapsed().map_or(true, |age| age < SETTLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(limit: Option<u64>) -> Holds {
        Holds::new(Arc::new(move |_: &Path| limit.map(Duration::from_millis)))
    }

    fn kinds(out: &[FileEvent]) -> Vec<EventKind> {
        out.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn changes_wait_for_the_close_or_the_limit() {
        let t0 = Instant::now();
        let mut h = holds(Some(1000));
        let a = Path::new("/a");
        assert!(h.hold(a, EventKind::Create, t0));
        assert!(h.hold(a, EventKind::Modify, t0));
        assert!(h.hold(a, EventKind::Modify, t0));
        let mut out = Vec::new();
        h.release_due(t0 + Duration::from_millis(999), &mut out);
        assert!(out.is_empty());
        h.release(a, &mut out);
        assert_eq!(kinds(&out), [EventKind::Create, EventKind::Modify]);
        out.clear();
        h.release(a, &mut out);
        assert!(out.is_empty(), "a close with nothing held reports nothing");
        assert!(h.hold(a, EventKind::Modify, t0));
        assert_eq!(h.next_due(), Some(t0 + Duration::from_millis(1000)));
        h.release_due(t0 + Duration::from_millis(1000), &mut out);
        assert_eq!(kinds(&out), [EventKind::Modify], "held no longer than the limit");
        assert!(
            !holds(None).hold(a, EventKind::Modify, t0),
            "no limit: reported at once"
        );
    }

    #[test]
    fn a_brief_hold_ends_after_settle_unless_a_write_makes_it_whole() {
        let t0 = Instant::now();
        let mut h = holds(Some(5000));
        let (a, b) = (Path::new("/a"), Path::new("/b"));
        assert!(h.hold_briefly(a, EventKind::Create, t0));
        assert!(h.hold_briefly(b, EventKind::Create, t0));
        let t1 = t0 + Duration::from_millis(600);
        assert!(
            h.hold(b, EventKind::Modify, t1),
            "b is written to: a writer has it"
        );
        let mut out = Vec::new();
        h.release_due(t0 + SETTLE, &mut out);
        assert_eq!(
            out,
            [FileEvent {
                path: a.into(),
                kind: EventKind::Create
            }]
        );
        out.clear();
        h.release_due(t0 + Duration::from_millis(4999), &mut out);
        assert!(out.is_empty(), "b is held as any file being written");
        assert_eq!(
            h.next_due(),
            Some(t0 + Duration::from_millis(5000)),
            "max_hold from its start"
        );
        h.release(b, &mut out);
        assert_eq!(kinds(&out), [EventKind::Create, EventKind::Modify]);
        let mut short = holds(Some(300));
        short.hold_briefly(a, EventKind::Create, t0);
        assert_eq!(
            short.next_due(),
            Some(t0 + Duration::from_millis(300)),
            "never past max_hold"
        );
        assert!(
            !holds(None).hold_briefly(a, EventKind::Create, t0),
            "no hold: at once"
        );
    }
}
