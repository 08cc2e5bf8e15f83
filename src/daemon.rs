//! The daemon: owns the control socket, the listeners and their lifecycles.
//!
//! [`run`] binds the control socket, starts the autostart listeners, reports
//! readiness, then waits for a shutdown (the caller's future or the `shutdown`
//! command) and stops everything in order: listeners and their jobs first, then
//! the HTTP server, then the control socket. SIGHUP (or the `reload` command)
//! reloads the config ([`crate::state`]).

use crate::config::Config;
use crate::control::ControlServer;
use crate::control::socket::{self, SocketError};
use crate::exposition::MetricsServer;
use crate::http::HttpServer;
use crate::job;
use crate::ledger::Ledger;
use crate::listener::Listeners;
use crate::notify;
use crate::state::DaemonState;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The control socket could not be bound.
    #[error("control socket: {0}")]
    Socket(#[from] SocketError),
    /// The HTTP server could not start.
    #[error("HTTP server: {0}")]
    Http(#[from] crate::http::HttpError),
    /// The metrics listener could not start.
    #[error("metrics: {0}")]
    Metrics(#[from] crate::exposition::BindError),
}

/// How long the runtime's shutdown waits for blocking calls still running once
/// [`run`] has returned (only stuck ones are left then).
const STUCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs the daemon until `shutdown` resolves or a client sends `shutdown`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    // Before READY=1: a SIGHUP right after it must reload, not kill (its default action).
    let hangups = hangups();
    let (listener, socket_file) = socket::bind(&config.control)?;
    info!(socket = %crate::names::escaped(socket_file.path()), "control socket listening");
    let metrics_socket = config
        .metrics
        .as_ref()
        .map(|m| MetricsServer::bind(m.listen))
        .transpose()?;
    let builds = Arc::new(crate::builds::Builds::default());
    builds.configure(&config);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let server = match &config.server {
        Some(server) => Some(Arc::new(
            HttpServer::start(server, config.daemon.shutdown_grace, builds.clone(), &metrics).await?,
        )),
        None => None,
    };
    let (listeners, history_writer, history_stop) = observed_listeners(&config, builds, metrics).await;
    let state = Arc::new(DaemonState::new(config, listeners, server));
    // Before the control socket is served: `status` says where /metrics is.
    let metrics_server = serve_metrics(metrics_socket, &state)?;
    let control = ControlServer::spawn(listener, state.clone());
    let reaper_stop = CancellationToken::new();
    // Adopting before any job starts: a descendant that escapes even the first job is ours.
    let _ = tokio::task::spawn_blocking(job::contain::init).await;
    let reaper = tokio::spawn(reap_adoptees(reaper_stop.clone()));
    tokio::pin!(shutdown);
    let watchdog_stop = CancellationToken::new();
    let mut watchdog = None;
    let (ready, still_starting) = start_listeners(&state, &mut shutdown).await;
    if ready {
        let status = state.status_line();
        notify::ready(&status);
        info!(instance = %state.config.instance, "ready: {status}");
        watchdog = notify::spawn_watchdog(watchdog_stop.clone());
        wait_for_shutdown(&state, shutdown, hangups).await;
    }
    notify::stopping();
    // A reload in progress finishes first: it may be starting listeners that stopping
    // must see. Later ones see the shutdown and are refused with a reply. Its starts
    // still setting up watches are abandoned, so it finishes at once.
    state.listeners.abandon_starts();
    if let Some(starting) = still_starting {
        let _ = starting.await;
    }
    state.settle_reloads().await;
    info!("stopping listeners");
    state.listeners.stop_all().await;
    info!("listeners stopped");
    history_stop.cancel();
    let _ = history_writer.await;
    reaper_stop.cancel();
    let _ = reaper.await;
    let grace = state.config.daemon.shutdown_grace;
    let _ = tokio::task::spawn_blocking(move || job::orphans::end_all(grace)).await;
    // Taken after the listeners stopped: a reload cannot start a server any more.
    let server = state.take_server();
    match server {
        Some(server) => {
            info!("stopping HTTP server");
            server.shutdown(state.config.daemon.shutdown_grace).await;
        }
        None => info!("no HTTP server to stop"),
    }
    if let Some(metrics) = metrics_server {
        metrics.shutdown().await;
        info!("metrics listener stopped");
    }
    control.shutdown().await;
    drop(socket_file);
    info!("control socket closed and removed");
    watchdog_stop.cancel();
    if let Some(watchdog) = watchdog {
        let _ = watchdog.await;
    }
    info!("shutdown complete");
    Ok(())
}

/// The listeners, counting into `metrics` and recording their runs in the history;
/// and the task that writes the history, with the token that stops it. Owned by
/// [`run`]: stopped once the listeners are (their last runs recorded), after
/// writing what is queued.
async fn observed_listeners(
    config: &Config,
    builds: Arc<crate::builds::Builds>,
    metrics: Arc<crate::metrics::Metrics>,
) -> (Listeners, tokio::task::JoinHandle<()>, CancellationToken) {
    let ledger = ledger(config).await;
    let (history, history_writer) = history(config).await;
    let listeners = Listeners::new(config, ledger, builds)
        .with_metrics(metrics)
        .with_history(history);
    let history_stop = CancellationToken::new();
    let history_writer = tokio::spawn(history_writer.run(history_stop.clone()));
    (listeners, history_writer, history_stop)
}

/// Serves `/metrics` on the socket bound for `[metrics]` (when there is one), and
/// records its address for `status`.
fn serve_metrics(
    socket: Option<std::net::TcpListener>,
    state: &Arc<DaemonState>,
) -> Result<Option<MetricsServer>, DaemonError> {
    let Some(socket) = socket else {
        return Ok(None);
    };
    if let Ok(addr) = socket.local_addr() {
        let _ = state.metrics_listen.set(addr);
    }
    let server =
        MetricsServer::spawn(socket, state.clone()).map_err(|source| crate::exposition::BindError {
            addr: state.config.metrics.as_ref().expect("bound for [metrics]").listen,
            source,
        })?;
    Ok(Some(server))
}

/// The ledger of this daemon's jobs, after ending what a crashed predecessor left
/// running: before any job of ours starts.
async fn ledger(config: &Config) -> Arc<Ledger> {
    let ledger = Arc::new(Ledger::new(&config.daemon.state_dir));
    let grace = config.daemon.shutdown_grace;
    tokio::task::spawn_blocking(move || {
        ledger.end_leftovers(grace);
        ledger
    })
    .await
    .expect("ending leftovers does not panic")
}

/// The history of runs persisted in the state directory, and its writer.
async fn history(config: &Config) -> (Arc<crate::history::History>, crate::history::file::Writer) {
    let state_dir = config.daemon.state_dir.clone();
    tokio::task::spawn_blocking(move || crate::history::History::open(&state_dir))
        .await
        .expect("reading the history does not panic")
}

/// Reaps the descendants that escaped their jobs (adopted) and have exited, and
/// kills what given-up job starts made, once a second, until `stop` (see
/// [`job::orphans`]).
async fn reap_adoptees(stop: CancellationToken) {
    let mut tick = tokio::time::interval(job::orphans::REAP_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let _ = tokio::task::spawn_blocking(job::orphans::reap).await;
            }
        }
    }
}

