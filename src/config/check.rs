//! The validation context and the checks on single values that every section
//! shares: NUL bytes, names, paths, `env` tables, timeouts, resource limits and
//! holds, each refused with the position of the offending value.

use super::ConfigError;
use super::raw::{RawEnv, RawSize};
use super::resources::{self, Limits, MemoryMax};
use super::{DEFAULT_MAX_VCS_HOLD_MS, HoldWhile, MAX_VCS_HOLD_LIMIT_MS, VcsHold};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The longest listener name, in bytes: it names `<state_dir>/<name>.snapshot`
/// (and `<name>.tmp`), which must fit a file name (NAME_MAX, 255 bytes).
pub const MAX_LISTENER_NAME: usize = 64;

/// The longest route or post name, in bytes (they go to the environment and logs).
pub const MAX_JOB_NAME: usize = 128;

/// The longest control socket path, in bytes: `sun_path` holds 108 bytes with the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Validation context: the file and its text, for positions.
pub(super) struct Ctx<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    /// The config file's directory, against which relative paths resolve.
    pub base: PathBuf,
}

/// The shortest `poll_ms`.
pub const MIN_POLL_MS: u64 = 100;
/// The shortest `idle_timeout_ms` (`[control]`, `[server]`): a client must have time to
/// send its first request, or say its LiveReload hello, after it connects.
pub const MIN_IDLE_TIMEOUT_MS: u64 = 100;
/// The shortest `send_timeout_ms` (`[server]`): shorter, a client whose network
/// stalls for a retransmission or two would be cut off.
pub const MIN_SEND_TIMEOUT_MS: u64 = 1000;

