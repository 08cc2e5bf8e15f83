//! The HTTP front end: static files for the site and LiveReload, on warp and hyper.
//!
//! Connections are served by our own accept loop (HTTP/1.1 with upgrades) rather
//! than warp's `serve`, which cannot time out a silent connection: each connection
//! gets a header-read timeout and a cap on the request head. `/livereload` is a warp
//! WebSocket filter, `/livereload.js` the embedded client, anything else a file.
//! A watcher on the root tells LiveReload clients what changed. A server bound only
//! to loopback answers only local names (421 otherwise), and a LiveReload handshake
//! from another site's page is refused (403): see [`authority`].

pub mod authority;
pub mod blocking;
pub mod cache;
pub mod files;
pub mod livereload;
pub mod path;
pub mod peers;
pub mod pump;
pub mod root;
pub mod zerocopy;

use crate::config::ServerConfig;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioTimer;
use livereload::LiveReload;
use std::convert::Infallible;
use std::net::SocketAddr;

use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::{debug, info, warn};

/// A boxed error, as response bodies carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A request head (request line and headers) longer than this is refused (431).
pub const MAX_HEAD: usize = 16 * 1024;
/// A request head with more header fields than this is refused (431).
pub const MAX_HEADERS: usize = 100;
/// At most this many connections are served at once (an upgraded LiveReload client
/// leaves the count for one of `max_clients` seats);
/// more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = crate::config::MAX_HTTP_CONNECTIONS;

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The socket passed by systemd (`LISTEN_FDS`) is unusable.
    #[error("cannot use the socket passed by systemd: {0}")]
    Inherited(std::io::Error),
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty response with `code`.
pub fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Vec::new()));
    *r.status_mut() = code;
    r
}

struct Ctx {
    site: Arc<files::Site>,
    static_files: bool,
    livereload: Option<Arc<LiveReload>>,
    idle: Duration,
    /// See [`ServerConfig::send_timeout`].
    send_timeout: Duration,
    /// Open connections by client address.
    peers: Arc<peers::Peers>,
    /// Connections refused as soon as accepted.
    refused: crate::metrics::RefusedCounters,
    /// Responses counted by status class.
    responses: crate::metrics::HttpCounters,
    /// The `Host` and `Origin` requests may carry.
    guard: authority::Guard,
    /// When a refused `Host` and a refused `Origin` were last warned of (once a minute).
    guard_warned: std::sync::Mutex<[peers::Warned; 2]>,
}

impl Ctx {
    /// Warns of a refused `Host` (`which` 0) or `Origin` (1), at most once a minute
    /// for each, with how many were refused since the last warning.
    fn warn_refused(&self, which: usize, what: &str, setting: &str) {
        let now = std::time::Instant::now();
        let mut warned = self
            .guard_warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(refused) = warned[which].due(now) {
            tracing::warn!(
                refused,
                "HTTP request refused: {what} (if it is yours, list it in [server] {setting})"
            );
        }
    }
}

/// The running HTTP server.
pub struct HttpServer {
    addr: SocketAddr,
    inherited: bool,
    livereload: Option<Arc<LiveReload>>,
    site: Arc<files::Site>,
    stop: CancellationToken,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
}

