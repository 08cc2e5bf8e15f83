//! The events the listeners receive, for `execlibctl events`: a ring of the last
//! [`RECENT_EVENTS`] and a bounded broadcast to at most [`MAX_SUBSCRIBERS`]
//! followers. Publishing never waits: a follower that does not keep up loses the
//! oldest events it has not read (it is told how many), so no subscriber can grow
//! the daemon's memory or slow a listener.

use crate::protocol::observe::{RECENT_EVENTS, SeenEvent};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// At most this many `events --follow` streams at once; more are refused with `busy`.
pub const MAX_SUBSCRIBERS: usize = 8;
/// Events a follower may be behind before it loses the oldest ([`Next::Lagged`]).
pub const BACKLOG: usize = 1024;

/// The daemon's event feed.
#[derive(Debug)]
pub struct Feed {
    recent: Mutex<VecDeque<Arc<SeenEvent>>>,
    tx: broadcast::Sender<Arc<SeenEvent>>,
    subscribers: AtomicUsize,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
            tx: broadcast::channel(BACKLOG).0,
            subscribers: AtomicUsize::new(0),
        }
    }
}

/// What a follower reads next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// An event.
    Event(Arc<SeenEvent>),
    /// It fell behind: this many events were dropped.
    Lagged(u64),
}

/// A follower's place in the feed; dropping it frees its slot.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<SeenEvent>>,
    feed: Arc<Feed>,
}

impl Feed {
    /// Records an event: into the ring, and to every follower (never waits).
    pub fn publish(&self, event: SeenEvent) {
        let event = Arc::new(event);
        {
            let mut recent = self.recent.lock().expect("feed lock");
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No follower: nothing to do.
        let _ = self.tx.send(event);
    }

    /// The recent events (of `listener` only, when given), oldest first.
    pub fn recent(&self, listener: Option<&str>) -> Vec<SeenEvent> {
        let recent = self.recent.lock().expect("feed lock");
        recent
            .iter()
            .filter(|e| listener.is_none_or(|l| e.listener == l))
            .map(|e| (**e).clone())
            .collect()
    }

    /// A new follower, from the next event on; `None` when [`MAX_SUBSCRIBERS`] follow.
    pub fn subscribe(self: &Arc<Self>) -> Option<Subscription> {
        let taken = self
            .subscribers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_SUBSCRIBERS).then_some(n + 1)
            });
        taken.ok()?;
        Some(Subscription {
            rx: self.tx.subscribe(),
            feed: self.clone(),
        })
    }
}

impl Subscription {
    /// The next event, or how many were lost; never `None` while the feed lives.
    pub async fn next(&mut self) -> Next {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Next::Event(event),
                Err(broadcast::error::RecvError::Lagged(n)) => return Next::Lagged(n),
                // The feed lives as long as this subscription (it holds it).
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.feed.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(listener: &str, n: usize) -> SeenEvent {
        SeenEvent {
            at_ms: 0,
            listener: listener.into(),
            path: format!("/src/{n}").into(),
            kind: "modify".into(),
            routes: vec![],
        }
    }

    #[test]
    fn the_ring_keeps_the_last_events_only() {
        let feed = Feed::default();
        for n in 0..RECENT_EVENTS + 10 {
            feed.publish(event(if n % 2 == 0 { "a" } else { "b" }, n));
        }
        let all = feed.recent(None);
        assert_eq!(all.len(), RECENT_EVENTS);
        assert_eq!(all[0].path, std::path::Path::new("/src/10"));
        assert!(feed.recent(Some("a")).iter().all(|e| e.listener == "a"));
        assert_eq!(feed.recent(Some("a")).len(), RECENT_EVENTS / 2);
    }

    #[tokio::test]
    async fn followers_are_capped_and_a_slow_one_is_told_what_it_lost() {
        let feed = Arc::new(Feed::default());
        let mut subs: Vec<_> = (0..MAX_SUBSCRIBERS).map(|_| feed.subscribe().unwrap()).collect();
        assert!(feed.subscribe().is_none(), "one more than the cap is refused");
        drop(subs.pop());
        subs.push(feed.subscribe().expect("a slot freed by a leaving follower"));
        for n in 0..BACKLOG + 5 {
            feed.publish(event("a", n));
        }
        let slow = &mut subs[0];
        assert_eq!(slow.next().await, Next::Lagged(5));
        let Next::Event(first) = slow.next().await else {
            panic!("an event after the lag")
        };
        assert_eq!(first.path, std::path::Path::new("/src/5"));
    }
}
