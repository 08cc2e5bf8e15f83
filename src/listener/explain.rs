//! `explain`: for every listener and route, whether a change to a path would run
//! it, and if not why. The route's own decision is [`crate::route::verdict`] (the
//! one [`crate::route::submission`] acts on); the listener adds its side: stopped or
//! failed, the route's path missing (unwatched), or the path's directory polled.

use super::{ListenerError, Listeners, Slot, State};
use crate::events::EventKind;
use crate::protocol::observe::{Explained, LastRun, RouteVerdict};
use crate::route::Verdict;
use std::path::{Component, Path, PathBuf};

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
        let resolved = absolute.then(|| resolve(&from_config)).flatten();
        if let Some(resolved) = &resolved {
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
                let (file, via) = seen_as(route, &lexical, resolved.as_deref());
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
                    answer = listener_side(slot, route, &file).unwrap_or(answer);
                }
                let last_run = self.history().last_for(&slot.config.name, &route.name, &file);
                verdicts.push(RouteVerdict {
                    listener: slot.config.name.clone(),
                    route: route.name.clone(),
                    runs: matches!(answer.0, "runs" | "polled"),
                    reason: answer.0.to_owned(),
                    detail: answer.1,
                    last_run: last_run.map(|r| LastRun {
                        id: r.id,
                        started_ms: r.started_ms,
                        outcome: r.outcome.clone(),
                    }),
                });
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
) -> (PathBuf, Option<PathBuf>) {
    if lexical.starts_with(&route.path) {
        return (lexical.to_owned(), None);
    }
    let via = resolved.and_then(|resolved| {
        let root = route.path.canonicalize().ok()?;
        Some(route.path.join(resolved.strip_prefix(root).ok()?))
    });
    match via {
        Some(file) => (file.clone(), Some(file)),
        None => (lexical.to_owned(), None),
    }
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

/// What the listener says of a route that takes the change: `None` when it runs as
/// the route says.
fn listener_side(
    slot: &Slot,
    route: &crate::config::RouteConfig,
    file: &Path,
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
        State::Running | State::Degraded => {}
    }
    if std::fs::symlink_metadata(&route.path).is_err() {
        return Some((
            "unwatched",
            format!(
                "the route's path {} does not exist: the listener waits for it to appear",
                crate::names::escaped(&route.path)
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
}
