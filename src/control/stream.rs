//! `events --follow`: the one reply of many lines. After the first reply (the
//! recent events, `"following":true`), the connection carries one
//! [`Streamed`] line per event its listener filter lets through, a `lagged` line when
//! the follower fell more than [`crate::feed::BACKLOG`] events behind (those are
//! lost, never queued), and an `end` line when the daemon begins to stop; then it
//! closes. Whatever the client sends meanwhile is read and ignored; its close ends
//! the stream. At most [`crate::feed::MAX_SUBSCRIBERS`] follow at once; more are
//! told `busy`.
//!
//! A follower that stops reading gives its slot back within a bound: after the idle
//! timeout without a line, the daemon checks that the follower has read all it was
//! sent (else it is closed) and sends a `keepalive` line; so on a quiet daemon a
//! follower that reads nothing is closed within twice the idle timeout. While lines
//! flow, its socket buffer fills and a write that waits the idle timeout closes it.

use super::observe;
use crate::feed::{Next, Subscription};
use crate::protocol::observe::Streamed;
use crate::protocol::{ErrorCode, Response};
use crate::state::DaemonState;
use std::os::fd::AsFd;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::OwnedWriteHalf;
use tracing::debug;

/// The shortest quiet spell before a keepalive, whatever the idle timeout.
const MIN_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// The first reply to an `events --follow` request, and the follower's place in the
/// feed when a stream follows it (`None`: the reply is a refusal, `busy`,
/// `unknown_listener` or `shutting_down`, and the connection ends with it).
pub fn open(state: &DaemonState, listener: Option<&str>) -> (Response, Option<Subscription>) {
    if state.is_shutting_down() {
        return (super::handler::shutting_down(), None);
    }
    // Subscribed before the recent events are taken: none falls between the two.
    let Some(subscription) = state.listeners.feed().subscribe() else {
        let message = format!(
            "{} event streams are open already (the most at once); try again later",
            crate::feed::MAX_SUBSCRIBERS
        );
        return (Response::error(ErrorCode::Busy, message), None);
    };
    let first = observe::events(state, listener, true);
    let streaming = matches!(first, Response::Events(_));
    (first, streaming.then_some(subscription))
}

/// Streams the events after the first reply (already written) until the stream ends.
pub async fn follow(
    state: &DaemonState,
    listener: Option<&str>,
    mut subscription: Subscription,
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut OwnedWriteHalf,
) {
    let idle = state.config.control.idle_timeout;
    // A tiny idle timeout must not make a keepalive loop.
    let quiet_after = idle.max(MIN_QUIET);
    let mut ignored = [0u8; 512];
    let quiet = tokio::time::sleep(quiet_after);
    tokio::pin!(quiet);
    loop {
        let line = tokio::select! {
            next = subscription.next() => match next {
                Next::Event(e) if listener.is_none_or(|l| e.listener == l) => Streamed::Event((*e).clone()),
                Next::Event(_) => continue,
                Next::Lagged(n) => Streamed::Lagged(n),
            },
            read = reader.read(&mut ignored) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            _ = state.shutdown_requested() => Streamed::End("the daemon is shutting down".into()),
            () = &mut quiet => {
                // Nothing written for `idle`: whatever is unread has waited that long.
                if crate::sys::unread_by_peer(writer.as_ref().as_fd()).is_ok_and(|n| n > 0) {
                    debug!("closing an event follower that left a line unread for {} ms", quiet_after.as_millis());
                    return;
                }
                Streamed::Keepalive(true)
            }
        };
        let end = matches!(line, Streamed::End(_));
        let mut text = serde_json::to_string(&line).expect("stream lines serialize");
        text.push('\n');
        if super::send(writer, &text, idle).await.is_err() || end {
            return;
        }
        quiet.as_mut().reset(tokio::time::Instant::now() + quiet_after);
    }
}
