//! Which listeners are building the site right now, so LiveReload tells browsers
//! once a build is done rather than while it writes pages.
//!
//! A listener counts as a build for the HTTP front end when `[server].builds`
//! names it, or, without that setting, when at least one of its routes watches a
//! path outside the site's root (it reacts to sources, so its jobs are what
//! writes the site; a listener that only watches the site itself reacts to the
//! site and does not build it). A listener is *busy* while it has a run pending
//! (in its debounce or delay, or held) or a job running; every listener's
//! scheduler says so on each change ([`Builds::set`]), and the LiveReload pump
//! waits while a busy one counts ([`Builds::building`]). The rule is applied
//! when asked, so a reload that changes `[server]` applies at once.

use crate::config::{Config, ListenerConfig};
use crate::protocol::replies::BuildResult;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use tokio::sync::watch;

/// The busy build listeners, and the rule for which listeners are builds.
#[derive(Debug)]
pub struct Builds {
    busy: watch::Sender<BTreeSet<String>>,
    /// What browsers should show: a failure still current (the latest), or the
    /// success that cleared the last one; subscribers hear of each change.
    shown: watch::Sender<Option<BuildResult>>,
    /// The runs failing now, by listener, route and file (a later success of the
    /// same one clears it), and the latest result of all.
    results: Mutex<Results>,
    rule: Mutex<Rule>,
    /// Each listener that reported, with its route paths (for the default rule).
    paths: Mutex<HashMap<String, Vec<PathBuf>>>,
}

/// The runs failing now, and the latest result.
#[derive(Debug, Default)]
struct Results {
    failing: std::collections::BTreeMap<(String, String, PathBuf), BuildResult>,
    latest: Option<BuildResult>,
}

impl Results {
    /// The failure to show: the latest of those still failing.
    fn shown_failure(&self) -> Option<BuildResult> {
        self.failing.values().max_by_key(|r| r.at_ms).cloned()
    }
}

impl Rule {
    /// Whether listener `name`, whose routes watch `paths`, counts as a build.
    fn counts<'a>(&self, name: &str, mut paths: impl Iterator<Item = &'a std::path::Path>) -> bool {
        match (&self.named, &self.root) {
            (Some(named), _) => named.iter().any(|n| n == name),
            (None, Some(root)) => paths.any(|path| !path.starts_with(root)),
            (None, None) => false,
        }
    }
}

/// Which listeners count, from the config.
#[derive(Debug, Default)]
struct Rule {
    /// `[server].builds`, when set.
    named: Option<Vec<String>>,
    /// The site's root, when there is a server.
    root: Option<PathBuf>,
}

impl Default for Builds {
    fn default() -> Self {
        Builds {
            busy: watch::Sender::new(BTreeSet::new()),
            shown: watch::Sender::new(None),
            results: Mutex::new(Results::default()),
            rule: Mutex::new(Rule::default()),
            paths: Mutex::new(HashMap::new()),
        }
    }
}

impl Builds {
    /// Takes the rule from `config` (at start and at each reload).
    pub fn configure(&self, config: &Config) {
        let rule = Rule {
            named: config.server.as_ref().and_then(|s| s.builds.clone()),
            root: config.server.as_ref().map(|s| s.root.clone()),
        };
        *self.rule.lock().expect("builds lock") = rule;
        // Whoever waits on a build looks again under the new rule.
        self.busy.send_modify(|_| {});
    }

    /// Records whether listener `listener` is busy.
    pub fn set(&self, listener: &ListenerConfig, busy: bool) {
        let paths = listener.routes.iter().map(|r| r.path.clone()).collect();
        self.paths
            .lock()
            .expect("builds lock")
            .insert(listener.name.clone(), paths);
        self.busy.send_if_modified(|set| match busy {
            true => set.insert(listener.name.clone()),
            false => set.remove(&listener.name),
        });
    }

    /// A run of `listener`'s `route` for `file` ended (`failure`: why it failed; `output`:
    /// its last lines). Recorded when the listener counts as a build (the caller asks
    /// [`Builds::counts`] before passing a job's output here). A failure is
    /// shown until a run of the same route for the same file succeeds; subscribers
    /// are told of each failure, and of the success that leaves none failing.
    pub fn finished(
        &self,
        listener: &ListenerConfig,
        route: &str,
        file: &std::path::Path,
        failure: Option<String>,
        output: Vec<String>,
    ) {
        if !self.counts(listener) {
            return;
        }
        let at_ms = crate::protocol::epoch_ms(std::time::SystemTime::now());
        let result = BuildResult {
            ok: failure.is_none(),
            listener: listener.name.clone(),
            route: route.to_owned(),
            file: file.to_owned(),
            output: if failure.is_some() { output } else { Vec::new() },
            reason: failure,
            at_ms,
        };
        let mut results = self.results.lock().expect("builds lock");
        let key = (result.listener.clone(), result.route.clone(), result.file.clone());
        if result.ok {
            results.failing.remove(&key);
        } else {
            results.failing.insert(key, result.clone());
        }
        results.latest = Some(result.clone());
        let shown = match results.shown_failure() {
            Some(failure) => Some(failure),
            // None failing any more: the success that says so clears what is shown.
            None => Some(result),
        };
        self.shown.send_if_modified(|current| {
            let tell = *current != shown
                && (current.as_ref().is_some_and(|c| !c.ok) || shown.as_ref().is_some_and(|s| !s.ok));
            if tell || current.is_none() {
                *current = shown;
            }
            tell
        });
    }

