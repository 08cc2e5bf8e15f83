//! `events --follow`: the one reply of many lines. After the first reply (the
//! recent events, `"following":true`), the connection carries one
//! [`Streamed`] line per event its listener filter lets through, a `lagged` line when
//! the follower fell more than [`crate::feed::BACKLOG`] events behind (those are
//! lost, never queued), and an `end` line when the daemon begins to stop; then it
//! closes. Whatever the client sends meanwhile is read and ignored; its close ends
//! the stream. A follower that leaves a line unread for the idle timeout is closed.
//! At most [`crate::feed::MAX_SUBSCRIBERS`] follow at once; more are told `busy`.

use super::observe;
use crate::feed::{Next, Subscription};
use crate::protocol::observe::Streamed;
use crate::protocol::{ErrorCode, Response};
use crate::state::DaemonState;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::OwnedWriteHalf;

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
    let mut ignored = [0u8; 512];
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
        };
        let end = matches!(line, Streamed::End(_));
        let mut text = serde_json::to_string(&line).expect("stream lines serialize");
        text.push('\n');
        if super::send(writer, &text, idle).await.is_err() || end {
            return;
        }
    }
}