impl HttpServer {
    /// Binds (or takes the socket systemd passed) and starts serving. Connections get
    /// at most `grace` to finish at shutdown.
    /// LiveReload waits for the busy listeners of `builds` before telling browsers.
    pub async fn start(
        config: &ServerConfig,
        grace: Duration,
        builds: Arc<crate::builds::Builds>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<HttpServer, HttpError> {
        let (listener, inherited) = listener(config)?;
        let addr = listener.local_addr().map_err(HttpError::Inherited)?;
        let root::Resolved {
            path: root,
            cacheable,
        } = root::resolve(&config.root).await;
        let livereload = config.livereload.then(|| {
            Arc::new(
                LiveReload::new(config.idle_timeout, config.max_clients).counting(metrics.reloads_sent()),
            )
        });
        let ctx = Arc::new(Ctx {
            site: Arc::new(files::Site::new(
                root.clone(),
                config.hidden,
                config.inject && config.livereload,
                cacheable,
            )),
            static_files: config.static_files,
            livereload: livereload.clone(),
            idle: config.idle_timeout,
            send_timeout: config.send_timeout,
            peers: peers::Peers::new(config.max_connections_per_address),
            refused: metrics.http_refused(),
            responses: metrics.http_responses(),
            guard: authority::Guard {
                allowed_hosts: config.allowed_hosts.clone(),
                livereload_origins: config.livereload_origins.clone(),
            },
            guard_warned: Default::default(),
        });
        let site = ctx.site.clone();
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, ctx, stop.clone(), grace));
        if let Some(lr) = &livereload {
            tasks.spawn(pump::tell_builds(builds.results(), lr.clone(), stop.clone()));
            let (pump_root, pump_lr, delay) = (root.clone(), lr.clone(), config.delay);
            let pump = move |matcher| pump::Pump {
                root: pump_root,
                matcher,
                lr: pump_lr,
                delay,
                builds,
            };
            // Watching before the server counts as started (READY=1): a change made
            // right after must reach the browsers. A root that does not answer within
            // ROOT_WAIT is watched once it does, meanwhile the server serves.
            let mut watch = tokio::spawn(pump::watch_root(root.clone(), config.hidden));
            match tokio::time::timeout(root::ROOT_WAIT, &mut watch).await {
                Ok(Ok(Some((watching, matcher)))) => {
                    drop(tasks.spawn(pump(matcher).run(watching, stop.clone())))
                }
                Ok(_) => {}
                Err(_) => {
                    warn!(
                        "LiveReload: watching the site root takes over {} s (is its file system \
                         slow or hung?); reloads begin once it is watched",
                        root::ROOT_WAIT.as_secs()
                    );
                    let (pump, stop) = (pump, stop.clone());
                    tasks.spawn(async move {
                        tokio::select! {
                            watched = watch => if let Ok(Some((watching, matcher))) = watched {
                                pump(matcher).run(watching, stop).await;
                            },
                            _ = stop.cancelled() => {}
                        }
                    });
                }
            }
        }
        info!(listen = %addr, inherited, "HTTP server listening");
        Ok(HttpServer {
            addr,
            inherited,
            livereload,
            site,
            stop,
            tasks: tokio::sync::Mutex::new(tasks),
        })
    }

    /// Whether `config`'s root now resolves to another directory than the one served
    /// (a deploy that switched a `current -> releases/N` symlink, a root that did not
    /// exist at start): a reload then restarts the server on it.
    pub async fn root_moved(&self, config: &ServerConfig) -> bool {
        root::resolves_to(&config.root)
            .await
            .is_some_and(|now| now != self.site.root)
    }

    /// Whether it serves the socket systemd passed (`LISTEN_FDS`).
    pub fn socket_activated(&self) -> bool {
        self.inherited
    }

    /// What `status` reports about the server.
    pub fn info(&self) -> crate::protocol::replies::ServerInfo {
        crate::protocol::replies::ServerInfo {
            listen: self.addr.to_string(),
            socket_activated: self.inherited,
            livereload: self.livereload.is_some(),
            livereload_clients: self.livereload.as_ref().map_or(0, |lr| lr.client_count()),
            cached_files: self.site.cache.entries(),
        }
    }

    /// Closes LiveReload clients (1001, going away), stops accepting, and lets open
    /// requests finish for at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        if let Some(lr) = &self.livereload {
            let clients = lr.client_count();
            lr.close_all(grace).await;
            info!(clients, "LiveReload clients closed");
        }
        self.stop.cancel();
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }
}

/// The socket systemd passed (`LISTEN_FDS`), else a fresh one bound to `listen`.
fn listener(config: &ServerConfig) -> Result<(tokio::net::TcpListener, bool), HttpError> {
    // Each server (a reload may start a new one) serves a duplicate of systemd's socket.
    let inherited = crate::sys::systemd_listener()
        .map_err(|message| HttpError::Inherited(std::io::Error::other(message)))?;
    if let Some(socket) = inherited {
        let std = socket.try_clone().map_err(HttpError::Inherited)?;
        std.set_nonblocking(true).map_err(HttpError::Inherited)?;
        return Ok((
            tokio::net::TcpListener::from_std(std).map_err(HttpError::Inherited)?,
            true,
        ));
    }
    let bind = |source| HttpError::Bind {
        addr: config.listen,
        source,
    };
    let std = std::net::TcpListener::bind(config.listen).map_err(bind)?;
    // std listens with a backlog of 128: a burst of connections would wait out SYN
    // retransmits (a second) instead of being queued.
    crate::sys::set_backlog(std::os::fd::AsFd::as_fd(&std), MAX_CONNECTIONS as i32).map_err(bind)?;
    std.set_nonblocking(true).map_err(bind)?;
    Ok((tokio::net::TcpListener::from_std(std).map_err(bind)?, false))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    ctx: Arc<Ctx>,
    stop: CancellationToken,
    grace: Duration,
) {
    let mut connections = JoinSet::new();
    let mut refusals = peers::Refusals::new(ctx.refused.clone());
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(_) if connections.len() >= MAX_CONNECTIONS => refusals.all_slots(MAX_CONNECTIONS),
                Ok((stream, client)) => match ctx.peers.admit(client.ip()) {
                    None => refusals.per_address(client.ip(), ctx.peers.limit()),
                    Some(place) => {
                        // Head and body go out as separate writes: without this, Nagle's
                        // algorithm meets the client's delayed ACK and each response waits ~40 ms.
                        let _ = stream.set_nodelay(true);
                        connections.spawn(connection(stream, place, ctx.clone(), stop.clone()));
                    }
                },
                Err(e) => {
                    warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let open = connections.len();
    let drained =
        tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            connections = connections.len(),
            "HTTP connections still open after the grace; closing them"
        );
        connections.shutdown().await;
    }
    info!(connections = open, "HTTP server stopped");
}

