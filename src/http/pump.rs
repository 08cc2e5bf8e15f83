//! What LiveReload clients are told, and when: the site root's own watcher feeds
//! [`Pump`], which gathers changes and sends them, holding them while a build is
//! busy ([`crate::builds`]); [`tell_builds`] passes build results on.
//!
//! A file is reported once written whole (see `watch::hold`), so a change after a
//! quiet spell goes out at once; changes that follow within `delay` are gathered
//! (see [`Gather`]).

use super::livereload::LiveReload;
use crate::glob::{DEFAULT_IGNORES, Matcher};
use crate::watch::threaded::Watching;
use crate::watch::{DirFilter, Setup};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The longest changes wait for a build to finish; then they go out anyway.
pub const MAX_BUILD_WAIT: Duration = Duration::from_secs(60);

/// More changed files than this at once (a storm, a whole-site rebuild): every
/// client reloads its page, and memory stays bounded.
const MAX_PENDING: usize = 1024;

/// The watcher of the site root for LiveReload, registered with a runtime of its own
/// (it runs on a thread of its own, [`Pump::run`]), and what in it counts (the
/// default ignores, less the hidden ones when hidden files are served).
pub async fn watch_root(root: PathBuf, hidden: bool) -> Option<(Watching, Matcher)> {
    let ignores: Vec<String> = DEFAULT_IGNORES
        .iter()
        .filter(|g| !(hidden && g.contains("/.")))
        .map(|g| g.to_string())
        .collect();
    let matcher = Matcher::new(&["**".to_owned()], &ignores).expect("default globs compile");
    let dir_matcher = matcher.clone();
    let dir_root = root.to_owned();
    let filter: DirFilter = Arc::new(move |dir: &Path| {
        dir.strip_prefix(&dir_root)
            .is_ok_and(|rel| rel.as_os_str().is_empty() || !dir_matcher.ignores_dir(rel))
    });
    let roots = [root.to_owned()];
    let setup = tokio::task::spawn_blocking(move || Setup::new(&roots, filter, false)).await;
    match setup.expect("watch setup does not panic").and_then(|setup| {
        // Pages are reported once written whole (see watch::hold), with the routes' default limit.
        let limit = Some(Duration::from_millis(crate::config::DEFAULT_MAX_HOLD_MS));
        let poll = crate::watch::Poll::default();
        Watching::new(
            setup,
            Arc::new(move |_: &Path| limit),
            Arc::new(move |_: &Path| poll),
        )
    }) {
        Ok(watching) => Some((watching, matcher)),
        Err(e) => {
            warn!("LiveReload cannot watch the site root: {e}");
            None
        }
    }
}

/// Tells LiveReload clients how builds end, as they are told (failures, and the
/// success after one), until `stop`.
pub async fn tell_builds(
    mut results: tokio::sync::watch::Receiver<Option<crate::protocol::replies::BuildResult>>,
    lr: Arc<LiveReload>,
    stop: CancellationToken,
) {
    // A failure from before this server started is shown too.
    if let Some(result) = results.borrow_and_update().clone().filter(|r| !r.ok) {
        lr.build(&result);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = results.changed() => {
                if changed.is_err() {
                    return;
                }
                let result = results.borrow_and_update().clone();
                if let Some(result) = result {
                    lr.build(&result);
                }
            }
        }
    }
}

/// Tells LiveReload clients about changes under the site's root.
pub struct Pump {
    /// The site's root.
    pub root: PathBuf,
    /// What under it counts.
    pub matcher: Matcher,
    /// The clients.
    pub lr: Arc<LiveReload>,
    /// Changes within this of the last are gathered (sent at most 10 times this
    /// after the first); a change after a quiet spell this long goes out at once.
    pub delay: Duration,
    /// The listeners' activity: while a build is busy, changes are held.
    pub builds: Arc<crate::builds::Builds>,
}

/// The changes not yet told, and the times that decide when they go.
struct Gather {
    pending: BTreeSet<String>,
    /// More than [`MAX_PENDING`] changed: every page reloads.
    everything: bool,
    /// The first change not yet told.
    first: Option<Instant>,
    /// The last change (told or not).
    last: Instant,
    /// Whether the changes pending came after a quiet spell (they go at once).
    leading: bool,
    /// When the last build ended, if one did since clients were last told: the cap
    /// of 10 times `delay` counts from there.
    build_ended: Option<Instant>,
    /// When a listener last became busy or idle: a build's writes may still be on
    /// their way, so no change within `delay` of it goes out at once.
    last_activity: Instant,
}

