//! Polling where inotify cannot see: a subtree is rescanned every `poll_ms` and
//! compared with what was recorded, so exactly what changed is reported (the same
//! rescan as after a queue overflow), alongside whatever inotify still reports.
//!
//! What is polled, recomputed whenever the mount table, a root or the watch limit
//! changes what is needed:
//! - under `poll = "auto"` (the default), the parts of a route's tree on a file
//!   system that does not report changes made elsewhere (network and FUSE file
//!   systems: [`is_remote`]); local ones never;
//! - under `poll = "always"`, the whole tree; under `"never"`, nothing;
//! - whatever `poll` says, the directories that got no watch because the inotify
//!   watch limit was reached (no change is lost for want of a watch).

use super::{FileEvent, WatchError, Watcher};
use crate::names::escaped;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::info;

/// When a route's tree is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Where its file system does not report changes made elsewhere.
    #[default]
    Auto,
    /// Everywhere, as well as watched.
    Always,
    /// Never (but directories without a watch for want of one still are).
    Never,
}

/// How a route path is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    /// When.
    pub mode: PollMode,
    /// How often.
    pub every: Duration,
    /// Whether `every` was configured (`poll_ms`); else it is the default, which
    /// stretches on a tree whose polls take long (see [`SPREAD`]).
    pub fixed: bool,
}

impl Default for Poll {
    /// Polled only when inotify cannot see the changes, every [`DEFAULT_POLL_MS`]
    /// (stretched on a tree whose polls take long).
    fn default() -> Self {
        Poll {
            mode: PollMode::Auto,
            every: Duration::from_millis(DEFAULT_POLL_MS),
            fixed: false,
        }
    }
}

/// How often a polled tree is rescanned, by default (see docs/watching.md for its cost).
pub const DEFAULT_POLL_MS: u64 = 2_000;

/// Under the default interval, a poll that took T waits at least `SPREAD` × T for
/// the next: polling a big tree costs at most about 1/`SPREAD` of a core.
pub const SPREAD: u32 = 25;

/// The polling of each route path (by its configured path).
pub type PollFor = Arc<dyn Fn(&Path) -> Poll + Send + Sync>;

/// A polled subtree.
#[derive(Debug, Clone)]
pub(super) struct Polled {
    /// Its directory (under a configured route path).
    pub path: PathBuf,
    /// Why it is polled, for `listeners` and the log.
    pub why: String,
    /// How often now.
    pub every: Duration,
    /// How it is polled, as configured.
    pub poll: Poll,
    /// When next.
    pub next: Instant,
}

pub(super) use crate::mountinfo::is_remote;

impl Watcher {
    /// What is polled now, and why.
    pub fn polled(&self) -> Vec<(PathBuf, String)> {
        self.polls
            .iter()
            .map(|p| (p.path.clone(), p.why.clone()))
            .collect()
    }

    /// Rescans the polled subtrees that are due.
    pub(super) fn poll_due(&mut self, now: Instant, out: &mut Vec<FileEvent>) -> Result<(), WatchError> {
        for i in 0..self.polls.len() {
            if now < self.polls[i].next {
                continue;
            }
            let path = self.polls[i].path.clone();
            let started = std::time::Instant::now();
            if self.tree.is_watched(&path) {
                self.rescan_dir(&path, out)?;
            }
            let polled = &mut self.polls[i];
            if !polled.poll.fixed {
                polled.every = polled.poll.every.max(started.elapsed() * SPREAD);
            }
            polled.next = now + polled.every;
        }
        self.polls_dirty = true; // a rescan may have found or lost directories without a watch
        Ok(())
    }

    /// Recomputes what is polled (see the module's comment), keeping the timers of
    /// what stays; logs what starts and stops being polled.
    pub(super) fn refresh_polls(&mut self) {
        let unwatched = self.tree.unwatched_count();
        if !std::mem::take(&mut self.polls_dirty) && unwatched == self.polled_unwatched {
            return;
        }
        self.polled_unwatched = unwatched;
        let mut wanted: Vec<(PathBuf, String, Poll)> = Vec::new();
        for root in self.roots.iter().filter(|r| r.missing.is_none()) {
            let poll = (self.poll_for)(&root.path);
            let Some(resolved) = &root.resolved else { continue };
            match poll.mode {
                PollMode::Never => {}
                PollMode::Always => wanted.push((root.path.clone(), "poll = \"always\"".to_owned(), poll)),
                PollMode::Auto => {
                    for (dir, fstype) in self.remote_parts(&root.path, resolved) {
                        let why = format!("on {fstype}: inotify does not see changes made elsewhere");
                        wanted.push((dir, why, poll));
                    }
                }
            }
        }
        for top in self.tree.unwatched_tops() {
            let poll = self
                .roots
                .iter()
                .find(|r| top.starts_with(&r.path))
                .map_or(Poll::default(), |r| (self.poll_for)(&r.path));
            let why = format!("out of inotify watches ({unwatched} directories have none)");
            wanted.push((top, why, poll));
        }
        // A subtree polled anyway covers the ones inside it.
        let covered = |dir: &Path, all: &[(PathBuf, String, Poll)]| {
            all.iter()
                .any(|(other, ..)| other != dir && dir.starts_with(other))
        };
        let snapshot = wanted.clone();
        wanted.retain(|(dir, ..)| !covered(dir, &snapshot));
        let now = Instant::now();
        let mut polls = Vec::with_capacity(wanted.len());
        for (path, why, poll) in wanted {
            let kept = self.polls.iter().find(|p| p.path == path && p.poll == poll);
            let (every, next) = match kept {
                Some(p) => (p.every, p.next),
                None => {
                    info!(path = %escaped(&path), poll_ms = poll.every.as_millis() as u64, "polling: {why}");
                    (poll.every, now + poll.every)
                }
            };
            polls.push(Polled {
                path,
                why,
                every,
                poll,
                next,
            });
        }
        for gone in self
            .polls
            .iter()
            .filter(|p| !polls.iter().any(|q| q.path == p.path))
        {
            info!(path = %escaped(&gone.path), "no longer polled");
        }
        self.polls = polls;
    }

    /// The directories of root `path` (resolving to `resolved`) on a remote file
    /// system: the root itself when it is on one, and each such mount under it.
    fn remote_parts(&self, path: &Path, resolved: &Path) -> Vec<(PathBuf, String)> {
        let containing = self
            .mount_table
            .iter()
            .filter(|m| resolved.starts_with(&m.point))
            .max_by_key(|m| m.point.as_os_str().len());
        if let Some(m) = containing.filter(|m| is_remote(&m.fstype)) {
            return vec![(path.to_owned(), m.fstype.clone())];
        }
        self.mount_table
            .iter()
            .filter(|m| is_remote(&m.fstype))
            .filter_map(|m| {
                let rest = m.point.strip_prefix(resolved).ok()?;
                (!rest.as_os_str().is_empty()).then(|| (path.join(rest), m.fstype.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn network_and_fuse_file_systems_are_remote_and_local_ones_are_not() {
        for remote in [
            "nfs4",
            "cifs",
            "fuse.sshfs",
            "fuse.bindfs",
            "9p",
            "vboxsf",
            "ceph",
        ] {
            assert!(super::is_remote(remote), "{remote}");
        }
        for local in ["ext4", "xfs", "btrfs", "tmpfs", "overlay", "fuseblk", "zfs"] {
            assert!(!super::is_remote(local), "{local}");
        }
    }
}
