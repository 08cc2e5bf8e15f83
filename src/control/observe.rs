//! The handlers of the requests that look back and in: `history`, `explain` and
//! `events` (its first reply; [`super::stream`] carries a `--follow` on).

use super::handler::listener_error;
use crate::protocol::observe::{self, ExplainArgs, HistoryQuery};
use crate::protocol::{ErrorCode, Response};
use crate::state::DaemonState;
use std::path::PathBuf;

/// `history`: the runs asked for, or one run with its output.
pub fn history(state: &DaemonState, query: &HistoryQuery) -> Response {
    let history = state.listeners.history();
    if let Some(id) = query.id {
        return match history.get(id) {
            Some(run) => Response::HistoryRun(observe::HistoryRun { run }),
            None => Response::error(ErrorCode::UnknownRun, format!("no run {id} in the history")),
        };
    }
    // A listener removed by a reload keeps its runs (they never age out: the
    // history drops a listener's oldest runs only for its new ones).
    if let Some(listener) = &query.listener
        && !state.listeners.exists(listener)
        && !history.knows(listener)
    {
        return Response::error(
            ErrorCode::UnknownListener,
            format!("no listener named {listener:?}"),
        );
    }
    let files = query
        .file
        .as_deref()
        .map(|f| candidates(state, f))
        .unwrap_or_default();
    Response::History(observe::History {
        runs: history.query(query, &files),
    })
}

/// The files `file` may name: itself when absolute; else relative to the config's
/// directory and to each route's path.
fn candidates(state: &DaemonState, file: &std::path::Path) -> Vec<PathBuf> {
    if file.is_absolute() {
        return vec![file.to_owned()];
    }
    let config_dir = state.config.path.parent().unwrap_or(std::path::Path::new("/"));
    let mut all = vec![config_dir.join(file)];
    all.extend(
        state
            .listeners
            .route_paths()
            .into_iter()
            .map(|root| root.join(file)),
    );
    all
}

/// `explain`.
pub async fn explain(state: &DaemonState, args: &ExplainArgs) -> Response {
    let kind = match serde_json::from_value(serde_json::Value::String(args.event.clone())) {
        Ok(kind) => kind,
        Err(_) => {
            return Response::error(
                ErrorCode::BadRequest,
                format!(
                    "unknown event kind {:?}: create, modify, delete, move or attrib",
                    args.event
                ),
            );
        }
    };
    let config_dir = state.config.path.parent().unwrap_or(std::path::Path::new("/"));
    match state.listeners.explain(&args.path, kind, config_dir).await {
        Ok(explained) => Response::Explained(explained),
        Err(e) => listener_error(e),
    }
}

/// `events`: the recent events (of `listener`); says whether a stream follows.
pub fn events(state: &DaemonState, listener: Option<&str>, follow: bool) -> Response {
    if let Some(listener) = listener
        && !state.listeners.exists(listener)
    {
        return Response::error(
            ErrorCode::UnknownListener,
            format!("no listener named {listener:?}"),
        );
    }
    Response::Events(observe::Events {
        events: state.listeners.feed().recent(listener),
        following: follow,
    })
}
