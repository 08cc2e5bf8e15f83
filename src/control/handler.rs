//! One handler per control request, reached from one exhaustive `match`.

use crate::config::ConfigError;
use crate::daemon::{DaemonState, ReloadError};
use crate::listener::ListenerError;
use crate::protocol::replies::{self, ListenerCounts};
use crate::protocol::{ErrorBody, ErrorCode, Request, Response};

/// Answers one request. `Shutdown` only answers; the connection triggers the
/// shutdown once the reply is written.
pub async fn handle(state: &DaemonState, request: Request) -> Response {
    match request {
        Request::Listeners => Response::Listeners(replies::Listeners {
            listeners: state.listeners.infos().await,
        }),
        Request::Start { listener } => start_or_stop(state, state.listeners.start(&listener)).await,
        Request::Stop { listener } => start_or_stop(state, state.listeners.stop(&listener)).await,
        Request::Status => status(state),
        Request::Reload => reload(state).await,
        Request::Shutdown => Response::Done(replies::Done {}),
        Request::Trigger { listener, path } => trigger(state, &listener, &path).await,
        Request::Jobs => Response::Jobs(replies::Jobs {
            jobs: state.listeners.jobs().await,
        }),
    }
}

/// Answers `start` or `stop` once the listener has changed state (or failed to).
async fn start_or_stop(
    state: &DaemonState,
    change: impl Future<Output = Result<bool, ListenerError>>,
) -> Response {
    if state.is_shutting_down() {
        return shutting_down();
    }
    let result = change.await;
    state.publish_status();
    match result {
        Ok(changed) => Response::Changed(replies::Changed { changed }),
        Err(e) => listener_error(e),
    }
}

async fn trigger(state: &DaemonState, listener: &str, path: &std::path::Path) -> Response {
    if state.is_shutting_down() {
        return shutting_down();
    }
    let config_dir = state.config.path.parent().unwrap_or(std::path::Path::new("/"));
    match state.listeners.trigger(listener, path, config_dir).await {
        Ok(matched) => Response::Triggered(replies::Triggered { matched }),
        Err(e) => listener_error(e),
    }
}

async fn reload(state: &DaemonState) -> Response {
    match state.reload("the control socket").await {
        Ok(reloaded) => Response::Reloaded(reloaded),
        Err(ReloadError::ShuttingDown) => shutting_down(),
        Err(ReloadError::Invalid(e)) => {
            let mut body = ErrorBody::new(ErrorCode::InvalidConfig, e.to_string());
            if let ConfigError::Invalid { line, column, .. } = e {
                (body.line, body.column) = (Some(line), Some(column));
            }
            Response::Error(replies::Failed { error: body })
        }
    }
}

fn status(state: &DaemonState) -> Response {
    let summary = state.listeners.summary();
    Response::Status(replies::Status {
        instance: state.config.instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_ms: state.started.elapsed().as_millis() as u64,
        listeners: ListenerCounts {
            running: summary.running,
            total: summary.total,
        },
        server: state.server().map(|s| s.info()),
        unit: systemd_unit(),
    })
}

/// The service unit this process runs in: the last component of its cgroup path
/// when that names a `.service` (systemd puts each service in its own cgroup).
fn systemd_unit() -> Option<String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroups.lines().find_map(|line| {
        let unit = line.rsplit('/').next()?;
        unit.ends_with(".service").then(|| unit.to_owned())
    })
}

fn shutting_down() -> Response {
    Response::error(ErrorCode::ShuttingDown, "the daemon is shutting down")
}

fn listener_error(e: ListenerError) -> Response {
    let code = match e {
        ListenerError::Unknown(_) => ErrorCode::UnknownListener,
        ListenerError::Closing => ErrorCode::ShuttingDown,
        ListenerError::NotRunning(_) => ErrorCode::NotRunning,
        ListenerError::BadPath { .. } => ErrorCode::BadRequest,
        ListenerError::StartFailed { .. } => ErrorCode::StartFailed,
    };
    Response::error(code, e.to_string())
}