async fn connection(
    stream: tokio::net::TcpStream,
    place: peers::Place,
    ctx: Arc<Ctx>,
    stop: CancellationToken,
) {
    let idle = ctx.idle;
    let regions = zerocopy::Regions::default();
    let io = zerocopy::Io::new(stream, regions.clone(), ctx.send_timeout).holding(place);
    let responses = ctx.responses.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (ctx, regions) = (ctx.clone(), regions.clone());
        async move {
            let response = route(&ctx, req, &regions).await;
            ctx.responses.count(response.status().as_u16());
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        // Body chunks written as given, never copied: `zerocopy` depends on it.
        .writev(true);
    let conn = builder.serve_connection(io, svc).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                // A head hyper cannot parse it answers itself (400, 414 or 431), without
                // our service: counted here, so the metrics see every response.
                if e.is_parse() && !e.is_parse_version_h2() && !e.is_parse_status() {
                    responses.count(if e.is_parse_too_large() { 431 } else { 400 });
                }
                debug!("HTTP connection ended: {e}");
            }
            return;
        }
        _ = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// `/livereload.js`: kept for good by browsers when asked for by its version (as
/// injected pages do), revalidated otherwise (a page that names it by hand).
fn client_script(req: &Request<Incoming>) -> Response<Body> {
    let version = livereload::client_version();
    let etag = format!("\"{version}\"");
    let versioned = req.uri().query() == Some(format!("v={version}").as_str());
    let fresh = !versioned
        && req.headers().get(header::IF_NONE_MATCH).is_some_and(|tags| {
            tags.to_str()
                .is_ok_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        });
    let mut r = match fresh {
        true => status(StatusCode::NOT_MODIFIED),
        false => Response::new(full(livereload::CLIENT_JS)),
    };
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(match versioned {
            true => "public, max-age=31536000, immutable",
            false => "no-cache",
        }),
    );
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header"),
    );
    r
}

async fn route(ctx: &Ctx, req: Request<Incoming>, regions: &zerocopy::Regions) -> Response<Body> {
    if !host_is_valid(&req) {
        return status(StatusCode::BAD_REQUEST);
    }
    // An absolute-form target names the host it is for, in place of `Host` (RFC 9112 3.2.2).
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or(host_of(req.headers()));
    if !ctx.guard.host(host) {
        let host = crate::names::escaped(host.unwrap_or_default()).to_string();
        ctx.warn_refused(
            0,
            &format!("Host {host} is not among the names answered"),
            "allowed_hosts",
        );
        return refused(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown Host: see allowed_hosts\n",
        );
    }
    let path = req.uri().path().to_owned();
    if let Some(lr) = &ctx.livereload {
        if path == "/livereload" {
            return livereload(ctx, lr, req).await;
        }
        if path == "/livereload.js" {
            return match req.method() {
                &http::Method::GET | &http::Method::HEAD => client_script(&req),
                _ => files::method_not_allowed(),
            };
        }
    }
    if !ctx.static_files {
        return status(StatusCode::NOT_FOUND);
    }
    files::serve(
        &ctx.site,
        req.method(),
        &path,
        req.uri().query(),
        req.headers(),
        regions,
    )
    .await
}

/// `/livereload`: the WebSocket upgrade, for a page of an allowed origin (403
/// otherwise, before a seat is taken) while there are seats (503 otherwise).
async fn livereload(ctx: &Ctx, lr: &Arc<LiveReload>, req: Request<Incoming>) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN);
    let origin = origin.map(|o| o.to_str().unwrap_or(""));
    if !ctx.guard.origin(origin, host_of(req.headers())) {
        let origin = crate::names::escaped(origin.unwrap_or_default()).to_string();
        ctx.warn_refused(
            1,
            &format!("LiveReload from the page of Origin {origin}, another site"),
            "livereload_origins",
        );
        return refused(
            StatusCode::FORBIDDEN,
            "Origin not allowed: see livereload_origins\n",
        );
    }
    let Some(seat) = LiveReload::seat(lr) else {
        return too_many_clients();
    };
    let mut service = warp::service(LiveReload::filter(lr.clone(), seat));
    let response = service.call(req).await.unwrap_or_else(|never| match never {});
    response.map(|body| body.map_err(BoxError::from).boxed_unsync())
}

/// The request's `Host`, unless it is missing or empty.
fn host_of(headers: &http::HeaderMap) -> Option<&str> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.filter(|h| !h.is_empty())
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, and a request never
/// has two; its value is empty or an authority (`host[:port]`).
fn host_is_valid(req: &Request<Incoming>) -> bool {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => req.version() < http::Version::HTTP_11,
        (Some(host), None) => {
            host.is_empty()
                || host
                    .to_str()
                    .is_ok_and(|h| !h.contains('@') && h.parse::<http::uri::Authority>().is_ok())
        }
        (Some(_), Some(_)) => false,
    }
}

/// `code`, with `why` for a person reading it.
fn refused(code: StatusCode, why: &'static str) -> Response<Body> {
    let mut r = Response::new(full(why));
    *r.status_mut() = code;
    r
}

/// 503 for a LiveReload client over `max_clients`; its script retries with back-off.
fn too_many_clients() -> Response<Body> {
    let mut r = Response::new(full("too many LiveReload clients; try again later\n"));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    r
}
