//! systemd notifications: readiness, status line, stopping and the watchdog.
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use sd_notify::NotifyState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("cannot notify systemd: {e}");
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
