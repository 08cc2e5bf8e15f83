//! Route matching: which routes a file event is for, and what each submits to its
//! listener's scheduler. A route takes an event under its path, of a kind it
//! wants, whose path (relative to the route's) matches its globs and escapes its
//! ignores. [`verdict`] is that decision with its reason; [`submission`] acts on
//! it and `execlibctl explain` reports it, so the two cannot disagree.

use crate::config::{Mode, RouteConfig};
use crate::events::{EventKind, EventSet, FileEvent};
use crate::glob::Check;
use crate::scheduler::{Submission, Timing};
use std::path::{Path, PathBuf};

/// Whether a route takes an event, and if not why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The route runs for it.
    Runs,
    /// The path is not under the route's path.
    OutsidePath,
    /// The path is the route's directory itself (only files under it count).
    RouteDir,
    /// An ignore glob (this one) matches the path relative to the route's.
    Ignored(String),
    /// No include glob matches the path relative to the route's.
    NotIncluded,
    /// The route does not take this kind of event; it takes these.
    KindFiltered(EventSet),
}

/// Whether `route` takes an event of `kind` at `path`, and if not why.
pub fn verdict(route: &RouteConfig, path: &Path, kind: EventKind) -> Verdict {
    let Ok(rel) = path.strip_prefix(&route.path) else {
        return Verdict::OutsidePath;
    };
    if rel.as_os_str().is_empty() {
        return Verdict::RouteDir;
    }
    match route.matcher.check(rel) {
        Check::Ignored(glob) => Verdict::Ignored(glob.to_owned()),
        Check::NotIncluded => Verdict::NotIncluded,
        Check::Matches if !route.events.contains(kind) => Verdict::KindFiltered(route.events),
        Check::Matches => Verdict::Runs,
    }
}

/// The submission for `route` (the listener's route number `index`) if the event is
/// for it. An `each` route's runs are per file; a `batch` route's share one key.
pub fn submission(index: usize, route: &RouteConfig, event: &FileEvent) -> Option<Submission> {
    // A deletion the route does not take still tells it the file is gone, so a run
    // pending for it is dropped, not started on a missing file.
    let gone_only = match verdict(route, &event.path, event.kind) {
        Verdict::Runs => false,
        Verdict::KindFiltered(_) if event.kind == EventKind::Delete => true,
        _ => return None,
    };
    let key_path = match route.mode {
        Mode::Each => event.path.clone(),
        Mode::Batch => PathBuf::new(), // one key for the whole route
    };
    Some(Submission {
        key: (index, key_path),
        file: event.path.clone(),
        kind: event.kind,
        timing: Timing {
            debounce: route.debounce,
            delay: route.delay,
        },
        order: route.order,
        gone_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(extra: &str) -> RouteConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let path = dir.path().join("site.toml");
        let body = format!(
            "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"/srv/src\"\n  glob = \"**/*.md\"\n  {extra}\n  shell = \"true\"\n"
        );
        std::fs::write(&path, body).unwrap();
        let config = crate::config::Config::load(&path, "site", &Default::default()).unwrap();
        config.listeners[0].routes[0].clone()
    }

    #[test]
    fn every_reason_and_submission_agrees_with_it() {
        let r = route("ignore = [\"**/draft-*\"]\n  events = [\"delete\"]");
        let at = |p: &str, kind| verdict(&r, Path::new(p), kind);
        use EventKind::*;
        assert_eq!(at("/srv/other/a.md", Delete), Verdict::OutsidePath);
        assert_eq!(
            at("/srv/srcx/a.md", Delete),
            Verdict::OutsidePath,
            "a prefix of a name is not under it"
        );
        assert_eq!(at("/srv/src", Delete), Verdict::RouteDir);
        assert_eq!(
            at("/srv/src/d/draft-1.md", Delete),
            Verdict::Ignored("**/draft-*".into())
        );
        assert_eq!(at("/srv/src/a.txt", Delete), Verdict::NotIncluded);
        let takes: EventSet = [Delete].into_iter().collect();
        assert_eq!(at("/srv/src/a.md", Modify), Verdict::KindFiltered(takes));
        assert_eq!(at("/srv/src/a.md", Delete), Verdict::Runs);
        for (p, kind) in [
            ("/srv/src/a.md", Delete),
            ("/srv/src/a.md", Modify),
            ("/srv/src/a.txt", Delete),
        ] {
            let event = FileEvent { path: p.into(), kind };
            assert_eq!(submission(0, &r, &event).is_some(), at(p, kind) == Verdict::Runs);
        }
    }
}
