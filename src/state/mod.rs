//! The daemon's shared state: the config, the listeners, the HTTP server and the
//! shutdown token, with the reload that changes them ([`reload`]). The control
//! handlers work on this, not on the daemon: it sits below `control`, and
//! `daemon::run` builds it and wires the servers around it.

mod reload;

pub use reload::ReloadError;

use crate::config::Config;
use crate::http::HttpServer;
use crate::listener::Listeners;
use crate::notify;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// What the control handlers see of the daemon.
pub struct DaemonState {
    /// The config it started with (`[daemon]` and `[control]` apply from this one).
    pub config: Config,
    /// Its listeners.
    pub listeners: Listeners,
    /// When it started.
    pub started: Instant,
    /// Its metrics (the listeners' own, see [`Listeners::metrics`]).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where `/metrics` is served, once bound (`[metrics] listen`).
    pub metrics_listen: std::sync::OnceLock<std::net::SocketAddr>,
    /// The HTTP front end, when `[server]` is configured.
    server: std::sync::RwLock<Option<Arc<HttpServer>>>,
    /// The config running now (after reloads); held for the length of a reload.
    current: tokio::sync::Mutex<Config>,
    shutdown: CancellationToken,
}

impl DaemonState {
    /// The state of a daemon started now on `config`, with its `listeners` (not
    /// started) and HTTP `server`.
    pub fn new(config: Config, listeners: Listeners, server: Option<Arc<HttpServer>>) -> Self {
        DaemonState {
            metrics: listeners.metrics(),
            metrics_listen: std::sync::OnceLock::new(),
            listeners,
            server: server.into(),
            current: config.clone().into(),
            config,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Waits for a reload in progress to finish, then keeps any later one out (it
    /// sees the shutdown and is refused with a reply). For the start of a shutdown.
    pub async fn settle_reloads(&self) {
        drop(self.current.lock().await);
    }

    /// Takes the HTTP server out, to stop it; a reload cannot start one after the
    /// listeners have stopped.
    pub fn take_server(&self) -> Option<Arc<HttpServer>> {
        self.server.write().expect("server lock").take()
    }

    /// Resolves once a shutdown has begun.
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await
    }
}

impl DaemonState {
    /// The HTTP front end, when one runs.
    pub fn server(&self) -> Option<Arc<HttpServer>> {
        self.server.read().expect("server lock").clone()
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Begins the ordered shutdown (idempotent).
    pub fn request_shutdown(&self, by: &str) {
        if !self.shutdown.is_cancelled() {
            info!("shutdown requested by {by}");
            self.shutdown.cancel();
        }
    }

    /// One line for systemd's status: listeners running and watches.
    pub fn status_line(&self) -> String {
        let s = self.listeners.summary();
        format!(
            "{}/{} listeners running, {} watches",
            s.running, s.total, s.watches
        )
    }

    /// Sends the status line to systemd.
    pub fn publish_status(&self) {
        notify::status(&self.status_line());
    }
}
