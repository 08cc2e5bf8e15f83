//! Configuration: the TOML file is parsed into [`raw`] serde structs, then
//! validated once into the resolved [`Config`] the daemon runs on. Every error
//! names the file, line and column.

mod check;
mod metrics;
mod raw;
mod resolve;
mod resources;

/// How often a polled tree is rescanned, by default (the watcher's).
pub use crate::watch::DEFAULT_POLL_MS;
pub use check::{MAX_JOB_NAME, MAX_LISTENER_NAME};
pub use metrics::DEFAULT_HEAD_TIMEOUT_MS;
pub use raw::{List, Mode};
pub use resolve::{
    Command, Config, ControlConfig, DEFAULT_MAX_HOLD_MS, DEFAULT_MAX_VCS_HOLD_MS, HoldWhile, ListenerConfig,
    MAX_HTTP_CONNECTIONS, MAX_VCS_HOLD_LIMIT_MS, PostConfig, RouteConfig, ServerConfig, VcsHold,
};
pub use resources::{Limits, MemoryMax};

use crate::paths::Environment;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest config file read, in bytes (1 MiB).
pub const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// The longest instance name, in bytes (it becomes a directory and file names).
pub const MAX_INSTANCE_NAME: usize = 200;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a regular file (a FIFO, a device, a directory…).
    #[error("{path}: cannot read config: is not a regular file ({kind})")]
    NotAFile {
        /// The config file.
        path: PathBuf,
        /// What it is instead, like "a FIFO".
        kind: &'static str,
    },
    /// The file is larger than the limit (1 MiB, `MAX_CONFIG_SIZE`).
    #[error("{path}: cannot read config: is larger than 1 MiB")]
    TooLarge {
        /// The config file.
        path: PathBuf,
    },
    /// The instance name cannot become a directory or file name.
    #[error("invalid instance name {name:?}: {reason}")]
    BadInstance {
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The file is not valid TOML or not a valid config.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// An `Invalid` error at byte `offset` of `source`.
    pub(crate) fn at(path: &Path, source: &str, offset: usize, message: String) -> Self {
        let (line, column) = line_column(source, offset);
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message: printable(&message),
        }
    }
}

/// `message` with control characters (but newlines) escaped: it may quote the
/// file's text (a key in an unknown-field error), and it goes to a terminal or log.
fn printable(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

impl Config {
    /// The route paths reached through a symlink: (listener, route, path, where it
    /// resolves now), for `--check` to say.
    pub fn symlinked_paths(&self) -> Vec<(String, String, PathBuf, PathBuf)> {
        let mut out = Vec::new();
        for listener in &self.listeners {
            for route in &listener.routes {
                if let Some(target) = crate::paths::resolves_elsewhere(&route.path) {
                    out.push((
                        listener.name.clone(),
                        route.name.clone(),
                        route.path.clone(),
                        target,
                    ));
                }
            }
        }
        out
    }

    /// Reads and validates the config at `path` for instance `instance`.
    pub fn load(path: &Path, instance: &str, env: &Environment) -> Result<Config, ConfigError> {
        let text = read(path)?;
        Config::parse(path, &text, instance, env)
    }

    /// Validates config `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str, instance: &str, env: &Environment) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            ConfigError::at(path, text, offset, e.message().trim().to_owned())
        })?;
        resolve::resolve(raw, path, text, instance, env)
    }
}

/// Reads the config file: a regular file of at most [`MAX_CONFIG_SIZE`] bytes. It is
/// opened without blocking (a FIFO with no writer) and checked on the open file, and
/// at most one byte past the limit is read (`/dev/zero` never ends).
fn read(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            path: path.to_owned(),
            kind: file_kind(meta.file_type()),
        });
    }
    let too_large = || ConfigError::TooLarge {
        path: path.to_owned(),
    };
    if meta.len() > MAX_CONFIG_SIZE {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error()))
}

/// The error for a file that is not UTF-8, at the line and column of the first
/// byte that is not (the text before it is).
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> ConfigError {
    let valid = e.valid_up_to();
    let before = std::str::from_utf8(&bytes[..valid]).expect("valid up to there");
    let message = format!("the file is not valid UTF-8 here (byte 0x{:02x})", bytes[valid]);
    ConfigError::at(path, before, valid, message)
}

/// What a file that is not a regular file is, for an error message.
fn file_kind(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// The config file and instance name from `--config FILE` (instance: the file's
/// stem) or `--instance NAME` (file: `$CONFIGURATION_DIRECTORY/NAME.toml`, else
/// `/etc/execlib/NAME.toml`). One of the two is given. The instance name must pass
/// [`check_instance`].
pub fn locate(
    config: Option<PathBuf>,
    instance: Option<String>,
    env: &Environment,
) -> Result<(PathBuf, String), ConfigError> {
    let (path, name) = match (config, instance) {
        (Some(path), _) => {
            let name = instance_from_path(&path).unwrap_or_else(|| "execlib".to_owned());
            (path, name)
        }
        (None, Some(name)) => (env.config_path(&name), name),
        (None, None) => (env.config_path("execlib"), "execlib".to_owned()),
    };
    check_instance(&name)?;
    Ok((path, name))
}

/// Refuses an instance name that cannot become a directory or file name (it is part of
/// the control socket's and the state directory's paths): empty, `.` or `..`, holding
/// `/` or NUL, or longer than [`MAX_INSTANCE_NAME`] bytes.
pub fn check_instance(name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "`.` and `..` are not names"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else if name.len() > MAX_INSTANCE_NAME {
        "it is longer than 200 bytes"
    } else {
        return Ok(());
    };
    Err(ConfigError::BadInstance {
        name: name.to_owned(),
        reason,
    })
}

/// The instance name implied by a config file: its stem.
pub fn instance_from_path(path: &Path) -> Option<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests;
