//! Validation: turns the raw serde structs into the resolved config, applying
//! defaults, resolving relative paths against the config file's directory and
//! compiling globs, with a file:line:column error for anything invalid.

use super::ConfigError;
use super::raw::{RawConfig, RawControl, RawListener, RawPost, RawRoute, RawServer};
use crate::events::EventSet;
use crate::paths::Environment;
use crate::route::{DEFAULT_IGNORES, Matcher};
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
}

/// `[daemon]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// How long running jobs get between SIGTERM and SIGKILL at shutdown.
    pub shutdown_grace: Duration,
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
    /// A group to give the socket to, so its members may use it.
    pub group: Option<String>,
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
    /// At most this many LiveReload clients at once; more get 503.
    pub max_clients: usize,
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
    /// One job per file, or one per batch of files.
    pub mode: super::raw::Mode,
    /// Stage among the listener's routes, and what a failure does to later stages.
    pub order: crate::scheduler::Order,
    /// How long a job may run before it is killed (none: no limit).
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL for a job past its timeout.
    pub kill_grace: Duration,
    /// What to run.
    pub command: Command,
    /// The job's working directory (absolute).
    pub workdir: PathBuf,
    /// Extra environment for the job.
    pub env: BTreeMap<String, String>,
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
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_LISTEN: &str = "127.0.0.1:8778";
/// LiveReload clients at once, by default.
const DEFAULT_MAX_CLIENTS: usize = 1024;
/// The most `max_clients` may be: every client is an HTTP connection too.
const MAX_CLIENTS_LIMIT: usize = crate::http::MAX_CONNECTIONS;

/// Validation context: the file and its text, for positions.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    base: PathBuf,
}

impl Ctx<'_> {
    fn err<T>(&self, offset: usize, message: impl Into<String>) -> Result<T, ConfigError> {
        Err(ConfigError::at(self.path, self.text, offset, message.into()))
    }

    fn abs(&self, p: &Path) -> PathBuf {
        normalize(&self.base.join(p))
    }
}

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
        state_dir: match raw.daemon.state_dir {
            Some(dir) => ctx.abs(&dir),
            None => env.state_dir(instance),
        },
    };
    let control = control(&ctx, raw.control, instance, env)?;
    let server = raw.server.map(|s| server(&ctx, s)).transpose()?;
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
    Ok(Config {
        path: path.clone(),
        instance: instance.to_owned(),
        daemon,
        control,
        server,
        listeners,
    })
}

fn control(
    ctx: &Ctx,
    raw: RawControl,
    instance: &str,
    env: &Environment,
) -> Result<ControlConfig, ConfigError> {
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
        socket: match raw.socket {
            Some(s) => ctx.abs(&s),
            None => env.daemon_socket(instance),
        },
        mode,
        group: raw.group,
        idle_timeout: Duration::from_millis(raw.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS)),
    })
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
    let max_clients = match raw.max_clients {
        None => DEFAULT_MAX_CLIENTS,
        Some(m) if *m.get_ref() == 0 || *m.get_ref() > MAX_CLIENTS_LIMIT => {
            return ctx.err(
                m.span().start,
                format!("`max_clients` must be between 1 and {MAX_CLIENTS_LIMIT}"),
            );
        }
        Some(m) => m.into_inner(),
    };
    Ok(ServerConfig {
        listen,
        root: ctx.abs(&root),
        static_files: raw.static_files.unwrap_or(true),
        livereload: raw.livereload.unwrap_or(true),
        hidden: raw.hidden.unwrap_or(false),
        inject: raw.inject.unwrap_or(false),
        delay: Duration::from_millis(raw.delay_ms.unwrap_or(30)),
        idle_timeout: Duration::from_millis(raw.idle_timeout_ms.unwrap_or(30_000)),
        max_clients,
    })
}

fn listener(ctx: &Ctx, raw: RawListener, at: usize) -> Result<ListenerConfig, ConfigError> {
    let name = raw.name.get_ref();
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || !name.chars().all(valid) {
        return ctx.err(
            raw.name.span().start,
            format!("listener name {name:?} may hold only letters, digits, '.', '_' and '-'"),
        );
    }
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

/// The command of a route or post (`what`): exactly one of `run` and `shell`.
fn command(
    ctx: &Ctx,
    run: Option<Spanned<Vec<String>>>,
    shell: Option<Spanned<String>>,
    what: &str,
    at: usize,
) -> Result<Command, ConfigError> {
    match (run, shell) {
        (Some(run), None) if run.get_ref().is_empty() || run.get_ref()[0].is_empty() => {
            ctx.err(run.span().start, "`run` needs at least a program")
        }
        (Some(run), None) => Ok(Command::Run(run.into_inner())),
        (None, Some(shell)) => Ok(Command::Shell(shell.into_inner())),
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
        Some(n) if n.get_ref().is_empty() => return ctx.err(n.span().start, "post name is empty"),
        Some(n) => n.into_inner(),
        None => format!("post{index}"),
    };
    Ok(PostConfig {
        name,
        command,
        workdir: raw.workdir.map_or_else(|| ctx.base.clone(), |w| ctx.abs(&w)),
        env: raw.env,
        timeout: raw.timeout_ms.map(Duration::from_millis),
        kill_grace: Duration::from_millis(raw.kill_grace_ms.unwrap_or(5000)),
    })
}

fn route(ctx: &Ctx, raw: RawRoute, index: usize, at: usize) -> Result<RouteConfig, ConfigError> {
    let command = command(ctx, raw.run, raw.shell, "route", at)?;
    let (include, include_at) = match raw.glob {
        Some(g) => {
            let offset = g.span().start;
            (g.into_inner().into_vec(), offset)
        }
        None => (vec!["**".to_owned()], at),
    };
    let (ignore, ignore_at) = match raw.ignore {
        Some(i) => (i.get_ref().clone(), i.span().start),
        None => (DEFAULT_IGNORES.iter().map(|s| s.to_string()).collect(), at),
    };
    for (globs, offset) in [(&include, include_at), (&ignore, ignore_at)] {
        if let Err(e) = Matcher::new(globs, &[]) {
            return ctx.err(offset, e.to_string());
        }
    }
    let matcher = Matcher::new(&include, &ignore).expect("globs were checked one by one");
    let events = match raw.events {
        Some(kinds) if kinds.is_empty() => {
            return ctx.err(at, "`events` is empty: the route would never run");
        }
        Some(kinds) => kinds.into_iter().collect(),
        None => EventSet::default_route(),
    };
    let path = ctx.abs(&raw.path);
    let name = match raw.name {
        Some(n) if n.get_ref().is_empty() => return ctx.err(n.span().start, "route name is empty"),
        Some(n) => n.into_inner(),
        None => index.to_string(),
    };
    Ok(RouteConfig {
        name,
        workdir: raw.workdir.map_or_else(|| path.clone(), |w| ctx.abs(&w)),
        path,
        matcher,
        events,
        debounce: Duration::from_millis(raw.debounce_ms.unwrap_or(200)),
        delay: Duration::from_millis(raw.delay_ms.unwrap_or(30)),
        mode: raw.mode.unwrap_or_default(),
        order: crate::scheduler::Order {
            stage: raw.stage.unwrap_or(0),
            cancel_on_failure: raw.on_failure.unwrap_or_default() == super::raw::OnFailure::Cancel,
        },
        timeout: raw.timeout_ms.map(Duration::from_millis),
        kill_grace: Duration::from_millis(raw.kill_grace_ms.unwrap_or(5000)),
        command,
        env: raw.env,
    })
}

/// Removes `.` and resolves `..` components lexically (no symlinks followed).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
