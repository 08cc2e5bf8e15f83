//! `events --follow`: the one reply of many lines. After the first reply (the
//! recent events, `"following":true`), the connection carries one
//! [`Streamed`] line per event its listener filter lets through, a `lagged` line when
//! the follower fell more than [`crate::feed::BACKLOG`] events behind (those are
//! lost, never queued), and an `end` line when the daemon begins to stop; then it
//! closes. Whatever the client sends meanwhile is read and ignored; its close ends
//! the stream. A follower that leaves a line unread for the idle timeout is closed.
//! At most [`crate::feed::MAX_SUBSCRIBERS`] follow at once; more are told `busy`.

use super::observe;
use crate::feed::Next;
use crate::protocol::observe::Streamed;
use crate::protocol::{ErrorCode, Response};
use crate::state::DaemonState;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;

/// Serves an `events --follow` request on this connection until it ends.
pub async fn follow(
    state: &DaemonState,
    listener: Option<&str>,
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut OwnedWriteHalf,
) {
    let idle = state.config.control.idle_timeout;
    if state.is_shutting_down() {
        let _ = write(writer, &super::handler::shutting_down().to_line(), idle).await;
        return;
    }
    let Some(mut subscription) = state.listeners.feed().subscribe() else {
        let message = format!(
            "{} event streams are open already (the most at once); try again later",
            crate::feed::MAX_SUBSCRIBERS
        );
        let _ = write(writer, &Response::error(ErrorCode::Busy, message).to_line(), idle).await;
        return;
    };
    let first = observe::events(state, listener, true);
    let streaming = matches!(first, Response::Events(_));
    if write(writer, &first.to_line(), idle).await.is_err() || !streaming {
        return;
    }
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
        if write(writer, &text, idle).await.is_err() || end {
            return;
        }
    }
}

/// Writes a line, giving up after `limit` (a follower that does not read).
async fn write(writer: &mut OwnedWriteHalf, line: &str, limit: Duration) -> std::io::Result<()> {
    let write = async {
        writer.write_all(line.as_bytes()).await?;
        writer.flush().await
    };
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
