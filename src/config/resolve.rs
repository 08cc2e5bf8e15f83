//! Validation: turns the raw serde structs into the resolved config, applying
//! defaults, resolving relative paths against the config file's directory and
//! compiling globs, with a file:line:column error for anything invalid.

use super::ConfigError;
use super::check::{Ctx, MAX_LISTENER_NAME, MAX_SOCKET_PATH};
use super::raw::{OneOrMany, RawConfig, RawControl, RawListener, RawPost, RawRoute, RawServer};
use crate::events::EventSet;
use crate::glob::{DEFAULT_IGNORES, Matcher};
use crate::paths::Environment;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The validated configuration of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config file it was read from (absolute).
    pub path: PathBuf,
    /// The instance name.
    pub instance: String,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[control]`.
    pub control: ControlConfig,
    /// `[server]`, when present.
    pub server: Option<ServerConfig>,
    /// Every `[[listener]]`, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// `[metrics]`, when present.
    pub metrics: Option<super::metrics::MetricsConfig>,
}

/// `[daemon]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// How long running jobs get between SIGTERM and SIGKILL at shutdown.
    pub shutdown_grace: Duration,
    /// How long `READY=1` waits for the autostart listeners' watches; those still
    /// starting then (a file system that does not answer) keep starting, named in
    /// a warning.
    pub ready_timeout: Duration,
    /// Where persistent state lives.
    pub state_dir: PathBuf,
}

/// `[control]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    /// The control socket's path.
    pub socket: PathBuf,
    /// The socket file's permission bits.
    pub mode: u32,
    /// The gid of `[control].group`, the group to give the socket to so its members
    /// may use it (looked up when the config is validated).
    pub group: Option<u32>,
    /// A connection that sends no complete request for this long is closed.
    pub idle_timeout: Duration,
}

/// `[server]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The site's root directory.
    pub root: PathBuf,
    /// Whether files under `root` are served.
    pub static_files: bool,
    /// Whether the LiveReload endpoint is on.
    pub livereload: bool,
    /// Whether hidden files and folders (a component starting with `.`) are served.
    pub hidden: bool,
    /// Whether `<script src="/livereload.js">` is inserted into served HTML.
    pub inject: bool,
    /// Quiet time after the last change under `root` before browsers are told.
    pub delay: Duration,
    /// A connection that sends no complete request head for this long is closed.
    pub idle_timeout: Duration,
    /// A connection whose client takes none of what is sent to it for this long is
    /// closed (nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// At most this many LiveReload clients at once; more get 503.
    pub max_clients: usize,
    /// At most this many connections from one client address (an IPv6 client's
    /// /64) at once, LiveReload's counted; more are closed as soon as accepted.
    pub max_connections_per_address: usize,
    /// The listeners whose runs LiveReload waits for (`None`: the default rule, see
    /// [`crate::builds`]).
    pub builds: Option<Vec<String>>,
    /// When set, the only names the server answers besides `localhost` and IP
    /// literals (lower case; see [`crate::http::authority`]); unset, any name.
    pub allowed_hosts: Option<Vec<String>>,
    /// Origins besides the server's own whose pages may open LiveReload (normalized).
    pub livereload_origins: Vec<String>,
}

/// One `[[listener]]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// Whether it starts with the daemon.
    pub autostart: bool,
    /// Whether its snapshot is persisted so changes made while stopped are processed.
    pub catch_up: bool,
    /// At most this many of its jobs run at once.
    pub max_jobs: usize,
    /// Its routes, in file order.
    pub routes: Vec<RouteConfig>,
    /// Its `[[listener.post]]` commands, run in file order after each frame.
    pub posts: Vec<PostConfig>,
}

/// One `[[listener.post]]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PostConfig {
    /// Name, or `post` and its index in the listener.
    pub name: String,
    /// What to run.
    pub command: Command,
    /// Its working directory (absolute; default: the config file's directory).
    pub workdir: PathBuf,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// How long it may run before it is killed (none: no limit).
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL past its timeout.
    pub kill_grace: Duration,
    /// `memory_max` and `cpu_weight` for its cgroup (applied with cgroup delegation).
    pub limits: super::Limits,
    /// How its frame's paths are listed on its stdin.
    pub list: super::List,
}

