//! `explain`: for every listener and route, whether a change to a path would run
//! it, and if not why. The route's own decision is [`crate::route::verdict`] (the
//! one [`crate::route::submission`] acts on); the listener adds its side: stopped or
//! failed, the route's path missing (unwatched), or the path's directory polled.
//!
//! What it asks the file system (where the path's directory and each route's path
//! resolve, whether each route's path exists) runs on a blocking thread, at most
//! [`FS_TIMEOUT`] per request and [`MAX_PROBES`] requests at once: a hung network
//! mount makes `explain` answer `unreachable`, never pins an async worker.

use super::{ListenerError, Listeners, Slot, State};
use crate::events::EventKind;
use crate::protocol::observe::{Explained, LastRun, RouteVerdict};
use crate::route::Verdict;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// How long `explain` waits for the file system (the path's directory and each
/// route's path resolved, each route's path looked up) before answering that the
/// path is unreachable.
pub const FS_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many `explain` file-system probes at once (a probe stuck on a
/// hung mount keeps its thread until the mount answers); more are answered
/// `unreachable` at once.
pub const MAX_PROBES: usize = 4;

static PROBES: crate::probe::Probes = crate::probe::Probes::new(MAX_PROBES);

/// What the file system said: where the path resolves (when it differs), and for
/// each route's path whether it exists and where it resolves.
#[derive(Debug, Default)]
struct Probe {
    resolved: Option<PathBuf>,
    roots: HashMap<PathBuf, Root>,
}

#[derive(Debug, Default)]
struct Root {
    exists: bool,
    canonical: Option<PathBuf>,
}

impl Probe {
    /// Asks the file system about `path` (when absolute) and the route paths `roots`,
    /// each once.
    fn run(path: Option<PathBuf>, roots: std::collections::BTreeSet<PathBuf>) -> Probe {
        let resolved = path.as_deref().and_then(resolve);
        let roots = roots
            .into_iter()
            .map(|root| {
                let exists = std::fs::symlink_metadata(&root).is_ok();
                let canonical = resolved.as_ref().and_then(|_| root.canonicalize().ok());
                (root, Root { exists, canonical })
            })
            .collect();
        Probe { resolved, roots }
    }
}

/// Runs `work` on a blocking thread, waiting at most `limit` for it; `None` when it
/// did not finish in time or [`MAX_PROBES`] are running already (see [`crate::probe`]).
pub(super) async fn bounded<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    PROBES.ask(limit, work).await.ok()
}

impl Listeners {
    /// Explains a change of `kind` to `path`: absolute, or relative to the config's
    /// directory when that lies under some route, else to each route's path.
    pub async fn explain(
        &self,
        path: &Path,
        kind: EventKind,
        config_dir: &Path,
    ) -> Result<Explained, ListenerError> {
        check_path(path)?;
        let slots = self.slots();
        let routes = || slots.iter().flat_map(|s| s.config.routes.iter());
        let from_config = config_dir.join(path);
        let absolute = path.is_absolute() || routes().any(|r| from_config.starts_with(&r.path));
        let mut notes = Vec::new();
        let shown = if absolute {
            from_config.clone()
        } else {
            path.to_owned()
        };
        if !absolute {
            notes.push("a relative path under no route from the config's directory: taken relative to each route's path".into());
        }
        let roots = routes()
            .map(|r| r.path.clone())
            .collect::<std::collections::BTreeSet<_>>();
        let asked = absolute.then(|| from_config.clone());
        let probe = bounded(FS_TIMEOUT, move || Probe::run(asked, roots))
            .await
            .ok_or_else(|| ListenerError::Unreachable {
                path: shown.clone(),
                limit: FS_TIMEOUT,
            })?;
        if let Some(resolved) = &probe.resolved {
            notes.push(format!(
                "{} resolves to {}",
                crate::names::escaped(&from_config),
                crate::names::escaped(resolved)
            ));
        }
        let mut verdicts = Vec::new();
        for slot in &slots {
            for route in &slot.config.routes {
                let lexical = if absolute {
                    from_config.clone()
                } else {
                    route.path.join(path)
                };
                verdicts.push(self.route_verdict(slot, route, &lexical, &probe, kind));
            }
        }
        Ok(Explained {
            path: shown,
            event: kind.as_str().to_owned(),
            routes: verdicts,
            notes,
        })
    }
}

