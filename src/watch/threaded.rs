//! Where a running watcher works (a listener's, LiveReload's): on a thread of its
//! own, with a single-threaded runtime of its own, so every system call it makes on
//! the tree (`statx`, directory reads, polls, rescans) blocks only that thread. A
//! file system that stops answering (a dead NFS server) then stops one watcher,
//! never the daemon's runtime: the control socket, the other listeners, their jobs
//! and SIGTERM go on. A stop waits [`STUCK_WATCH`] for the thread to notice, then
//! leaves it behind.

use super::{HoldFor, PollFor, Setup, WatchError, Watcher};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often a running watcher's thread shows it is free (not stuck in a system call).
pub const BEAT: Duration = Duration::from_secs(1);

/// A watcher whose thread has not shown it is free for this long is reported stuck:
/// its listener is `degraded` until it is free again.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

/// How long a stop waits for a watcher thread to end once cancelled; one still
/// busy then is stuck in a system call (a file system that does not answer) and is
/// left to end on its own, its result dropped.
pub const STUCK_WATCH: Duration = Duration::from_secs(2);

/// A watcher and the runtime it is registered with, not yet running. Dropped
/// unrun (a reload cut short by a shutdown), its runtime is shut down without
/// waiting, which is allowed on an async thread, as a plain drop is not.
pub struct Watching {
    parts: Option<(Watcher, tokio::runtime::Runtime)>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        if let Some((watcher, runtime)) = self.parts.take() {
            drop(watcher);
            runtime.shutdown_background();
        }
    }
}

impl Watching {
    /// The watcher over `setup`, registered with a new runtime of its own.
    pub fn new(setup: Setup, hold_for: HoldFor, poll_for: PollFor) -> Result<Watching, WatchError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| WatchError::Inotify {
                action: "starting the watcher's runtime",
                source,
            })?;
        // Its inotify stream, timers and background pass belong to that runtime.
        let watcher = {
            let _entered = runtime.enter();
            setup.into_watcher(hold_for, poll_for)
        };
        match watcher {
            Ok(watcher) => Ok(Watching {
                parts: Some((watcher, runtime)),
            }),
            Err(e) => {
                runtime.shutdown_background();
                Err(e)
            }
        }
    }

    /// The watcher, for what the listener reports before it runs.
    pub fn watcher(&self) -> &Watcher {
        &self.parts.as_ref().expect("a watcher not yet run").0
    }

    /// Runs `work(watcher)` on a thread named after `name` (in the current
    /// tracing span) and returns its result; or why not, once logged: the thread could
    /// not start or failed, or `cancel` fired and the thread did not end within
    /// [`STUCK_WATCH`].
    pub async fn run<W, F>(
        mut self,
        name: &str,
        cancel: &CancellationToken,
        work: W,
    ) -> Result<F::Output, &'static str>
    where
        W: FnOnce(Watcher) -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        let (done, mut finished) = tokio::sync::oneshot::channel();
        // The watcher and its runtime are handed over once the thread is there: if it
        // cannot start, they are still ours, and dropped as above.
        let (hand, handed) = std::sync::mpsc::sync_channel::<(Watcher, tokio::runtime::Runtime)>(1);
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name(thread_name(name))
            .spawn(move || {
                let Ok((watcher, runtime)) = handed.recv() else {
                    return;
                };
                let _ = done.send(runtime.block_on(work(watcher).instrument(span)));
                // What its runtime still runs (a stuck background pass) is not waited for.
                runtime.shutdown_background();
            });
        if let Err(e) = thread {
            tracing::error!("cannot start the watcher's thread: {e}");
            return Err("its watcher's thread could not start");
        }
        let parts = self.parts.take().expect("a watcher runs once");
        if let Err(back) = hand.send(parts) {
            self.parts = Some(back.0);
            return Err(lost());
        }
        tokio::select! {
            result = &mut finished => return result.map_err(|_| lost()),
            _ = cancel.cancelled() => {}
        }
        match tokio::time::timeout(STUCK_WATCH, finished).await {
            Ok(result) => result.map_err(|_| lost()),
            Err(_) => {
                tracing::error!(
                    "the watcher did not stop within {} s: it is stuck on a file system that \
                     does not answer; left behind",
                    STUCK_WATCH.as_secs()
                );
                Err("its watcher did not stop: stuck on a file system that does not answer")
            }
        }
    }
}

/// The watcher's thread ended without a result: it panicked (the panic is logged).
fn lost() -> &'static str {
    tracing::error!("the watcher's thread ended abnormally");
    "its watcher's thread ended abnormally"
}

/// Watches `beats` (counted up by a watcher's thread every [`BEAT`] while it is free)
/// and calls `stuck(for)` each time it has not moved for [`STUCK_AFTER`] or more;
/// never returns.
pub async fn watch_beats(
    beats: &std::sync::atomic::AtomicU64,
    stuck: impl Fn(Duration),
) -> std::convert::Infallible {
    use std::sync::atomic::Ordering;
    let (mut seen, mut since) = (beats.load(Ordering::Relaxed), tokio::time::Instant::now());
    let mut check = tokio::time::interval(BEAT * 2);
    loop {
        check.tick().await;
        let now = beats.load(Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= STUCK_AFTER {
            stuck(since.elapsed());
        }
    }
}

/// `watch NAME`, cut to the 15 bytes a Linux thread name holds (on a character boundary).
fn thread_name(watcher: &str) -> String {
    let mut name = format!("watch {watcher}");
    while name.len() > 15 {
        name.pop();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_watcher_is_reported_stuck_only_after_its_beats_stop_for_stuck_after() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let beats = Arc::new(AtomicU64::new(0));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let watched = {
            let (beats, reports) = (beats.clone(), reports.clone());
            tokio::spawn(async move {
                watch_beats(&beats, |quiet| reports.lock().unwrap().push(quiet)).await;
            })
        };
        // Beating every second for a minute: never stuck.
        for _ in 0..60 {
            tokio::time::sleep(BEAT).await;
            beats.fetch_add(1, Ordering::Relaxed);
        }
        assert!(reports.lock().unwrap().is_empty());
        // Silent: reported once STUCK_AFTER has passed, not before, and again later.
        tokio::time::sleep(STUCK_AFTER - BEAT * 3).await;
        assert!(reports.lock().unwrap().is_empty());
        tokio::time::sleep(BEAT * 6).await;
        let first = reports.lock().unwrap().clone();
        assert!(
            !first.is_empty() && first.iter().all(|q| *q >= STUCK_AFTER),
            "{first:?}"
        );
        tokio::time::sleep(BEAT * 10).await;
        assert!(reports.lock().unwrap().len() > first.len());
        // Free again: no more reports.
        beats.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(BEAT * 3).await;
        let settled = reports.lock().unwrap().len();
        tokio::time::sleep(BEAT * 5).await;
        beats.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(BEAT * 2).await;
        assert_eq!(reports.lock().unwrap().len(), settled);
        watched.abort();
    }

    #[test]
    fn thread_names_fit_linux_and_cut_on_character_boundaries() {
        assert_eq!(thread_name("docs"), "watch docs");
        assert_eq!(thread_name("a-very-long-listener"), "watch a-very-lo");
        assert_eq!(thread_name("ééééééé"), "watch éééé");
    }
}