impl Ctx<'_> {
    /// An `Invalid` error at byte `offset` of the text.
    pub fn err<T>(&self, offset: usize, message: impl Into<String>) -> Result<T, ConfigError> {
        Err(ConfigError::at(self.path, self.text, offset, message.into()))
    }

    /// `p` made absolute against the config's directory, lexically normalized.
    pub fn abs(&self, p: &Path) -> PathBuf {
        normalize(&self.base.join(p))
    }

    /// Refuses a value holding a NUL byte.
    pub fn no_nul(&self, bytes: &[u8], offset: usize, what: &str) -> Result<(), ConfigError> {
        if bytes.contains(&0) {
            return self.err(
                offset,
                format!(
                    "{what} contains a NUL byte (\\u0000), which no file name, argument, \
                     environment variable or log line can hold"
                ),
            );
        }
        Ok(())
    }

    /// A path value (`what` names its key), checked and made absolute.
    pub fn path(&self, p: Spanned<PathBuf>, what: &str) -> Result<PathBuf, ConfigError> {
        self.no_nul(p.get_ref().as_os_str().as_bytes(), p.span().start, what)?;
        Ok(self.abs(p.get_ref()))
    }

    /// A route's or post's name (`what`: "route" or "post"): not empty, no NUL or
    /// control character (it goes to the environment and logs), not too long.
    pub fn job_name(&self, name: Spanned<String>, what: &str) -> Result<String, ConfigError> {
        let at = name.span().start;
        let n = name.get_ref();
        self.no_nul(n.as_bytes(), at, &format!("{what} name {n:?}"))?;
        if n.is_empty() {
            return self.err(at, format!("{what} name is empty"));
        }
        if n.chars().any(char::is_control) {
            return self.err(
                at,
                format!(
                    "{what} name {n:?} contains a control character (names go to the environment and logs)"
                ),
            );
        }
        if n.len() > MAX_JOB_NAME {
            return self.err(
                at,
                format!(
                    "{what} name is {} bytes long; at most {MAX_JOB_NAME} are allowed",
                    n.len()
                ),
            );
        }
        Ok(name.into_inner())
    }

    /// An `env` table: keys that can name an environment variable, values without NUL.
    pub fn env(&self, raw: RawEnv) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut env = BTreeMap::new();
        for (key, value) in raw {
            let at = key.span().start;
            let k = key.get_ref();
            self.no_nul(k.as_bytes(), at, &format!("env key {k:?}"))?;
            if k.is_empty() {
                return self.err(at, "env key is empty: it cannot name an environment variable");
            }
            if k.contains('=') {
                return self.err(
                    at,
                    format!("env key {k:?} contains '=': it cannot name an environment variable"),
                );
            }
            self.no_nul(
                value.get_ref().as_bytes(),
                value.span().start,
                &format!("env value of {k:?}"),
            )?;
            env.insert(key.into_inner(), value.into_inner());
        }
        Ok(env)
    }

    /// A route's `list`: only a batch has a list (a job per file gets its file in
    /// `EXECLIB_PATH`, and nothing on stdin).
    pub fn list(
        &self,
        raw: Option<Spanned<super::List>>,
        mode: super::Mode,
    ) -> Result<super::List, ConfigError> {
        match raw {
            Some(l) if mode == super::Mode::Each => self.err(
                l.span().start,
                "`list` applies to `mode = \"batch\"` only: a route that runs a job per file gives it its file in `EXECLIB_PATH`, and nothing on stdin",
            ),
            Some(l) => Ok(l.into_inner()),
            None => Ok(super::List::default()),
        }
    }

    /// A `timeout_ms`: none means no limit; 0 is refused (every job would be killed at once).
    pub fn timeout(&self, raw: Option<Spanned<u64>>) -> Result<Option<Duration>, ConfigError> {
        match raw {
            Some(t) if *t.get_ref() == 0 => self.err(
                t.span().start,
                "`timeout_ms` must be at least 1 (0 would kill every job at once); leave it out for no limit",
            ),
            Some(t) => Ok(Some(Duration::from_millis(t.into_inner()))),
            None => Ok(None),
        }
    }

    /// An `idle_timeout_ms` (`default_ms` when left out): at least
    /// [`MIN_IDLE_TIMEOUT_MS`], as 0 would close every connection before its request.
    pub fn idle_timeout(&self, raw: Option<Spanned<u64>>, default_ms: u64) -> Result<Duration, ConfigError> {
        let why = "a client needs time to send its first request";
        self.at_least(raw, default_ms, ("idle_timeout_ms", MIN_IDLE_TIMEOUT_MS, why))
    }

    /// A `send_timeout_ms` (`default_ms` when left out): at least [`MIN_SEND_TIMEOUT_MS`].
    pub fn send_timeout(&self, raw: Option<Spanned<u64>>, default_ms: u64) -> Result<Duration, ConfigError> {
        let why = "a client's network may pause that long";
        self.at_least(raw, default_ms, ("send_timeout_ms", MIN_SEND_TIMEOUT_MS, why))
    }

    /// A count `key` between 1 and `max` (`default` when left out).
    pub fn count(
        &self,
        raw: Option<Spanned<usize>>,
        key: &str,
        default: usize,
        max: usize,
    ) -> Result<usize, ConfigError> {
        match raw {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > max => {
                self.err(n.span().start, format!("`{key}` must be between 1 and {max}"))
            }
            Some(n) => Ok(n.into_inner()),
            None => Ok(default),
        }
    }

    /// `allowed_hosts` (`[server]`): DNS names, lower-cased, at most
    /// [`MAX_ALLOWED_HOSTS`](crate::http::authority::MAX_ALLOWED_HOSTS).
    pub fn allowed_hosts(
        &self,
        raw: Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Result<Vec<String>, ConfigError> {
        let max = crate::http::authority::MAX_ALLOWED_HOSTS;
        let name = |h: &str| {
            crate::http::authority::is_dns_name(h)
                .then(|| h.to_ascii_lowercase())
                .ok_or_else(|| {
                    format!("allowed_hosts: {h:?} is not a host name like \"dev.example.com\" (no port)")
                })
        };
        self.listed(raw, ("allowed_hosts", max), name)
    }

    /// `livereload_origins` (`[server]`): `scheme://host[:port]` origins,
    /// normalized, at most [`MAX_LIVERELOAD_ORIGINS`](crate::http::authority::MAX_LIVERELOAD_ORIGINS).
    pub fn livereload_origins(
        &self,
        raw: Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Result<Vec<String>, ConfigError> {
        let max = crate::http::authority::MAX_LIVERELOAD_ORIGINS;
        let origin = |o: &str| {
            crate::http::authority::normalize_origin(o).ok_or_else(|| {
                format!("livereload_origins: {o:?} is not an origin like \"https://dev.example.com:8443\" (http or https, no path)")
            })
        };
        self.listed(raw, ("livereload_origins", max), origin)
    }

    /// A list `key` of at most `max` values, each checked and made by `each`.
    fn listed(
        &self,
        raw: Option<Spanned<Vec<Spanned<String>>>>,
        (key, max): (&str, usize),
        each: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Vec::new());
        };
        if raw.get_ref().len() > max {
            return self.err(raw.span().start, format!("`{key}` lists at most {max} values"));
        }
        let values = raw.into_inner().into_iter();
        values
            .map(|v| each(v.get_ref()).or_else(|message| self.err(v.span().start, message)))
            .collect()
    }

    /// Milliseconds `raw` (`default_ms` when left out), refused under `min` with the
    /// key's name and why.
    fn at_least(
        &self,
        raw: Option<Spanned<u64>>,
        default_ms: u64,
        (key, min, why): (&str, u64, &str),
    ) -> Result<Duration, ConfigError> {
        match raw {
            Some(t) if *t.get_ref() < min => {
                self.err(t.span().start, format!("`{key}` must be at least {min} ({why})"))
            }
            Some(t) => Ok(Duration::from_millis(t.into_inner())),
            None => Ok(Duration::from_millis(default_ms)),
        }
    }

    /// A route's `poll` and `poll_ms`.
    pub fn poll(
        &self,
        mode: Option<crate::watch::PollMode>,
        ms: Option<Spanned<u64>>,
    ) -> Result<crate::watch::Poll, ConfigError> {
        let fixed = ms.is_some();
        let every = match ms {
            Some(t) if *t.get_ref() < MIN_POLL_MS => {
                return self.err(
                    t.span().start,
                    format!("`poll_ms` must be at least {MIN_POLL_MS} (each poll rescans the tree)"),
                );
            }
            Some(t) => t.into_inner(),
            None => super::DEFAULT_POLL_MS,
        };
        Ok(crate::watch::Poll {
            mode: mode.unwrap_or_default(),
            every: Duration::from_millis(every),
            fixed,
        })
    }

    /// A route's `hold_while` (paths, not empty, made absolute; `[]`: never held; none:
    /// git's) and `max_vcs_hold_ms` (at least 1, at most an hour).
    pub fn vcs_hold(
        &self,
        paths: Option<Vec<Spanned<PathBuf>>>,
        max: Option<Spanned<u64>>,
    ) -> Result<VcsHold, ConfigError> {
        let paths = match paths {
            None => HoldWhile::Git,
            Some(list) => {
                let mut paths = Vec::with_capacity(list.len());
                for p in list {
                    if p.get_ref().as_os_str().is_empty() {
                        return self.err(p.span().start, "a `hold_while` path is empty");
                    }
                    paths.push(self.path(p, "a `hold_while` path")?);
                }
                HoldWhile::Paths(paths)
            }
        };
        let max = match max {
            None => DEFAULT_MAX_VCS_HOLD_MS,
            Some(m) if *m.get_ref() == 0 => {
                return self.err(
                    m.span().start,
                    "`max_vcs_hold_ms` must be at least 1; to hold nothing, set `hold_while = []`",
                );
            }
            Some(m) if *m.get_ref() > MAX_VCS_HOLD_LIMIT_MS => {
                return self.err(
                    m.span().start,
                    format!("`max_vcs_hold_ms` is at most {MAX_VCS_HOLD_LIMIT_MS} (an hour)"),
                );
            }
            Some(m) => m.into_inner(),
        };
        Ok(VcsHold {
            paths,
            max: Duration::from_millis(max),
        })
    }

    /// A route's or post's `memory_max` and `cpu_weight` (systemd's syntax and ranges).
    pub fn limits(
        &self,
        memory_max: Option<Spanned<RawSize>>,
        cpu_weight: Option<Spanned<i64>>,
    ) -> Result<Limits, ConfigError> {
        let memory_max = match memory_max {
            None => None,
            Some(m) => {
                let at = m.span().start;
                let parsed = match m.into_inner() {
                    RawSize::Integer(bytes) => MemoryMax::from_integer(bytes),
                    RawSize::Text(text) => MemoryMax::parse(&text),
                };
                Some(parsed.or_else(|message| self.err(at, message))?)
            }
        };
        let cpu_weight = match cpu_weight {
            None => None,
            Some(w) => {
                let at = w.span().start;
                Some(resources::cpu_weight(w.into_inner()).or_else(|message| self.err(at, message))?)
            }
        };
        Ok(Limits {
            memory_max,
            cpu_weight,
        })
    }
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