/// One `[[listener.route]]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Name, or its index in the listener.
    pub name: String,
    /// The watched directory (absolute).
    pub path: PathBuf,
    /// Include and ignore globs.
    pub matcher: Matcher,
    /// Which event kinds trigger the job.
    pub events: EventSet,
    /// Changes within this window of a file's first pending change coalesce.
    pub debounce: Duration,
    /// Quiet time after a file's last change before its job starts.
    pub delay: Duration,
    /// How long a file's changes may wait for its writer to close it (none: they are
    /// reported at once, as written).
    pub max_hold: Option<Duration>,
    /// When and how often its tree is polled (see [`crate::watch`]).
    pub poll: crate::watch::Poll,
    /// What its due runs wait for: a version-control operation at work on its tree.
    pub vcs_hold: VcsHold,
    /// One job per file, or one per batch of files.
    pub mode: super::raw::Mode,
    /// How a batch's paths are listed on its job's stdin (batch mode only).
    pub list: super::List,
    /// Stage among the listener's routes, and what a failure does to later stages.
    pub order: crate::scheduler::Order,
    /// How long a job may run before it is killed (none: no limit).
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL for a job past its timeout.
    pub kill_grace: Duration,
    /// `memory_max` and `cpu_weight` for each job's cgroup (applied with cgroup delegation).
    pub limits: super::Limits,
    /// What to run.
    pub command: Command,
    /// The job's working directory (absolute).
    pub workdir: PathBuf,
    /// Extra environment for the job.
    pub env: BTreeMap<String, String>,
}

/// A route's `hold_while` and `max_vcs_hold_ms`: while one of its paths exists, the
/// route's due runs wait, at most `max` (see [`crate::vcs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct VcsHold {
    /// The paths.
    pub paths: HoldWhile,
    /// The longest a hold lasts.
    pub max: Duration,
}

/// Which paths hold a route's runs.
#[derive(Debug, Clone, PartialEq)]
pub enum HoldWhile {
    /// The default: those of the git work tree enclosing the route's path, found when
    /// the listener starts (its index lock and the markers of an operation in progress).
    Git,
    /// These (absolute); none: the route's runs are never held.
    Paths(Vec<PathBuf>),
}

/// A job's command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// An argv executed directly.
    Run(Vec<String>),
    /// A string for `/bin/sh -c`.
    Shell(String),
}

const DEFAULT_GRACE_MS: u64 = 10_000;
/// Below systemd's default start timeout (90 s), above a start walking millions of files.
const DEFAULT_READY_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_SERVER_IDLE_TIMEOUT_MS: u64 = 30_000;
/// As nginx's `send_timeout`.
const DEFAULT_SEND_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_LISTEN: &str = "127.0.0.1:8778";
/// How long a file's changes wait for its writer to close it, by default: longer
/// than any upload or copy should take, short enough that nothing waits forever.
pub const DEFAULT_MAX_HOLD_MS: u64 = 300_000;
/// The longest a version-control operation holds a route's runs, by default: longer
/// than a checkout, rebase or stash of a large tree takes with its hooks, short
/// enough that a stopped operation (a merge with conflicts) or a lock a crashed git
/// left behind delays builds by a minute at most.
pub const DEFAULT_MAX_VCS_HOLD_MS: u64 = 60_000;
/// The most `max_vcs_hold_ms` may be: an hour.
pub const MAX_VCS_HOLD_LIMIT_MS: u64 = 3_600_000;
/// LiveReload clients at once, by default.
const DEFAULT_MAX_CLIENTS: usize = 1024;
/// Connections from one client address at once, by default: an eighth of the
/// slots, far above what browsers open (six per site, and LiveReload's).
const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 512;
/// The most `max_clients` may be: every client is an HTTP connection too.
const MAX_CLIENTS_LIMIT: usize = MAX_HTTP_CONNECTIONS;

/// At most this many HTTP connections are served at once (an upgraded LiveReload
/// client leaves the count for one of `max_clients` seats); more are closed as soon
/// as they are accepted.
pub const MAX_HTTP_CONNECTIONS: usize = 4096;