impl Listeners {
    /// What `route` of `slot` does with a change of `kind` to `lexical` (the asked
    /// path made absolute for this route), seen through what `probe` found.
    fn route_verdict(
        &self,
        slot: &Slot,
        route: &crate::config::RouteConfig,
        lexical: &Path,
        probe: &Probe,
        kind: EventKind,
    ) -> RouteVerdict {
        let root = probe.roots.get(&route.path);
        let (file, via) = seen_as(route, lexical, probe.resolved.as_deref(), root);
        let verdict = crate::route::verdict(route, &file, kind);
        let mut answer = describe(route, &verdict, kind);
        if let Some(via) = via {
            answer.1 = format!(
                "{} (as {}, through a symlink)",
                answer.1,
                crate::names::escaped(&via)
            );
        }
        if verdict == Verdict::Runs {
            let exists = root.is_some_and(|r| r.exists);
            answer = listener_side(slot, route, &file, exists).unwrap_or(answer);
            let watched = matches!(answer.0, "runs" | "polled" | "open_for_writing");
            if let Some(link) =
                through_link(route, lexical, probe.resolved.as_deref(), root).filter(|_| watched)
            {
                answer = (
                    "through_symlink",
                    format!(
                        "reached through a symlink to a directory, inside the route's tree (it \
                         resolves to {}), which the watcher never follows: changes there are \
                         not seen",
                        crate::names::escaped(&link)
                    ),
                );
            }
        }
        let last_run = self.history().last_for(&slot.config.name, &route.name, &file);
        RouteVerdict {
            listener: slot.config.name.clone(),
            route: route.name.clone(),
            runs: matches!(answer.0, "runs" | "polled" | "open_for_writing"),
            reason: answer.0.to_owned(),
            detail: answer.1,
            last_run: last_run.map(|r| LastRun {
                id: r.id,
                started_ms: r.started_ms,
                outcome: r.outcome.clone(),
            }),
        }
    }
}