/// The SIGHUP stream (none, with a warning, if the handler cannot be installed).
fn hangups() -> Option<signal_hook_tokio::Signals> {
    match signal_hook_tokio::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(signals) => Some(signals),
        Err(e) => {
            tracing::warn!("cannot handle SIGHUP, reload only by command: {e}");
            None
        }
    }
}

/// Starts the autostart listeners and waits until each has its watches, or
/// `[daemon] ready_timeout_ms` has passed: then those still starting (a file system
/// that does not answer) are named in a warning, and their starts go on in the
/// returned task, awaited at shutdown. `false` when a shutdown was asked for
/// meanwhile (a signal or a client): the starts still setting up their watches are
/// then abandoned, and the daemon never reports ready.
async fn start_listeners(
    state: &Arc<DaemonState>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> (bool, Option<tokio::task::JoinHandle<()>>) {
    let starter = state.clone();
    let mut starting = tokio::spawn(async move { starter.listeners.start_autostart().await });
    let limit = state.config.daemon.ready_timeout;
    tokio::select! {
        _ = &mut starting => return (true, None),
        _ = tokio::time::sleep(limit) => {
            let names = state.listeners.starting().join(", ");
            tracing::warn!(
                "ready after {} ms with listeners still setting up their watches: {names} \
                 (is a file system under them slow or hung?); they go on starting",
                limit.as_millis()
            );
            return (true, Some(starting));
        }
        _ = &mut *shutdown => state.request_shutdown("a signal"),
        _ = state.shutdown_requested() => {}
    }
    info!("shutting down while listeners start: abandoning their starts");
    state.listeners.abandon_starts();
    let _ = starting.await;
    (false, None)
}

/// Serves reloads (SIGHUP) until `shutdown` resolves or a client asks for a shutdown.
async fn wait_for_shutdown(
    state: &DaemonState,
    shutdown: impl Future<Output = ()>,
    mut hangups: Option<signal_hook_tokio::Signals>,
) {
    use futures::StreamExt;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return state.request_shutdown("a signal"),
            _ = state.shutdown_requested() => return,
            Some(_) = async { hangups.as_mut()?.next().await }, if hangups.is_some() => {
                if HANGUP_STOPS.load(std::sync::atomic::Ordering::Relaxed) {
                    return state.request_shutdown("SIGHUP (its terminal closed)");
                }
                // A shutdown is heard during the reload too (one of its listeners may be
                // stuck starting on a file system that does not answer): its starts are
                // abandoned, and it is let finish (never dropped half applied).
                let reload = state.reload("SIGHUP");
                tokio::pin!(reload);
                tokio::select! {
                    _ = &mut reload => continue,
                    _ = &mut shutdown => state.request_shutdown("a signal"),
                    _ = state.shutdown_requested() => {}
                }
                state.listeners.abandon_starts();
                let _ = reload.await;
                return;
            }
        }
    }
}