pub(super) fn resolve(
    raw: RawConfig,
    path: &Path,
    text: &str,
    instance: &str,
    env: &Environment,
) -> Result<Config, ConfigError> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let base = path.parent().map_or_else(|| PathBuf::from("/"), Path::to_owned);
    let ctx = Ctx {
        path: &path,
        text,
        base,
    };
    let daemon = DaemonConfig {
        shutdown_grace: Duration::from_millis(raw.daemon.shutdown_grace_ms.unwrap_or(DEFAULT_GRACE_MS)),
        ready_timeout: Duration::from_millis(raw.daemon.ready_timeout_ms.unwrap_or(DEFAULT_READY_TIMEOUT_MS)),
        state_dir: match raw.daemon.state_dir {
            Some(dir) => ctx.path(dir, "`state_dir`")?,
            None => env.state_dir(instance),
        },
    };
    let control = control(&ctx, raw.control, instance, env)?;
    let builds = raw.server.as_ref().and_then(|s| s.get_ref().builds.clone());
    let mut server = raw.server.map(|s| server(&ctx, s)).transpose()?;
    let metrics = super::metrics::resolve(&ctx, raw.metrics, server.as_ref())?;
    let mut names = HashSet::new();
    let mut listeners = Vec::new();
    for l in raw.listener {
        let span = l.span();
        let l = listener(&ctx, l.into_inner(), span.start)?;
        if !names.insert(l.name.clone()) {
            return ctx.err(span.start, format!("duplicate listener name {:?}", l.name));
        }
        listeners.push(l);
    }
    if let (Some(server), Some(builds)) = (server.as_mut(), builds) {
        let mut named = Vec::new();
        for name in builds {
            if !names.contains(name.get_ref()) {
                return ctx.err(
                    name.span().start,
                    format!("`builds` names {:?}, which is not a listener", name.get_ref()),
                );
            }
            named.push(name.into_inner());
        }
        server.builds = Some(named);
    }
    Ok(Config {
        path: path.clone(),
        instance: instance.to_owned(),
        daemon,
        control,
        server,
        listeners,
        metrics,
    })
}

fn control(
    ctx: &Ctx,
    raw: Option<Spanned<RawControl>>,
    instance: &str,
    env: &Environment,
) -> Result<ControlConfig, ConfigError> {
    // Where to report a problem with a default: the `[control]` table, else 1:1.
    let (at, raw) = raw.map_or_else(
        || (0, RawControl::default()),
        |c| (c.span().start, c.into_inner()),
    );
    let mode = match raw.mode {
        None => 0o660,
        Some(m) => match u32::from_str_radix(m.get_ref(), 8) {
            Ok(mode) if mode <= 0o777 => mode,
            _ => {
                return ctx.err(
                    m.span().start,
                    format!("mode {:?} is not an octal permission like \"0660\"", m.get_ref()),
                );
            }
        },
    };
    Ok(ControlConfig {
        socket: socket(ctx, raw.socket, at, instance, env)?,
        mode,
        group: group(ctx, raw.group)?,
        idle_timeout: ctx.idle_timeout(raw.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS)?,
    })
}

/// The control socket's absolute path, `[control].socket` or the default, short
/// enough for `sun_path`. `table_at`: where a too-long default is reported.
fn socket(
    ctx: &Ctx,
    raw: Option<Spanned<PathBuf>>,
    table_at: usize,
    instance: &str,
    env: &Environment,
) -> Result<PathBuf, ConfigError> {
    let (path, at, default) = match raw {
        Some(s) if s.get_ref().as_os_str().is_empty() => {
            return ctx.err(
                s.span().start,
                "`socket` is empty: it needs the control socket's path",
            );
        }
        Some(s) => {
            let at = s.span().start;
            (ctx.path(s, "`socket`")?, at, false)
        }
        None => (env.daemon_socket(instance), table_at, true),
    };
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        let (what, hint) = match default {
            true => (
                "default control socket path",
                "; set a shorter `[control].socket`",
            ),
            false => ("control socket path", ""),
        };
        return ctx.err(
            at,
            format!(
                "{what} {path:?} is {len} bytes long; a Unix socket path holds at most \
                 {MAX_SOCKET_PATH} bytes{hint}"
            ),
        );
    }
    Ok(path)
}

/// The gid of `[control].group`, which must exist.
fn group(ctx: &Ctx, raw: Option<Spanned<String>>) -> Result<Option<u32>, ConfigError> {
    let Some(name) = raw else {
        return Ok(None);
    };
    let at = name.span().start;
    let name = name.get_ref();
    ctx.no_nul(name.as_bytes(), at, &format!("group {name:?}"))?;
    match crate::sys::group_id(name) {
        Ok(Some(gid)) => Ok(Some(gid)),
        Ok(None) => ctx.err(at, format!("group {name:?} does not exist")),
        Err(e) => ctx.err(at, format!("cannot look up group {name:?}: {e}")),
    }
}

