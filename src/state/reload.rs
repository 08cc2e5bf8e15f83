//! Reload (SIGHUP or the `reload` command): re-read the config and apply only the
//! difference, keeping the running config when the new one is invalid.

use super::DaemonState;
use crate::config::{Config, ConfigError, ServerConfig};
use crate::http::HttpServer;
use crate::notify;
use crate::paths::Environment;
use crate::protocol::replies::Reloaded;
use std::sync::Arc;
use tracing::{error, info, warn};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid (or unreadable); the running one is kept.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The daemon is shutting down.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

impl DaemonState {
    /// Reloads the config file. One reload at a time; systemd is told `RELOADING=1`
    /// (with `MONOTONIC_USEC`) before and `READY=1` after, whatever the outcome.
    pub async fn reload(&self, by: &str) -> Result<Reloaded, ReloadError> {
        let mut current = self.current.lock().await;
        if self.is_shutting_down() {
            return Err(ReloadError::ShuttingDown);
        }
        info!("reload requested by {by}");
        notify::reloading();
        let result = self.apply(&mut current).await;
        match &result {
            Ok(r) => info!(
                unchanged = r.listeners.unchanged.len(),
                changed = r.listeners.changed.len(),
                added = r.listeners.added.len(),
                removed = r.listeners.removed.len(),
                server = %r.server,
                "reloaded"
            ),
            Err(e) => error!("reload failed, keeping the running config: {e}"),
        }
        notify::ready(&self.status_line());
        result
    }

    async fn apply(&self, current: &mut Config) -> Result<Reloaded, ReloadError> {
        let path = current.path.clone();
        let env = Environment::from_process();
        let instance = current.instance.clone();
        let mut new = tokio::task::spawn_blocking(move || Config::load(&path, &instance, &env))
            .await
            .expect("config load does not panic")?;
        let restart_needed = keep_restart_sections(&mut new, current);
        self.listeners.builds().configure(&new);
        let listeners = self
            .listeners
            .apply(&new)
            .await
            .map_err(|_| ReloadError::ShuttingDown)?;
        let moved = match (&new.server, self.server()) {
            (Some(config), Some(running)) => running.root_moved(config).await,
            _ => false,
        };
        if moved {
            info!("the site's root resolves to another directory now: restarting the HTTP server on it");
        }
        let server = if new.server == current.server && !moved {
            "unchanged".to_owned()
        } else {
            match self
                .replace_server(current.server.as_ref(), new.server.as_ref())
                .await
            {
                Ok(what) => what.to_owned(),
                Err(e) => {
                    // The old server keeps running (or none does): keep its section.
                    error!("the new [server] cannot start: {e}");
                    new.server = self.server().is_some().then(|| current.server.clone()).flatten();
                    format!("failed: {e}")
                }
            }
        };
        *current = new;
        Ok(Reloaded {
            listeners,
            server,
            restart_needed,
        })
    }

    /// Swaps the HTTP server for one running `new`. When the address changes, the new
    /// one is bound before the old stops (a failure leaves the old one serving); on the
    /// same address (or systemd's socket) the old one stops first.
    async fn replace_server(
        &self,
        old: Option<&ServerConfig>,
        new: Option<&ServerConfig>,
    ) -> Result<&'static str, crate::http::HttpError> {
        let grace = self.config.daemon.shutdown_grace;
        let same_socket = matches!((old, new), (Some(o), Some(n)) if o.listen == n.listen);
        let started = match new {
            Some(config) if !same_socket => {
                Some(HttpServer::start(config, grace, self.listeners.builds(), &self.metrics).await?)
            }
            _ => None,
        };
        if self.server().is_some_and(|s| s.socket_activated()) {
            match new {
                None => {
                    warn!("[server] removed: the socket from systemd stays open until its .socket unit stops")
                }
                Some(_) if !same_socket => {
                    warn!("[server].listen is ignored: serving the socket from systemd")
                }
                Some(_) => {}
            }
        }
        let previous = self.server.write().expect("server lock").take();
        if let Some(previous) = previous {
            info!("stopping the HTTP server for the new [server]");
            previous.shutdown(grace).await;
        }
        let started = match (started, new) {
            (Some(server), _) => Some(server),
            (None, Some(config)) => {
                Some(HttpServer::start(config, grace, self.listeners.builds(), &self.metrics).await?)
            }
            (None, None) => None,
        };
        let what = match (old.is_some(), started.is_some()) {
            (false, true) => "started",
            (true, true) => "restarted",
            _ => "stopped",
        };
        *self.server.write().expect("server lock") = started.map(Arc::new);
        Ok(what)
    }
}

/// The sections that apply only at the next start (`[daemon]`, `[control]`,
/// `[metrics]`) that differ in `new`: named, and set back in `new` to what runs, so
/// a later reload still sees them differ from the file.
fn keep_restart_sections(new: &mut Config, current: &Config) -> Vec<String> {
    let mut restart_needed = Vec::new();
    if new.daemon != current.daemon {
        restart_needed.push("[daemon]".to_owned());
        new.daemon = current.daemon.clone();
    }
    if new.control != current.control {
        restart_needed.push("[control]".to_owned());
        new.control = current.control.clone();
    }
    if new.metrics != current.metrics {
        restart_needed.push("[metrics]".to_owned());
        new.metrics = current.metrics.clone();
    }
    for section in &restart_needed {
        warn!("{section} changed: it applies at the next start");
    }
    restart_needed
}
