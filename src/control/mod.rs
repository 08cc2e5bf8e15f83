//! The control socket: accepts clients and serves each connection on its own
//! task, so a slow, silent or abusive client never blocks another. At most
//! [`MAX_CONNECTIONS`] are served at once; silent ones give their slot up to
//! newcomers ([`admission`]).

pub mod admission;
pub mod handler;
mod keeping_up;
mod observe;
mod runtime_dir;
pub mod socket;
mod stream;

use crate::protocol::{self, ErrorCode, Frame, Request, Response, read_frame};
use crate::state::DaemonState;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The running accept loop.
pub struct ControlServer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Starts accepting on `listener`.
    pub fn spawn(listener: tokio::net::UnixListener, state: Arc<DaemonState>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, state, stop.clone()));
        ControlServer { stop, task }
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// At most this many clients are served at once. When all are taken, the longest
/// idle gives its slot up; when every one is being answered, a newcomer gets `busy`.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a reply to a client being turned away may take to go out.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

async fn accept_loop(listener: tokio::net::UnixListener, state: Arc<DaemonState>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    let admission = admission::Admission::new(MAX_CONNECTIONS);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // The uid the kernel recorded at connect; unknown (never favoured) if unreadable.
                    let uid = crate::sys::peer_credentials(std::os::fd::AsFd::as_fd(&stream))
                        .map_or(u32::MAX, |c| c.uid);
                    let socket = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok();
                    match admission.admit(uid, socket, tokio::time::Instant::now()) {
                        Some(ticket) => connections.spawn(connection(stream, state.clone(), ticket)),
                        None => connections.spawn(refuse(stream)),
                    };
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Tells a client that every slot is busy answering requests, then closes. (The
/// reply stays readable after the close, so a client that wrote its request first
/// still reads it.)
async fn refuse(stream: UnixStream) {
    let (_, mut writer) = stream.into_split();
    let message = format!("{MAX_CONNECTIONS} requests are being answered; try again");
    let _ = send(
        &mut writer,
        &Response::error(ErrorCode::Busy, message).to_line(),
        REFUSAL_WRITE,
    )
    .await;
}

async fn connection(stream: UnixStream, state: Arc<DaemonState>, ticket: admission::Ticket) {
    let idle = state.config.control.idle_timeout;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(ticket.guard(reader));
    let mut line = Vec::new();
    // Only a request moves the deadline: blank lines do not keep a connection alive.
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        if !next_request(&mut reader, &mut writer, &mut line, &mut deadline, &ticket, idle).await {
            return;
        }
        ticket.busy();
        let (response, shutdown, command) = match protocol::parse_request(&line) {
            Ok(Request::Events {
                listener,
                follow: true,
            }) => {
                // Counted as its first reply says: `ok` when a stream follows, else the refusal.
                let (first, subscription) = stream::open(&state, listener.as_deref());
                state.metrics.control_request("events", &result_name(&first));
                if send(&mut writer, &first.to_line(), idle).await.is_err() {
                    return;
                }
                if let Some(subscription) = subscription {
                    stream::follow(
                        &state,
                        listener.as_deref(),
                        subscription,
                        &mut reader,
                        &mut writer,
                    )
                    .await;
                }
                return;
            }
            Ok(request) => {
                let shutdown = request == Request::Shutdown;
                let command = command_name(&request);
                (handler::handle(&state, request).await, shutdown, command)
            }
            Err(error) => {
                debug!(code = ?error.code, "bad control request: {}", error.message);
                let failed = crate::protocol::replies::Failed { error };
                (Response::Error(failed), false, "invalid".to_owned())
            }
        };
        state.metrics.control_request(&command, &result_name(&response));
        let sent = send(&mut writer, &response.to_line(), idle).await;
        if shutdown {
            state.request_shutdown("the control socket");
        }
        if sent.is_err() {
            return;
        }
        // A line sent along with the last request may wait in the buffer already.
        ticket.idle(tokio::time::Instant::now(), reader.buffer());
    }
}

/// Reads the next request line into `line` and moves `deadline` on. `false` when the
/// connection is to close: at end of input or a read error, or, each told to the
/// client first, when it is evicted for a newcomer, is idle past `deadline` or sends
/// a line over [`protocol::MAX_LINE`]. Blank lines are skipped.
async fn next_request(
    reader: &mut BufReader<admission::Guarded<tokio::net::unix::OwnedReadHalf>>,
    writer: &mut OwnedWriteHalf,
    line: &mut Vec<u8>,
    deadline: &mut tokio::time::Instant,
    ticket: &admission::Ticket,
    idle: Duration,
) -> bool {
    let evicted = async |writer: &mut OwnedWriteHalf| {
        let message = format!("closed to make room: {MAX_CONNECTIONS} connections open and this one idle");
        let _ = send(
            writer,
            &Response::error(ErrorCode::Busy, message).to_line(),
            REFUSAL_WRITE,
        )
        .await;
        false
    };
    loop {
        let read = tokio::select! {
            biased;
            _ = ticket.evicted.cancelled() => return evicted(writer).await,
            read = tokio::time::timeout_at(*deadline, read_frame(reader, line)) => read,
        };
        let (code, message) = match read {
            Ok(Ok(Frame::Line)) if line.iter().all(u8::is_ascii_whitespace) => {
                ticket.skipped(reader.buffer());
                continue;
            }
            Ok(Err(_)) if ticket.evicted.is_cancelled() => return evicted(writer).await,
            Ok(Ok(Frame::Line)) => {
                *deadline = tokio::time::Instant::now() + idle;
                return true;
            }
            Ok(Ok(Frame::Eof)) | Ok(Err(_)) => return false,
            Ok(Ok(Frame::TooLarge)) => (
                ErrorCode::TooLarge,
                format!("request line longer than {} bytes; closing", protocol::MAX_LINE),
            ),
            Err(_) => (
                ErrorCode::Timeout,
                format!("no request within {} ms; closing", idle.as_millis()),
            ),
        };
        let _ = send(writer, &Response::error(code, message).to_line(), idle).await;
        return false;
    }
}

/// A request's `cmd`, for the metrics.
fn command_name(request: &Request) -> String {
    let value = serde_json::to_value(request).unwrap_or_default();
    value["cmd"].as_str().unwrap_or("invalid").to_owned()
}

/// `ok`, or the error's code, for the metrics.
fn result_name(response: &Response) -> String {
    let Response::Error(failed) = response else {
        return "ok".to_owned();
    };
    let code = serde_json::to_value(failed.error.code).unwrap_or_default();
    code.as_str().unwrap_or("error").to_owned()
}

/// Writes a line (a reply, or a line of a stream), giving up after `limit` (a
/// client that does not read).
async fn send(writer: &mut OwnedWriteHalf, line: &str, limit: Duration) -> std::io::Result<()> {
    let write = async {
        writer.write_all(line.as_bytes()).await?;
        writer.flush().await
    };
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