impl Gather {
    fn new(delay: Duration) -> Self {
        // As if the last change and activity were a quiet spell ago.
        let long_ago = Instant::now().checked_sub(delay).unwrap_or_else(Instant::now);
        Gather {
            pending: BTreeSet::new(),
            everything: false,
            first: None,
            last: long_ago,
            leading: false,
            build_ended: None,
            last_activity: long_ago,
        }
    }

    /// Notes that changes were added at `now` (`building`: a build is busy now; what
    /// comes while one is never goes out at once, even once it has ended).
    fn changed(&mut self, now: Instant, delay: Duration, building: bool) {
        if self.pending.is_empty() && !self.everything {
            return;
        }
        if building {
            self.leading = false;
        } else if self.first.is_none() {
            let quiet = |since: Instant| now.duration_since(since) >= delay;
            self.leading = quiet(self.last) && quiet(self.last_activity);
        }
        self.first.get_or_insert(now);
        self.last = now;
    }

    /// Notes that a build ended at `now`: what it wrote goes out `delay` from now, so
    /// its last writes, still on their way from inotify, join them.
    fn build_ended(&mut self, now: Instant) {
        (self.build_ended, self.last, self.last_activity) = (Some(now), now, now);
        self.leading = false;
    }

    /// When the changes pending are due (`None`: there are none).
    fn due(&self, building: bool, delay: Duration) -> Option<Instant> {
        let first = self.first?;
        Some(match (building, self.leading) {
            (true, _) => first + MAX_BUILD_WAIT,
            (false, true) => first,
            (false, false) => (self.last + delay)
                .min(self.build_ended.unwrap_or(first) + delay * 10)
                .min(first + MAX_BUILD_WAIT),
        })
    }

    /// The changes to tell (and whether every page reloads); starts over.
    fn take(&mut self) -> (Vec<String>, bool) {
        (self.first, self.build_ended, self.leading) = (None, None, false);
        let changed = std::mem::take(&mut self.pending).into_iter().collect();
        (changed, std::mem::take(&mut self.everything))
    }
}

impl Pump {
    /// Collects changes and tells clients. A change after a quiet spell (no change
    /// and no listener becoming busy or idle for `delay`) goes out at once, in the
    /// same turn (not through a timer, whose millisecond ticks would add up to one):
    /// the watcher reports a file only once it is written whole, so a plain save has
    /// nothing to wait for. Changes that follow within `delay` are gathered and sent
    /// `delay` after the last one. While a build listener is busy (a run pending or
    /// a job running) they are held, and go out together, `delay` after it is done
    /// (or after [`MAX_BUILD_WAIT`]).
    ///
    /// All this runs with the watcher, on its thread: a root that stops answering
    /// stops LiveReload's reloads, nothing else; at `stop` a stuck watcher is left
    /// behind after [`crate::watch::threaded::STUCK_WATCH`].
    pub async fn run(self, watching: Watching, stop: CancellationToken) {
        let gathering = stop.clone();
        let _ = watching
            .run("livereload", &stop, move |watcher| {
                self.gather(watcher, gathering)
            })
            .await;
    }

    async fn gather(self, mut watcher: crate::watch::Watcher, stop: CancellationToken) {
        let mut gather = Gather::new(self.delay);
        let mut activity = self.builds.subscribe();
        let mut builds_open = true;
        loop {
            let building = builds_open && self.builds.building();
            let due = gather.due(building, self.delay);
            tokio::select! {
                // Who is busy is looked at before the changes that came with it: a
                // build's end, and its writes read in the same turn, are seen in that
                // order, so no page of it goes out at once, alone.
                biased;
                _ = stop.cancelled() => return,
                changed = activity.changed(), if builds_open => match changed {
                    // A build ended (not any change of who is busy).
                    Ok(()) if building && !self.builds.building() => gather.build_ended(Instant::now()),
                    Ok(()) => gather.last_activity = Instant::now(),
                    Err(_) => builds_open = false,
                },
                events = watcher.next() => match events {
                    Ok(events) => {
                        gather.everything |= self.collect(events, &mut gather.pending);
                        let busy = builds_open && self.builds.building();
                        gather.changed(Instant::now(), self.delay, busy);
                        if gather.leading {
                            self.tell(&mut gather, false);
                        }
                    }
                    Err(e) => {
                        warn!("LiveReload watcher failed: {e}");
                        return;
                    }
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.tell(&mut gather, building);
                }
            }
        }
    }

