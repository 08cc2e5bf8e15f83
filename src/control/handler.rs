//! One handler per control request, reached from one exhaustive `match`.

use super::keeping_up;
use crate::config::ConfigError;
use crate::listener::ListenerError;
use crate::protocol::replies::{self, ListenerCounts};
use crate::protocol::{ErrorBody, ErrorCode, Request, Response};
use crate::state::{DaemonState, ReloadError};

/// Answers one request. `Shutdown` only answers; the connection triggers the
/// shutdown once the reply is written.
pub async fn handle(state: &DaemonState, request: Request) -> Response {
    match request {
        Request::Listeners => {
            let listeners = state.listeners.infos_with_links().await;
            let watches = Some(keeping_up::watches(&listeners));
            Response::Listeners(replies::Listeners { listeners, watches })
        }
        Request::Start { listener } => start_or_stop(state, state.listeners.start(&listener)).await,
        Request::Stop { listener } => start_or_stop(state, state.listeners.stop(&listener)).await,
        Request::Status => status(state).await,
        Request::Reload => reload(state).await,
        Request::Shutdown => Response::Done(replies::Done {}),
        Request::Trigger { listener, path } => trigger(state, &listener, &path).await,
        Request::Jobs => Response::Jobs(replies::Jobs {
            jobs: state.listeners.jobs().await,
        }),
        Request::Metrics => Response::Metrics(replies::Metrics {
            text: crate::exposition::exposition(state).await,
        }),
        Request::History(query) => super::observe::history(state, &query),
        Request::Explain(args) => super::observe::explain(state, &args).await,
        Request::Events {
            listener,
            follow: false,
        } => super::observe::events(state, listener.as_deref(), false),
        // The connection serves a follow itself (it outlives one reply: `super::stream`)
        // and never passes one here; should it ever, the client is told, not misled
        // with a `following` that no stream backs.
        Request::Events { follow: true, .. } => Response::error(
            ErrorCode::Unsupported,
            "events with follow is served by the connection, not as a single reply",
        ),
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

async fn status(state: &DaemonState) -> Response {
    let summary = state.listeners.summary();
    let overview = keeping_up::Overview::of(&state.listeners.infos().await);
    Response::Status(Box::new(replies::Status {
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
        containment: crate::job::contain::describe(),
        last_build: state.listeners.builds().last(),
        watches: Some(overview.watches),
        polled_directories: overview.polled,
        overflows: overview.overflows,
        last_overflow_ms: overview.last_overflow_ms,
        jobs_queued: overview.jobs_queued,
        files_open: overview.files_open,
        last_runs: overview.last_runs,
        metrics: state.metrics_listen.get().map(|a| a.to_string()),
    }))
}

/// The service unit this process runs in: the last component of its cgroup path
/// (less the `supervisor` leaf of a delegated tree) when that names a `.service`
/// (systemd puts each service in its own cgroup).
fn systemd_unit() -> Option<String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroups.lines().find_map(|line| {
        let line = line.strip_suffix("/supervisor").unwrap_or(line);
        let unit = line.rsplit('/').next()?;
        unit.ends_with(".service").then(|| unit.to_owned())
    })
}

pub(super) fn shutting_down() -> Response {
    Response::error(ErrorCode::ShuttingDown, "the daemon is shutting down")
}

pub(super) fn listener_error(e: ListenerError) -> Response {
    let code = match e {
        ListenerError::Unknown(_) => ErrorCode::UnknownListener,
        ListenerError::Closing => ErrorCode::ShuttingDown,
        ListenerError::Replaced(_) => ErrorCode::StartFailed,
        ListenerError::NotRunning(_) => ErrorCode::NotRunning,
        ListenerError::BadPath { .. } => ErrorCode::BadRequest,
        ListenerError::StartFailed { .. } | ListenerError::Abandoned { .. } => ErrorCode::StartFailed,
        ListenerError::Unreachable { .. } => ErrorCode::Unreachable,
    };
    Response::error(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::listener::Listeners;
    use crate::protocol::replies::{Changed, ListenerCounts};
    use std::sync::Arc;

    /// A daemon's state on a config with listener `docs` watching `src`, nothing started.
    fn state(dir: &tempfile::TempDir) -> DaemonState {
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        let path = dir.path().join("site.toml");
        let body = "[daemon]\nstate_dir = \"state\"\n[control]\nsocket = \"c.sock\"\n\
                    [[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"src\"\n  shell = \"true\"\n";
        std::fs::write(&path, body).unwrap();
        let config = Config::load(&path, "site", &Default::default()).unwrap();
        let ledger = Arc::new(crate::ledger::Ledger::new(&config.daemon.state_dir));
        let listeners = Listeners::new(&config, ledger, Default::default());
        DaemonState::new(config, listeners, None)
    }

    fn code(response: Response) -> ErrorCode {
        match response {
            Response::Error(failed) => failed.error.code,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[tokio::test]
    async fn status_counts_listeners_and_start_stop_report_changes() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(&dir);
        let Response::Status(status) = handle(&state, Request::Status).await else {
            panic!()
        };
        assert_eq!((status.instance.as_str(), status.server), ("site", None));
        assert_eq!(status.listeners, ListenerCounts { running: 0, total: 1 });
        let start = || Request::Start {
            listener: "docs".into(),
        };
        let stop = || Request::Stop {
            listener: "docs".into(),
        };
        assert_eq!(
            handle(&state, start()).await,
            Response::Changed(Changed { changed: true })
        );
        assert_eq!(
            handle(&state, start()).await,
            Response::Changed(Changed { changed: false })
        );
        let Response::Status(status) = handle(&state, Request::Status).await else {
            panic!()
        };
        assert_eq!(status.listeners.running, 1);
        assert_eq!(
            handle(&state, stop()).await,
            Response::Changed(Changed { changed: true })
        );
        assert_eq!(
            handle(&state, stop()).await,
            Response::Changed(Changed { changed: false })
        );
        let unknown = Request::Start {
            listener: "nope".into(),
        };
        assert_eq!(code(handle(&state, unknown).await), ErrorCode::UnknownListener);
    }

    #[tokio::test]
    async fn trigger_refuses_nul_and_a_stopped_listener() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(&dir);
        let trigger = |path: &str| Request::Trigger {
            listener: "docs".into(),
            path: path.into(),
        };
        assert_eq!(
            code(handle(&state, trigger("src/a")).await),
            ErrorCode::NotRunning
        );
        assert_eq!(
            code(handle(&state, trigger("src/a\0b")).await),
            ErrorCode::BadRequest
        );
        assert_eq!(code(handle(&state, trigger("../a")).await), ErrorCode::BadRequest);
    }

    #[tokio::test]
    async fn reload_reports_an_invalid_config_at_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(&dir);
        std::fs::write(dir.path().join("site.toml"), "[daemon]\n  colour = 1\n").unwrap();
        let Response::Error(failed) = handle(&state, Request::Reload).await else {
            panic!()
        };
        assert_eq!(failed.error.code, ErrorCode::InvalidConfig);
        assert_eq!((failed.error.line, failed.error.column), (Some(2), Some(3)));
        assert_eq!(
            handle(&state, Request::Shutdown).await,
            Response::Done(Default::default())
        );
    }
}