fn server(ctx: &Ctx, raw: Spanned<RawServer>) -> Result<ServerConfig, ConfigError> {
    let span = raw.span();
    let raw = raw.into_inner();
    let listen = match raw.listen {
        None => DEFAULT_LISTEN.parse().expect("default address parses"),
        Some(l) => match l.get_ref().parse() {
            Ok(addr) => addr,
            Err(_) => {
                return ctx.err(
                    l.span().start,
                    format!(
                        "listen {:?} is not an address like \"127.0.0.1:8778\"",
                        l.get_ref()
                    ),
                );
            }
        },
    };
    let Some(root) = raw.root else {
        return ctx.err(span.start, "[server] needs `root`, the site's directory");
    };
    let max_clients = ctx.count(
        raw.max_clients,
        "max_clients",
        DEFAULT_MAX_CLIENTS,
        MAX_CLIENTS_LIMIT,
    )?;
    let max_connections_per_address = ctx.count(
        raw.max_connections_per_address,
        "max_connections_per_address",
        DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        MAX_HTTP_CONNECTIONS,
    )?;
    Ok(ServerConfig {
        listen,
        root: ctx.path(root, "`root`")?,
        static_files: raw.static_files.unwrap_or(true),
        livereload: raw.livereload.unwrap_or(true),
        hidden: raw.hidden.unwrap_or(false),
        inject: raw.inject.unwrap_or(false),
        delay: Duration::from_millis(raw.delay_ms.unwrap_or(30)),
        idle_timeout: ctx.idle_timeout(raw.idle_timeout_ms, DEFAULT_SERVER_IDLE_TIMEOUT_MS)?,
        send_timeout: ctx.send_timeout(raw.send_timeout_ms, DEFAULT_SEND_TIMEOUT_MS)?,
        max_clients,
        max_connections_per_address,
        builds: None,
        allowed_hosts: match raw.allowed_hosts {
            None => None,
            listed => Some(ctx.allowed_hosts(listed)?),
        },
        livereload_origins: ctx.livereload_origins(raw.livereload_origins)?,
    })
}

fn listener(ctx: &Ctx, raw: RawListener, at: usize) -> Result<ListenerConfig, ConfigError> {
    let name = listener_name(ctx, &raw.name)?;
    if raw.route.is_empty() {
        return ctx.err(at, format!("listener {name:?} has no [[listener.route]]"));
    }
    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for (i, r) in raw.route.into_iter().enumerate() {
        let span = r.span();
        let route = route(ctx, r.into_inner(), i, span.start)?;
        if !route_names.insert(route.name.clone()) {
            return ctx.err(
                span.start,
                format!("duplicate route name {:?} in listener {name:?}", route.name),
            );
        }
        routes.push(route);
    }
    let mut posts = Vec::new();
    for (i, p) in raw.post.into_iter().enumerate() {
        let span = p.span();
        posts.push(post(ctx, p.into_inner(), i, span.start)?);
    }
    let max_jobs = match raw.max_jobs {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(m) if *m.get_ref() == 0 => return ctx.err(m.span().start, "`max_jobs` must be at least 1"),
        Some(m) => m.into_inner(),
    };
    Ok(ListenerConfig {
        name: name.clone(),
        autostart: raw.autostart.unwrap_or(true),
        catch_up: raw.catch_up.unwrap_or(false),
        max_jobs,
        routes,
        posts,
    })
}

/// A listener's name: it names its state file `<name>.snapshot`, so a restricted
/// charset and at most [`MAX_LISTENER_NAME`] bytes.
fn listener_name<'a>(ctx: &Ctx, raw: &'a Spanned<String>) -> Result<&'a String, ConfigError> {
    let (name, at) = (raw.get_ref(), raw.span().start);
    ctx.no_nul(name.as_bytes(), at, &format!("listener name {name:?}"))?;
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || !name.chars().all(valid) {
        return ctx.err(
            at,
            format!("listener name {name:?} may hold only letters, digits, '.', '_' and '-'"),
        );
    }
    if name.len() > MAX_LISTENER_NAME {
        return ctx.err(
            at,
            format!(
                "listener name is {} bytes long; at most {MAX_LISTENER_NAME} are allowed \
                 (it names the listener's state file)",
                name.len()
            ),
        );
    }
    Ok(name)
}

/// The command of a route or post (`what`): exactly one of `run` and `shell`.
fn command(
    ctx: &Ctx,
    run: Option<Spanned<Vec<Spanned<String>>>>,
    shell: Option<Spanned<String>>,
    what: &str,
    at: usize,
) -> Result<Command, ConfigError> {
    match (run, shell) {
        (Some(run), None) if run.get_ref().first().is_none_or(|p| p.get_ref().is_empty()) => {
            ctx.err(run.span().start, "`run` needs at least a program")
        }
        (Some(run), None) => {
            for arg in run.get_ref() {
                ctx.no_nul(arg.get_ref().as_bytes(), arg.span().start, "a `run` argument")?;
            }
            Ok(Command::Run(
                run.into_inner().into_iter().map(Spanned::into_inner).collect(),
            ))
        }
        (None, Some(shell)) => {
            ctx.no_nul(shell.get_ref().as_bytes(), shell.span().start, "`shell`")?;
            Ok(Command::Shell(shell.into_inner()))
        }
        (Some(run), Some(_)) => ctx.err(
            run.span().start,
            format!("a {what} has exactly one of `run` and `shell`, not both"),
        ),
        (None, None) => ctx.err(
            at,
            format!("a {what} needs `run` (an argv) or `shell` (a string)"),
        ),
    }
}

