//! The site root as its file system tells it: where it resolves and whether its
//! files may be cached, asked on a blocking thread and waited for at most
//! [`ROOT_WAIT`], so a root on a mount that does not answer (a dead NFS server)
//! never holds the daemon's start or a reload for longer; at most [`ROOT_PROBES`]
//! threads are ever caught by it, however many reloads ask (see [`crate::probe`]).

use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::warn;

/// How long the server's start (or a reload) waits for the root's file system.
pub const ROOT_WAIT: Duration = Duration::from_secs(5);

/// At most this many questions about the root at once; past them, the root counts
/// as not answering at once.
pub const ROOT_PROBES: usize = 2;

static PROBES: crate::probe::Probes = crate::probe::Probes::new(ROOT_PROBES);

/// The root to serve, and whether its files may be cached.
pub struct Resolved {
    /// Canonical when the file system answered and the root exists; else as given.
    pub path: PathBuf,
    /// The device of the root's file system, whose files may be cached; `None` on a
    /// file system that may not answer (see [`super::cache`]), or when it did not.
    pub cacheable: Option<u64>,
}

/// Resolves `root` (see [`Resolved`]); says why when it falls back to `root` as given.
pub async fn resolve(root: &Path) -> Resolved {
    let asked = root.to_owned();
    let work = move || {
        let path = asked.canonicalize();
        let cacheable = path.as_deref().ok().and_then(super::cache::local_device);
        (path, cacheable)
    };
    let shown = crate::names::escaped(root);
    match PROBES.ask(ROOT_WAIT, work).await {
        Ok((Ok(path), cacheable)) => Resolved { path, cacheable },
        Ok((Err(e), _)) => {
            warn!(root = %shown, "site root not found ({e}); serving 404 until it exists");
            as_given(root)
        }
        Err(crate::probe::Unanswered::Busy) => {
            warn!(
                root = %shown,
                "site root: its file system has not answered the questions asked before \
                 (is it hung?): serving it as given, uncached"
            );
            as_given(root)
        }
        Err(crate::probe::Unanswered::Late) => {
            warn!(
                root = %shown,
                "site root did not answer within {} s (is its file system hung?): serving it \
                 as given, uncached",
                ROOT_WAIT.as_secs()
            );
            as_given(root)
        }
    }
}

fn as_given(root: &Path) -> Resolved {
    Resolved {
        path: root.to_owned(),
        cacheable: None,
    }
}

/// Where `root` resolves now, if its file system answers within [`ROOT_WAIT`].
pub async fn resolves_to(root: &Path) -> Option<PathBuf> {
    let asked = root.to_owned();
    PROBES
        .ask(ROOT_WAIT, move || asked.canonicalize().ok())
        .await
        .ok()?
}
