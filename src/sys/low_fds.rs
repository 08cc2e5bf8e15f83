//! Descriptors below [`LOW`], kept for jobs' standard descriptors, so that a job's
//! process never holds the daemon's other descriptors, not even for a moment.
//!
//! Why: a new process gets a copy of its parent's descriptor table, and `execve`
//! closes the close-on-exec ones. Closing a descriptor of a FUSE file asks its
//! server to flush it (each close, whoever holds it; NFS does the same for files
//! open for writing), so a job started while the daemon had such a file open on a
//! server that stopped answering (a download from an sshfs site) waited in
//! `execve` until the server answered.
//!
//! How: at its start the daemon fills every free descriptor below [`LOW`] with
//! `/dev/null` ([`reserve`]); everything it opens later is at [`LOW`] or above. A
//! start takes a group of three of them ([`Group`]), puts the job's standard
//! descriptors there (`dup3` over the placeholders) and clones with `CLONE_FILES`
//! (no copy of the table). The child's first change to descriptors is
//! `close_range(LOW, ~0, CLOSE_RANGE_UNSHARE)`: the kernel gives it a table of
//! its own holding only the descriptors below [`LOW`], so nothing above ever
//! reaches it, and nothing there is closed. (The kernel copies at least
//! `NR_OPEN_DEFAULT` slots, rounded to a multiple of `BITS_PER_LONG`: [`LOW`] must
//! be a multiple of 64, or slots above it would be copied and then closed.) What
//! the job holds until `execve` closes it is below [`LOW`]: the daemon's standard
//! descriptors, ones it inherited, the placeholders and other starts' pipes.
//! When the child is gone or has run its program, the group gets its
//! placeholders back and is free again. Without a free group (more starts at once
//! than groups: warned once), where `close_range` is refused, or without
//! [`reserve`] (a daemon run in a test through `crate::run`), a start copies the
//! table as before.

use std::os::fd::RawFd;
use std::sync::{Mutex, OnceLock, PoisonError};

/// Descriptors below this are kept; the child's new table holds only those. 84
/// groups: more than the starts that can be under way at once (the runtime's
/// workers, and 16 that may wait on a network mount: `job::start`).
pub const LOW: RawFd = 256;

const _: () = assert!(LOW % 64 == 0, "the kernel copies whole words of slots");

/// The kept descriptors: `/dev/null` in each free one, and which groups are taken.
struct Kept {
    /// Groups of three kept descriptors.
    groups: Vec<[RawFd; 3]>,
    /// One `/dev/null` (also kept) to put back into a group's descriptors.
    null: RawFd,
    /// Whether each group is taken.
    taken: Mutex<Vec<bool>>,
    /// Whether running out of groups was logged.
    said_full: std::sync::atomic::AtomicBool,
}

static KEPT: OnceLock<Option<Kept>> = OnceLock::new();

/// Keeps every free descriptor below [`LOW`] (once per process; later calls do
/// nothing). Call it first thing in `main`, before anything else is opened:
/// descriptors below [`LOW`] opened before are copied into jobs' tables.
pub fn reserve() {
    KEPT.get_or_init(|| {
        let most = super::nofile_limit().map_or(0, |(soft, hard)| soft.max(hard));
        if most < 4 * LOW as u64 {
            return None; // a limit this low leaves too few descriptors above them
        }
        // SAFETY: closes no descriptor (the range is the highest number alone, never
        // open); it asks whether close_range is there and allowed (seccomp).
        if unsafe { libc::syscall(libc::SYS_close_range, u32::MAX, u32::MAX, 0) } != 0 {
            return None;
        }
        let mut fds = Vec::new();
        // SAFETY: opening /dev/null; the descriptor is kept for the process's life.
        let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if null < 0 {
            return None;
        }
        loop {
            // SAFETY: duplicates our own open descriptor to the lowest free number.
            let fd = unsafe { libc::fcntl(null, libc::F_DUPFD_CLOEXEC, 0) };
            if fd < 0 {
                break;
            }
            if fd >= LOW {
                // SAFETY: the duplicate just made, owned by nothing else.
                unsafe { libc::close(fd) };
                break;
            }
            fds.push(fd);
        }
        let groups: Vec<[RawFd; 3]> = fds.chunks_exact(3).map(|g| [g[0], g[1], g[2]]).collect();
        let taken = Mutex::new(vec![false; groups.len()]);
        Some(Kept {
            groups,
            null,
            taken,
            said_full: Default::default(),
        })
    });
}

/// How many groups there are (0 before [`reserve`]).
#[cfg(test)]
pub fn groups() -> usize {
    KEPT.get().and_then(Option::as_ref).map_or(0, |k| k.groups.len())
}

/// A taken group holding a job's standard descriptors; given back (placeholders
/// restored) when dropped.
pub struct Group {
    index: usize,
    fds: [RawFd; 3],
}

impl Group {
    /// A free group with `stdio` duplicated into it, if there is one.
    pub fn take(stdio: [RawFd; 3]) -> Option<Group> {
        let kept = KEPT.get()?.as_ref()?;
        let index = {
            let mut taken = kept.taken.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(index) = taken.iter().position(|t| !t) else {
                if !kept.said_full.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        "all {} groups of kept descriptors are in use by job starts: this one copies \
                         the daemon's descriptor table (said once)",
                        kept.groups.len()
                    );
                }
                return None;
            };
            taken[index] = true;
            index
        };
        let group = Group {
            index,
            fds: kept.groups[index],
        };
        for (&from, &to) in stdio.iter().zip(&group.fds) {
            // SAFETY: `to` is a kept descriptor this group owns while taken; dup3
            // replaces it atomically with a close-on-exec copy of `from`, open here.
            if unsafe { libc::dup3(from, to, libc::O_CLOEXEC) } != to {
                return None; // dropped: placeholders restored, group freed
            }
        }
        Some(group)
    }

    /// The job's standard descriptors, as numbers below [`LOW`].
    pub fn fds(&self) -> [RawFd; 3] {
        self.fds
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let Some(kept) = KEPT.get().and_then(Option::as_ref) else {
            return;
        };
        let mut restored = true;
        for &fd in &self.fds {
            // SAFETY: puts the kept /dev/null back over a descriptor of this group:
            // the job's copy there is closed, as it must be once the child has its own.
            if unsafe { libc::dup3(kept.null, fd, libc::O_CLOEXEC) } != fd {
                // The job's copy must not stay open (its pipe would never end): closed,
                // and the group is never used again.
                // SAFETY: a descriptor of this group, which only this group uses.
                unsafe { libc::close(fd) };
                restored = false;
            }
        }
        let mut taken = kept.taken.lock().unwrap_or_else(PoisonError::into_inner);
        taken[self.index] = !restored;
    }
}
