//! Asking a file system that may not answer. A `stat` or a `canonicalize` on a
//! mount whose server is gone (a dead NFS server, a stopped FUSE server) blocks its
//! thread until the server answers again, which may be never. Such questions run on
//! tokio's blocking pool, waited for with a deadline, and each kind of question has
//! a fixed number of places ([`Probes`]): a thread a hung mount has caught keeps its
//! place, so however often the question is asked (a reload every second, `explain`
//! in a loop), at most that many threads are ever caught by it.

use std::time::Duration;
use tokio::sync::Semaphore;

/// Why a question got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// Asked, and not answered within its limit (or its work panicked).
    Late,
    /// Not asked: every place is held by a question not answered yet.
    Busy,
}

/// One kind of question put to file systems, with at most a fixed number asked at once.
pub struct Probes {
    places: Semaphore,
}

impl Probes {
    /// A kind of question with `places` places.
    pub const fn new(places: usize) -> Self {
        Self {
            places: Semaphore::const_new(places),
        }
    }

    /// Runs `work` on a blocking thread and waits at most `limit` for its answer.
    /// [`Unanswered::Late`] when it did not answer in time (its thread keeps its place
    /// until it does) or panicked; [`Unanswered::Busy`] at once, without running it,
    /// when every place is taken: the questions holding them have not been answered,
    /// so this one would not be either.
    pub async fn ask<T: Send + 'static>(
        &'static self,
        limit: Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Unanswered> {
        let place = self.places.try_acquire().map_err(|_| Unanswered::Busy)?;
        let task = tokio::task::spawn_blocking(move || {
            let _place = place;
            work()
        });
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) | Err(_) => Err(Unanswered::Late),
        }
    }

    /// [`Probes::ask`] for a caller that cannot await (the scheduler): `work` runs on
    /// a thread of its own, which this thread waits for at most `limit`.
    pub fn ask_blocking<T: Send + 'static>(
        &'static self,
        limit: Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Unanswered> {
        let place = self.places.try_acquire().map_err(|_| Unanswered::Busy)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                let _place = place;
                let _ = tx.send(work());
            })
            .map_err(|_| Unanswered::Late)?;
        rx.recv_timeout(limit).map_err(|_| Unanswered::Late)
    }
}

#[cfg(test)]
mod tests {
    use super::{Probes, Unanswered};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_question_stuck_past_its_limit_keeps_its_place_until_it_is_answered() {
        static PROBES: Probes = Probes::new(1);
        let (answer, stuck) = mpsc::channel::<()>();
        // Stuck: a file system that does not answer.
        let first = PROBES
            .ask(Duration::from_millis(50), move || stuck.recv().is_ok())
            .await;
        assert_eq!(first, Err(Unanswered::Late), "not answered within its limit");
        // Its thread still holds the only place: the next question is not even asked.
        static ASKED: AtomicBool = AtomicBool::new(false);
        let started = Instant::now();
        let second = PROBES
            .ask(Duration::from_secs(5), || ASKED.store(true, Ordering::SeqCst))
            .await;
        assert_eq!(second, Err(Unanswered::Busy));
        assert!(!ASKED.load(Ordering::SeqCst), "no second thread was caught");
        assert!(started.elapsed() < Duration::from_secs(1), "answered at once");
        // The file system answers: the place is free again.
        answer.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if PROBES.ask(Duration::from_secs(1), || 7).await == Ok(7) {
                break;
            }
            assert!(Instant::now() < deadline, "the place was never given back");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn a_blocking_question_stuck_past_its_limit_keeps_its_place_until_it_is_answered() {
        static PROBES: Probes = Probes::new(1);
        let (answer, stuck) = mpsc::channel::<()>();
        let first = PROBES.ask_blocking(Duration::from_millis(50), move || stuck.recv().is_ok());
        assert_eq!(first, Err(Unanswered::Late));
        assert_eq!(
            PROBES.ask_blocking(Duration::from_secs(5), || 1),
            Err(Unanswered::Busy)
        );
        answer.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while PROBES.ask_blocking(Duration::from_secs(1), || 7) != Ok(7) {
            assert!(Instant::now() < deadline, "the place was never given back");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