    /// The build result for `status`: the latest failure while one is current, else
    /// the latest result.
    pub fn last(&self) -> Option<BuildResult> {
        let results = self.results.lock().expect("builds lock");
        results.shown_failure().or_else(|| results.latest.clone())
    }

    /// What browsers should show, as it changes (see [`Builds::finished`]).
    pub fn results(&self) -> watch::Receiver<Option<BuildResult>> {
        self.shown.subscribe()
    }

    /// Whether `listener` counts as a build now.
    pub fn counts(&self, listener: &ListenerConfig) -> bool {
        let paths = listener.routes.iter().map(|r| r.path.as_path());
        self.rule
            .lock()
            .expect("builds lock")
            .counts(&listener.name, paths)
    }

    /// Whether a listener that counts as a build is busy now.
    pub fn building(&self) -> bool {
        let busy = self.busy.borrow().clone();
        let rule = self.rule.lock().expect("builds lock");
        let paths = self.paths.lock().expect("builds lock");
        busy.iter().any(|name| {
            let routes = paths.get(name).into_iter().flatten().map(PathBuf::as_path);
            rule.counts(name, routes)
        })
    }

    /// Wakes when a listener becomes busy or idle, or the rule changes.
    pub fn subscribe(&self) -> watch::Receiver<BTreeSet<String>> {
        self.busy.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        for d in ["content", "public"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let body = format!(
            "{server}\n[[listener]]\nname = \"build\"\n  [[listener.route]]\n  path = \"content\"\n  \
             shell = \"true\"\n[[listener]]\nname = \"deploy\"\n  [[listener.route]]\n  path = \"public\"\n  \
             shell = \"true\"\n"
        );
        let path = dir.path().join("site.toml");
        std::fs::write(&path, body).unwrap();
        let config = Config::load(&path, "site", &Default::default()).unwrap();
        std::mem::forget(dir);
        config
    }

    #[test]
    fn by_default_a_listener_watching_sources_builds_and_one_watching_the_site_does_not() {
        let config = config("[server]\nroot = \"public\"");
        let builds = Builds::default();
        builds.configure(&config);
        let (build, deploy) = (&config.listeners[0], &config.listeners[1]);
        builds.set(deploy, true);
        assert!(!builds.building(), "the site's own watcher is no build");
        builds.set(build, true);
        assert!(builds.building());
        builds.set(build, false);
        assert!(!builds.building());
    }

    #[test]
    fn builds_names_the_listeners_that_count_and_a_reload_applies_at_once() {
        let named = config("[server]\nroot = \"public\"\nbuilds = [\"deploy\"]");
        let builds = Builds::default();
        builds.configure(&named);
        let mut rx = builds.subscribe();
        builds.set(&named.listeners[1], true);
        assert!(builds.building());
        rx.borrow_and_update();
        builds.configure(&config("[server]\nroot = \"public\"\nbuilds = []"));
        assert!(rx.has_changed().unwrap(), "waiters look again");
        assert!(!builds.building());
    }

    #[test]
    fn a_failure_stays_shown_until_the_same_run_succeeds() {
        let config = config("[server]\nroot = \"public\"");
        let builds = Builds::default();
        builds.configure(&config);
        let build = &config.listeners[0];
        let (a, b) = (std::path::Path::new("/c/a.md"), std::path::Path::new("/c/b.md"));
        let mut shown = builds.results();
        builds.finished(build, "pages", a, Some("exit code 2".into()), vec!["oops".into()]);
        assert!(shown.has_changed().unwrap());
        assert_eq!(shown.borrow_and_update().as_ref().map(|r| r.ok), Some(false));
        builds.finished(build, "pages", b, None, vec![]);
        assert!(!shown.has_changed().unwrap(), "a.md is still broken");
        assert_eq!(builds.last().and_then(|r| r.reason), Some("exit code 2".into()));
        builds.finished(build, "pages", a, None, vec![]);
        assert!(shown.has_changed().unwrap());
        assert_eq!(shown.borrow_and_update().as_ref().map(|r| r.ok), Some(true));
        assert_eq!(builds.last().map(|r| r.ok), Some(true));
    }
}
