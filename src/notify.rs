//! systemd notifications: readiness, status line, reloading, stopping and the
//! watchdog. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! Messages go out from a thread of their own, in order: a notify socket whose
//! reader is slow or stuck (its datagram queue is short) blocks that thread, never
//! the daemon's runtime. At most [`QUEUE`] messages wait; beyond that new ones are
//! dropped (a status line is superseded by the next anyway) and the loss is logged.

use sd_notify::NotifyState;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Messages waiting for the notify socket before new ones are dropped.
pub const QUEUE: usize = 64;

enum Message {
    /// `KEY=VALUE` lines, sent as one datagram.
    Send(Vec<String>),
    /// Answered once every message before it has been sent.
    Flush(SyncSender<()>),
}

fn sender() -> Option<&'static SyncSender<Message>> {
    static SENDER: OnceLock<Option<SyncSender<Message>>> = OnceLock::new();
    SENDER
        .get_or_init(|| {
            std::env::var_os("NOTIFY_SOCKET")?;
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("sd-notify".into())
                .spawn(move || deliver(rx));
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    warn!("cannot start the systemd notification thread: {e}");
                    None
                }
            }
        })
        .as_ref()
}

fn deliver(rx: Receiver<Message>) {
    for message in rx {
        match message {
            Message::Send(lines) => {
                let states: Vec<NotifyState> = lines.iter().map(|l| NotifyState::Custom(l)).collect();
                if let Err(e) = sd_notify::notify(&states) {
                    warn!("cannot notify systemd: {e}");
                }
            }
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn send(states: &[NotifyState]) {
    let Some(sender) = sender() else { return };
    let lines = states.iter().map(|s| s.to_string()).collect();
    let sent = sender.try_send(Message::Send(lines));
    if let Err(TrySendError::Full(_)) = sent {
        debug!("systemd's notify socket is not keeping up: a notification was dropped");
    }
}

/// Waits, up to `limit`, until every notification sent so far is out (before exit).
pub fn flush(limit: Duration) {
    let Some(sender) = sender() else { return };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    if sender.try_send(Message::Flush(tx)).is_ok() {
        let _ = rx.recv_timeout(limit);
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new status line.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (systemd 253+ needs both); `READY=1` follows.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading")]),
        Err(e) => warn!("cannot read the monotonic clock for RELOADING=1: {e}"),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// When systemd asks for a watchdog (`WATCHDOG_USEC`), pings it at half that
/// period until `stop` fires.
pub fn spawn_watchdog(stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()? / 2;
    debug!(period_ms = period.as_millis() as u64, "watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    }))
}