    /// Tells the clients what `gather` holds (`building`: a build is still busy, and
    /// the changes waited [`MAX_BUILD_WAIT`] for it).
    fn tell(&self, gather: &mut Gather, building: bool) {
        if building {
            warn!(
                waited_ms = MAX_BUILD_WAIT.as_millis() as u64,
                "a build is still running: telling LiveReload clients anyway"
            );
        }
        let (changed, everything) = gather.take();
        debug!(files = changed.len(), everything, "telling LiveReload clients");
        self.lr.changed(&changed, everything);
    }

    /// Adds the pages and assets `events` changed to `pending`; true when there are
    /// more than [`MAX_PENDING`] (then every page reloads).
    fn collect(&self, events: Vec<crate::watch::FileEvent>, pending: &mut BTreeSet<String>) -> bool {
        let mut overflow = false;
        for e in events
            .into_iter()
            .filter(|e| !matches!(e.kind, crate::events::EventKind::Delete))
        {
            let Ok(rel) = e.path.strip_prefix(&self.root) else {
                continue;
            };
            // A name that is not UTF-8 cannot be requested, so no page shows it.
            if let Some(rel) = rel.to_str().filter(|_| self.matcher.matches(rel)) {
                if pending.len() < MAX_PENDING {
                    pending.insert(format!("/{rel}"));
                } else {
                    overflow = true;
                }
            }
        }
        overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(30);

    fn change(gather: &mut Gather, path: &str, at: Instant) {
        gather.pending.insert(path.to_owned());
        gather.changed(at, DELAY, false);
    }

    #[test]
    fn a_change_after_a_quiet_spell_is_due_at_once_and_the_next_is_gathered() {
        let mut gather = Gather::new(DELAY);
        let t0 = Instant::now();
        change(&mut gather, "/a.css", t0);
        assert!(gather.leading);
        assert_eq!(gather.due(false, DELAY), Some(t0));
        assert_eq!(gather.take(), (vec!["/a.css".to_owned()], false));
        // 5 ms later, within the delay of the last: gathered.
        let t1 = t0 + Duration::from_millis(5);
        change(&mut gather, "/b.css", t1);
        assert!(!gather.leading);
        assert_eq!(gather.due(false, DELAY), Some(t1 + DELAY));
        // While a build is busy it waits for the build, at most MAX_BUILD_WAIT.
        assert_eq!(gather.due(true, DELAY), Some(t1 + MAX_BUILD_WAIT));
        gather.take();
        // After a quiet spell again: at once.
        let t2 = t1 + DELAY * 2;
        change(&mut gather, "/c.css", t2);
        assert_eq!(gather.due(false, DELAY), Some(t2));
    }

    #[test]
    fn regression_a_change_just_after_a_listener_went_idle_is_gathered_not_sent_at_once() {
        // A build that wrote pages and ended before its events were read: its first
        // page must not go out alone, ahead of the rest.
        let mut gather = Gather::new(DELAY);
        let t0 = Instant::now() + DELAY;
        gather.last_activity = t0;
        change(&mut gather, "/p1.html", t0 + Duration::from_millis(2));
        assert!(!gather.leading);
        assert_eq!(
            gather.due(false, DELAY),
            Some(t0 + Duration::from_millis(2) + DELAY)
        );
        // The same after a build's end was seen.
        let mut gather = Gather::new(DELAY);
        gather.build_ended(t0);
        change(&mut gather, "/p1.html", t0 + Duration::from_millis(2));
        assert!(!gather.leading);
    }

    #[test]
    fn regression_a_change_made_while_a_build_is_busy_never_goes_out_at_once() {
        // The first page of a long build, after a quiet spell: held for the build,
        // and once the build is over, gathered with the rest, not sent alone.
        let mut gather = Gather::new(DELAY);
        let t0 = Instant::now();
        gather.pending.insert("/p1.html".to_owned());
        gather.changed(t0, DELAY, true);
        assert!(!gather.leading);
        assert_eq!(gather.due(true, DELAY), Some(t0 + MAX_BUILD_WAIT));
        let ended = t0 + DELAY * 20;
        gather.build_ended(ended);
        gather.pending.insert("/p2.html".to_owned());
        gather.changed(ended, DELAY, false);
        assert!(!gather.leading);
        assert_eq!(gather.due(false, DELAY), Some(ended + DELAY));
    }

    #[test]
    fn nothing_pending_is_never_due() {
        let mut gather = Gather::new(DELAY);
        gather.changed(Instant::now(), DELAY, false);
        assert_eq!(gather.due(false, DELAY), None);
    }
}