/// Raises the soft limit of open files to the hard limit: every watch-heavy listener,
/// job pipe and client costs descriptors, and systemd's default soft limit is 1024.
fn raise_fd_limit() {
    if let Ok((soft, hard)) = crate::sys::nofile_limit()
        && soft < hard
        && crate::sys::set_nofile_soft(hard).is_ok()
    {
        crate::job::restore_fd_limit_in_jobs(soft);
    }
}

/// `execlibd`'s body: finds and validates the config (`--check` stops there), sets
/// up logging, then serves until SIGTERM or SIGINT; the exit code says how it went.
pub fn main(cli: crate::cli::DaemonCli) -> std::process::ExitCode {
    // Before anything is opened: jobs' descriptors go below what the daemon opens.
    crate::sys::low_fds::reserve();
    if let Some(crate::cli::DaemonCommand::Serve(args)) = &cli.command {
        return serve_folder(args, cli.log_format);
    }
    if cli.config.is_none() && cli.instance.is_none() {
        eprintln!("execlibd: give --config FILE or --instance NAME (or `execlibd serve [DIR]`)");
        return std::process::ExitCode::FAILURE;
    }
    let env = crate::paths::Environment::from_process();
    let loaded = crate::config::locate(cli.config, cli.instance, &env)
        .and_then(|(path, instance)| Ok((Config::load(&path, &instance, &env)?, path)));
    let (config, path) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("execlibd: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!("{}: ok", crate::names::escaped(&path));
        for (listener, route, path, target) in config.symlinked_paths() {
            println!(
                "listener {listener}, route {route}: {} resolves to {}",
                crate::names::escaped(&path),
                crate::names::escaped(&target)
            );
        }
        return std::process::ExitCode::SUCCESS;
    }
    crate::logging::init(cli.log_format);
    serve(config)
}

/// Whether SIGHUP stops the daemon rather than reloading its config: for `serve`,
/// which has no config file and runs in a terminal that may close.
static HANGUP_STOPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `execlibd serve`: the daemon on a config made from the command line (see
/// [`crate::serve`]), logging as text unless told otherwise.
fn serve_folder(
    args: &crate::cli::ServeArgs,
    log_format: Option<crate::LogFormat>,
) -> std::process::ExitCode {
    let served = match crate::serve::prepare(args) {
        Ok(served) => served,
        Err(e) => {
            eprintln!("execlibd: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    crate::logging::init(Some(log_format.unwrap_or(crate::LogFormat::Text)));
    HANGUP_STOPS.store(true, std::sync::atomic::Ordering::Relaxed);
    let root = served
        .config
        .server
        .as_ref()
        .map(|s| s.root.clone())
        .unwrap_or_default();
    crate::serve::announce(served.addr, &root, &served.config.control.socket, args.open);
    let code = serve(served.config.clone());
    drop(served); // its directory, after the daemon is done with it
    code
}

/// The daemon's body: a runtime, the signal handlers, [`run`], an exit code.
fn serve(config: Config) -> std::process::ExitCode {
    raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let signal = termination_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
        run(config, signal).await.map_err(|e| e.to_string())
    });
    // Every task was stopped in order and every blocking call it made awaited; what
    // is left is stuck (an abandoned listener start on a hung file system) and must
    // not keep the process from exiting.
    runtime.shutdown_timeout(STUCK_WAIT);
    // STOPPING=1 and the last status reach systemd before the process is gone.
    notify::flush(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, before the returned future is first polled.
pub fn termination_signal() -> std::io::Result<impl Future<Output = ()>> {
    use futures::StreamExt;
    let mut signals =
        signal_hook_tokio::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
    Ok(async move {
        if let Some(signal) = signals.next().await {
            info!(signal, "received termination signal");
        }
    })
}