fn post(ctx: &Ctx, raw: RawPost, index: usize, at: usize) -> Result<PostConfig, ConfigError> {
    let command = command(ctx, raw.run, raw.shell, "post", at)?;
    let name = match raw.name {
        Some(n) => ctx.job_name(n, "post")?,
        None => format!("post{index}"),
    };
    Ok(PostConfig {
        name,
        command,
        workdir: match raw.workdir {
            Some(w) => ctx.path(w, "`workdir`")?,
            None => ctx.base.clone(),
        },
        env: ctx.env(raw.env)?,
        timeout: ctx.timeout(raw.timeout_ms)?,
        kill_grace: Duration::from_millis(raw.kill_grace_ms.unwrap_or(5000)),
        limits: ctx.limits(raw.memory_max, raw.cpu_weight)?,
        list: raw.list.unwrap_or_default(),
    })
}

/// A route's matcher: its `glob` (default `**`; none at all is refused, as the
/// route could never run) and `ignore` (default [`DEFAULT_IGNORES`]), each glob
/// checked with the position of its key's value.
fn matcher(
    ctx: &Ctx,
    glob: Option<Spanned<OneOrMany>>,
    ignore: Option<Spanned<Vec<String>>>,
    at: usize,
) -> Result<Matcher, ConfigError> {
    let (include, include_at) = match glob {
        Some(g) => {
            let offset = g.span().start;
            (g.into_inner().into_vec(), offset)
        }
        None => (vec!["**".to_owned()], at),
    };
    if include.is_empty() {
        return ctx.err(include_at, "`glob` is empty: the route would never run");
    }
    let (ignore, ignore_at) = match ignore {
        Some(i) => (i.get_ref().clone(), i.span().start),
        None => (DEFAULT_IGNORES.iter().map(|s| s.to_string()).collect(), at),
    };
    for (globs, offset) in [(&include, include_at), (&ignore, ignore_at)] {
        if let Err(e) = Matcher::new(globs, &[]) {
            return ctx.err(offset, e.to_string());
        }
    }
    Ok(Matcher::new(&include, &ignore).expect("globs were checked one by one"))
}

fn route(ctx: &Ctx, raw: RawRoute, index: usize, at: usize) -> Result<RouteConfig, ConfigError> {
    let command = command(ctx, raw.run, raw.shell, "route", at)?;
    let matcher = matcher(ctx, raw.glob, raw.ignore, at)?;
    let events = match raw.events {
        Some(kinds) if kinds.is_empty() => {
            return ctx.err(at, "`events` is empty: the route would never run");
        }
        Some(kinds) => kinds.into_iter().collect(),
        None => EventSet::default_route(),
    };
    let path = ctx.path(raw.path, "`path`")?;
    let name = match raw.name {
        Some(n) => ctx.job_name(n, "route")?,
        None => index.to_string(),
    };
    Ok(RouteConfig {
        name,
        workdir: match raw.workdir {
            Some(w) => ctx.path(w, "`workdir`")?,
            None => path.clone(),
        },
        path,
        matcher,
        events,
        debounce: Duration::from_millis(raw.debounce_ms.unwrap_or(200)),
        delay: Duration::from_millis(raw.delay_ms.unwrap_or(30)),
        mode: raw.mode.unwrap_or_default(),
        list: ctx.list(raw.list, raw.mode.unwrap_or_default())?,
        order: crate::scheduler::Order {
            stage: raw.stage.unwrap_or(0),
            cancel_on_failure: raw.on_failure.unwrap_or_default() == super::raw::OnFailure::Cancel,
        },
        timeout: ctx.timeout(raw.timeout_ms)?,
        max_hold: match raw.max_hold_ms.unwrap_or(DEFAULT_MAX_HOLD_MS) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
        poll: ctx.poll(raw.poll, raw.poll_ms)?,
        vcs_hold: ctx.vcs_hold(raw.hold_while, raw.max_vcs_hold_ms)?,
        kill_grace: Duration::from_millis(raw.kill_grace_ms.unwrap_or(5000)),
        limits: ctx.limits(raw.memory_max, raw.cpu_weight)?,
        command,
        env: ctx.env(raw.env)?,
    })
}
