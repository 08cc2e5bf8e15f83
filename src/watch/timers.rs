//! The watcher's recovery timers: queue overflows (rescan with back-off), route
//! roots that went missing (polled until they come back), and directories moved out
//! of the tree (reported gone when no matching arrival follows within [`MOVE_BOUND`]).

use super::{FileEvent, MAX_BACKOFF, MOVE_BOUND, ROOT_POLL, Stat, WatchError, Watcher};
use crate::events::EventKind;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// Overflow handling: when the next rescan is due, and the back-off between rescans.
#[derive(Default)]
pub(super) struct Overflow {
    pub(super) due: Option<Instant>,
    last_rescan: Option<Instant>,
    backoff: Duration,
    /// Overflows and rescans so far, for status and metrics.
    pub(super) stats: OverflowStats,
}

/// A watcher's overflows and rescans since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverflowStats {
    /// Queue overflows read (each means the kernel dropped events).
    pub overflows: u64,
    /// Rescans of the tree that followed.
    pub rescans: u64,
    /// When the last overflow was read.
    pub last: Option<std::time::SystemTime>,
}

impl Overflow {
    /// Schedules a rescan after an overflow at `now`; returns its delay, or `None` when
    /// one is already due. An overflow within a second of the last rescan doubles the
    /// back-off (100 ms up to 10 s); after a quiet second it rescans at once again.
    pub(super) fn schedule(&mut self, now: Instant) -> Option<Duration> {
        if self.due.is_some() {
            return None;
        }
        let recent = self
            .last_rescan
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
        self.backoff = if recent {
            (self.backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF)
        } else {
            Duration::ZERO
        };
        self.due = Some(now + self.backoff);
        Some(self.backoff)
    }
}

impl Watcher {
    pub(super) fn overflowed(&mut self, now: Instant) {
        self.overflow.stats.overflows += 1;
        self.overflow.stats.last = Some(std::time::SystemTime::now());
        if let Some(delay) = self.overflow.schedule(now) {
            warn!(
                backoff_ms = delay.as_millis() as u64,
                "inotify queue overflowed: events were dropped; rescanning"
            );
        }
    }

    pub(super) fn run_timers(&mut self, now: Instant, out: &mut Vec<FileEvent>) -> Result<(), WatchError> {
        while let Some(i) = self.moves.iter().position(|m| now >= m.at + MOVE_BOUND) {
            let gone = self.moves.remove(i).path;
            self.dir_gone(&gone, out);
        }
        if self.overflow.due.is_some_and(|due| now >= due) {
            self.rescan(now, out)?;
        }
        self.holds.release_due(now, out);
        if self.polls.iter().any(|p| now >= p.next) {
            self.poll_due(now, out)?;
        }
        if now >= self.next_poll {
            self.next_poll = now + ROOT_POLL;
            self.poll_roots(out)?;
            self.check_resolutions(out)?;
        }
        Ok(())
    }

    pub(super) fn rescan(&mut self, now: Instant, out: &mut Vec<FileEvent>) -> Result<(), WatchError> {
        self.overflow.due = None;
        self.overflow.last_rescan = Some(now);
        self.overflow.stats.rescans += 1;
        self.moves.clear();
        // The closes of held files may be among the events the kernel dropped.
        self.holds.release_all(out);
        let before = out.len();
        let started = std::time::Instant::now();
        let roots: Vec<_> = self
            .roots
            .iter()
            .filter(|r| r.missing.is_none())
            .map(|r| r.path.clone())
            .collect();
        for root in roots {
            self.rescan_dir(&root, out)?;
        }
        let found = &out[before..];
        let count = |k| found.iter().filter(|e| e.kind == k).count();
        warn!(
            created = count(EventKind::Create),
            modified = count(EventKind::Modify),
            deleted = count(EventKind::Delete),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "inotify queue overflowed: rescan found {} changed files",
            found.len()
        );
        Ok(())
    }

    fn poll_roots(&mut self, out: &mut Vec<FileEvent>) -> Result<(), WatchError> {
        for i in 0..self.roots.len() {
            if self.roots[i].missing.is_none() {
                continue;
            }
            let path = self.roots[i].path.clone();
            // Through symlinks: a route path may be one.
            if !path.is_dir() {
                continue;
            }
            if !self.tree.is_watched(&path) {
                match self.tree.add(&path, true, Stat::Full, None) {
                    Ok(()) => {}
                    Err(WatchError::Root { .. }) => continue,
                    Err(e) => return Err(e),
                }
                // Exactly what differs from when it went away: an unmount and remount
                // of the same files reports nothing.
                let now = self.tree.subtree_snapshot(&path);
                let changes = crate::snapshot::diff(&self.roots[i].lost, &now);
                out.extend(changes.into_iter().map(|(path, kind)| FileEvent { path, kind }));
            }
            info!(path = %crate::names::escaped(&path), "route path is back; watching it again");
            self.roots[i].lost.clear();
            self.roots[i].missing = None;
            self.roots[i].set_resolved(super::mounts::resolve(&path));
            self.polls_dirty = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_overflows_back_off_and_a_quiet_second_resets() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut o = Overflow::default();
        let mut delays = Vec::new();
        let mut now = t0;
        for _ in 0..9 {
            let delay = o.schedule(now).expect("a rescan is scheduled");
            assert_eq!(o.schedule(now), None, "one rescan at a time");
            delays.push(delay.as_millis());
            now += delay; // the rescan runs...
            o.due = None;
            o.last_rescan = Some(now);
            now += ms(10); // ...and the queue overflows again right away
        }
        assert_eq!(delays, [0, 100, 200, 400, 800, 1600, 3200, 6400, 10000]);
        assert_eq!(o.schedule(now + Duration::from_secs(2)), Some(Duration::ZERO));
    }
}