/// Refuses what no event can carry: NUL, an empty path, `..` (events name files
/// without it, so a path with it would be explained, or triggered, as some other
/// file). `explain` and `trigger` both check with this.
pub(super) fn check_path(path: &Path) -> Result<(), ListenerError> {
    let bad = |reason| ListenerError::BadPath {
        path: path.to_owned(),
        reason,
    };
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    if path.as_os_str().is_empty() {
        return Err(bad("is empty"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(bad("may not contain `..`: give the path as events name it"));
    }
    Ok(())
}

/// Where `path` resolves (its directory's symlinks followed, the last component kept
/// as is, for a file may be missing or itself a link), when that differs.
fn resolve(path: &Path) -> Option<PathBuf> {
    let parent = path.parent()?.canonicalize().ok()?;
    let resolved = parent.join(path.file_name()?);
    (resolved != path).then_some(resolved)
}

/// The path the route's watcher would name the file with: `lexical` when it lies
/// under the route's path; else, when `resolved` lies under where the route's path
/// resolves, the same file under the route's path (and through which path).
fn seen_as(
    route: &crate::config::RouteConfig,
    lexical: &Path,
    resolved: Option<&Path>,
    root: Option<&Root>,
) -> (PathBuf, Option<PathBuf>) {
    if lexical.starts_with(&route.path) {
        return (lexical.to_owned(), None);
    }
    let via = resolved.and_then(|resolved| {
        let root = root?.canonical.as_ref()?;
        Some(route.path.join(resolved.strip_prefix(root).ok()?))
    });
    match via {
        Some(file) => (file.clone(), Some(file)),
        None => (lexical.to_owned(), None),
    }
}

/// Where `lexical` (under the route's path) resolves, when that is through a symlink
/// to a directory inside the route's tree: `resolved` is not where the same path
/// under the route's resolved path lies. The watcher follows no such link. (Pure:
/// the file system was asked by [`Probe::run`], within its bounds.)
fn through_link(
    route: &crate::config::RouteConfig,
    lexical: &Path,
    resolved: Option<&Path>,
    root: Option<&Root>,
) -> Option<PathBuf> {
    let (resolved, canonical) = (resolved?, root?.canonical.as_ref()?);
    let inside = lexical.strip_prefix(&route.path).ok()?;
    (canonical.join(inside) != resolved).then(|| resolved.to_owned())
}

/// The route's answer: a reason code and what it means for people.
fn describe(
    route: &crate::config::RouteConfig,
    verdict: &Verdict,
    kind: EventKind,
) -> (&'static str, String) {
    let globs = route.matcher.includes().join(", ");
    match verdict {
        Verdict::Runs => ("runs", format!("matches {globs}; takes {}", route.events)),
        Verdict::OutsidePath => (
            "outside_path",
            format!("outside the route's path {}", crate::names::escaped(&route.path)),
        ),
        Verdict::RouteDir => (
            "route_dir",
            "the route's own directory: only files under it run it".into(),
        ),
        Verdict::Ignored(glob) => ("ignored", format!("ignored by {glob}")),
        Verdict::NotIncluded => ("not_included", format!("matches none of its globs: {globs}")),
        Verdict::KindFiltered(takes) => (
            "event_kind",
            format!("a {kind} is filtered out: the route takes {takes}"),
        ),
    }
}

/// What the listener says of a route that takes the change (`exists`: whether the
/// route's path exists): `None` when it runs as the route says.
fn listener_side(
    slot: &Slot,
    route: &crate::config::RouteConfig,
    file: &Path,
    exists: bool,
) -> Option<(&'static str, String)> {
    let name = &slot.config.name;
    let (state, error) = slot.shared.get();
    match state {
        State::Stopped => {
            return Some((
                "listener_stopped",
                format!("listener {name} is stopped (execlibctl start {name})"),
            ));
        }
        State::Failed => {
            let why = error.unwrap_or_default();
            return Some(("listener_stopped", format!("listener {name} failed: {why}")));
        }
        State::Starting => {
            let why = error.map(|e| format!(": {e}")).unwrap_or_default();
            return Some((
                "listener_starting",
                format!("listener {name} is still setting up its watches{why}"),
            ));
        }
        State::Running | State::Degraded => {}
    }
    if !exists {
        return Some((
            "unwatched",
            format!(
                "the route's path {} does not exist: the listener waits for it to appear",
                crate::names::escaped(&route.path)
            ),
        ));
    }
    if let Some(held) = slot.shared.held(file) {
        let why = match held.brief {
            true => "found in a new directory, it may be open for writing",
            false => "a writer has it open",
        };
        return Some((
            "open_for_writing",
            format!(
                "runs when its writer closes it: its changes have been held {} ms ({why}), \
                 at most {} ms more (max_hold_ms)",
                held.held_for.as_millis(),
                held.at_most.as_millis()
            ),
        ));
    }
    let polled = slot.shared.polled.lock().expect("polled lock").clone();
    let (dir, why) = polled.into_iter().find(|(dir, _)| file.starts_with(dir))?;
    Some((
        "polled",
        format!(
            "runs, seen at the next poll: {} is polled ({why})",
            crate::names::escaped(&dir)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused_with_a_reason() {
        for (path, reason) in [("a\0b", "NUL"), ("", "empty"), ("src/../a", "`..`")] {
            let err = check_path(Path::new(path)).unwrap_err().to_string();
            assert!(err.contains(reason), "{path:?}: {err}");
        }
        check_path(Path::new("/src/\u{1b}[2J.md")).expect("any other bytes are a path");
    }

    #[test]
    fn a_path_through_a_symlinked_directory_is_seen_under_the_route() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let given = dir.path().join("link/a.md");
        let resolved = resolve(&given).expect("it resolves elsewhere");
        assert_eq!(resolved, dir.path().canonicalize().unwrap().join("real/a.md"));
        assert_eq!(resolve(&resolved), None, "already resolved");
    }

    #[tokio::test]
    async fn explain_on_a_hung_file_system_answers_instead_of_waiting() {
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let limit = Duration::from_millis(100);
        let answer = bounded(limit, move || hung.recv().is_ok()).await;
        assert_eq!(answer, None, "a probe past its limit is given up");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Stuck probes hold their slots: past MAX_PROBES, the answer comes at once.
        let mut stuck = Vec::new();
        for _ in 1..MAX_PROBES {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            assert_eq!(bounded(limit, move || rx.recv().is_ok()).await, None);
            stuck.push(tx);
        }
        let started = std::time::Instant::now();
        assert_eq!(bounded(Duration::from_secs(60), || true).await, None);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused without waiting"
        );
        drop((release, stuck));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while bounded(limit, || true).await != Some(true) {
            assert!(
                std::time::Instant::now() < deadline,
                "the slots come back once the mount answers"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
