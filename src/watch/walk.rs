//! The first walk of a route path at start-up, on several threads: each worker
//! takes a directory from a shared queue, adds its watch (before reading it, so
//! nothing created meanwhile is missed), reads it, and queues the directories
//! found in it. The caller records the directories as they arrive (in batches),
//! while the workers go on. Watches from several threads are safe: one inotify instance,
//! each `inotify_add_watch` a call of its own.

use super::DirFilter;
use super::tree::{Files, MASK, Stat, Unwatchable, read_dir};
use inotify::{WatchDescriptor, Watches};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// At most this many walkers (the cores permitting).
const MAX_WORKERS: usize = 4;

/// Directories a walker hands to the caller at once. One at a time, the caller's
/// thread was woken for each (100,000 on a tree of 1,000,000 files): those wake-ups
/// took about a fifth of the start's CPU.
const BATCH: usize = 256;

/// A directory a walker watched and read.
pub(super) struct Found {
    /// Its path.
    pub dir: Arc<Path>,
    /// Its watch; `None` when out of watches (`ENOSPC`).
    pub wd: Option<WatchDescriptor>,
    /// Its files.
    pub files: Files,
}

/// Directories waiting to be read, and how many walkers are reading one.
struct Queue {
    dirs: Vec<PathBuf>,
    busy: usize,
}

/// Watches and reads `start` and every wanted directory under them, handing each
/// to `record` on this thread. A directory that vanished or cannot be watched
/// (other than for want of watches) is skipped, with what is under it (noted in
/// `unwatchable`, unless it vanished).
pub(super) fn walk(
    watches: &Watches,
    (filter, unwatchable): (&DirFilter, &Unwatchable),
    stat: Stat,
    start: Vec<PathBuf>,
    mut record: impl FnMut(Found),
) {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WORKERS);
    let queue = (Mutex::new(Queue { dirs: start, busy: 0 }), Condvar::new());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (tx, queue, mut watches) = (tx.clone(), &queue, watches.clone());
            scope.spawn(move || {
                let mut batch = Vec::with_capacity(BATCH);
                while let Some(dir) = next(queue) {
                    // Hands back the directory (and what it found) even if `visit`
                    // panics: the other walkers would otherwise wait for it forever.
                    let mut busy = Busy {
                        queue,
                        found: Vec::new(),
                    };
                    if let Some(done) = visit(&mut watches, (filter, unwatchable), stat, dir, &mut busy.found)
                    {
                        batch.push(done);
                    }
                    if batch.len() >= BATCH {
                        // The receiver lives until every worker is done.
                        let _ = tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
            });
        }
        drop(tx);
        for found in rx.into_iter().flatten() {
            record(found);
        }
    });
}

/// The next directory to read; `None` once the queue is empty and no walker can add to it.
fn next((lock, ready): &(Mutex<Queue>, Condvar)) -> Option<PathBuf> {
    let mut queue = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(dir) = queue.dirs.pop() {
            queue.busy += 1;
            return Some(dir);
        }
        if queue.busy == 0 {
            return None;
        }
        queue = ready.wait(queue).unwrap_or_else(|e| e.into_inner());
    }
}

/// A walker reading a directory: when it is dropped (done, or unwinding from a
/// panic, which `thread::scope` then passes to the caller), the directories found
/// are queued and the others woken.
struct Busy<'a> {
    queue: &'a (Mutex<Queue>, Condvar),
    found: Vec<PathBuf>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let (lock, ready) = self.queue;
        let mut queue = lock.lock().unwrap_or_else(|e| e.into_inner());
        queue.dirs.append(&mut self.found);
        queue.busy -= 1;
        ready.notify_all();
    }
}

/// Watches and reads one directory; the directories in it go on `found`.
fn visit(
    watches: &mut Watches,
    (filter, unwatchable): (&DirFilter, &Unwatchable),
    stat: Stat,
    dir: PathBuf,
    found: &mut Vec<PathBuf>,
) -> Option<Found> {
    let wd = match watches.add(&dir, MASK) {
        Ok(wd) => Some(wd),
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => None,
        Err(e) => {
            unwatchable.record(&dir, &e);
            return None;
        }
    };
    let files = read_dir(&dir, stat, filter, found);
    Some(Found {
        dir: dir.into(),
        wd,
        files,
    })
}
