//! The exposition of the daemon as it is now: the counters of [`crate::metrics`] and
//! the gauges read from the daemon's state at each scrape. It answers the control
//! socket's `metrics` request and is served by `[metrics] listen`: a small HTTP/1.1 listener of its own (never the site's port)
//! that answers `GET /metrics` with the exposition and anything else with 404 (405
//! for another method). A client cannot hurt the daemon through it: at most
//! [`MAX_CONNECTIONS`] are open at once (a newcomer takes the place of the oldest,
//! so silent connections cannot lock a scraper out for long), a request head must
//! arrive within `[metrics].head_timeout_ms` and fit [`crate::http::MAX_HEAD`], and a
//! connection lives at most [`CONNECTION_LIFETIME`], however slowly it reads.

use crate::http::{Body, full, status};
use crate::metrics::{Gauges, ListenerGauges};
use crate::state::DaemonState;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The exposition for the daemon as it is now.
pub async fn exposition(state: &DaemonState) -> String {
    let infos = state.listeners.infos().await;
    let server = state.server();
    let gauges = Gauges {
        listeners: infos
            .iter()
            .map(|l| ListenerGauges {
                name: l.name.clone(),
                watches: l.watches,
                polled: l.polled.len() as u64,
                queued: l.jobs_queued,
                running: l.jobs_running,
            })
            .collect(),
        max_user_watches: crate::watch::max_user_watches(),
        livereload_clients: server
            .as_ref()
            .filter(|s| s.info().livereload)
            .map(|s| s.info().livereload_clients as u64),
    };
    state.metrics.encode(&gauges)
}

/// Connections open at once (a scraper needs one); a newcomer closes the oldest.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection is closed this long after it was accepted, whatever it is doing.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// The underlying error.
    pub source: std::io::Error,
}

/// The running metrics listener.
pub struct MetricsServer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (done before the daemon reports ready, so a bad address fails
    /// the start).
    pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
        let bind = |source| BindError { addr, source };
        let std = std::net::TcpListener::bind(addr).map_err(bind)?;
        std.set_nonblocking(true).map_err(bind)?;
        Ok(std)
    }

    /// Serves the exposition of `state` on `listener` until [`MetricsServer::shutdown`].
    pub fn spawn(listener: std::net::TcpListener, state: Arc<DaemonState>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, state, stop.clone()));
        info!(listen = %addr, "metrics listening at /metrics");
        Ok(MetricsServer { stop, task })
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<DaemonState>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    // The open connections, oldest first: a newcomer takes the oldest one's place.
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    open.retain(|c| !c.is_finished());
                    if open.len() >= MAX_CONNECTIONS
                        && let Some(oldest) = open.pop_front()
                    {
                        debug!("metrics connection closed to make room: {MAX_CONNECTIONS} open");
                        oldest.abort();
                    }
                    let _ = stream.set_nodelay(true);
                    open.push_back(connections.spawn(connection(stream, state.clone(), stop.clone())));
                }
                Err(e) => {
                    warn!("metrics accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn connection(stream: tokio::net::TcpStream, state: Arc<DaemonState>, stop: CancellationToken) {
    let head_timeout = state.config.metrics.as_ref().map_or(
        Duration::from_millis(crate::config::DEFAULT_HEAD_TIMEOUT_MS),
        |m| m.head_timeout,
    );
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(answer(&state, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(crate::http::MAX_HEAD)
        .max_headers(crate::http::MAX_HEADERS);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        result = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {
            if let Ok(Err(e)) = result {
                debug!("metrics connection ended: {e}");
            }
        }
        _ = stop.cancelled() => {}
    }
}

async fn answer(state: &DaemonState, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        return status(StatusCode::NOT_FOUND);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = status(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let text = exposition(state).await;
    let mut r = Response::new(full(text));
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
