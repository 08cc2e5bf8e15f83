//! Configuration: the TOML file is parsed into [`raw`] serde structs, then
//! validated once into the resolved [`Config`] the daemon runs on. Every error
//! names the file, line and column.

mod check;
mod group;
pub mod raw;
mod resolve;

pub use check::{MAX_JOB_NAME, MAX_LISTENER_NAME, MAX_SOCKET_PATH};
pub use raw::Mode;
pub use resolve::{
    Command, Config, ControlConfig, DaemonConfig, ListenerConfig, PostConfig, RouteConfig, ServerConfig,
};

use crate::paths::Environment;
use std::path::{Path, PathBuf};

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
    /// Reads and validates the config at `path` for instance `instance`.
    pub fn load(path: &Path, instance: &str, env: &Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
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

/// The config file and instance name from `--config FILE` (instance: the file's
/// stem) or `--instance NAME` (file: `$CONFIGURATION_DIRECTORY/NAME.toml`, else
/// `/etc/execlib/NAME.toml`). One of the two is given.
pub fn locate(config: Option<PathBuf>, instance: Option<String>, env: &Environment) -> (PathBuf, String) {
    match (config, instance) {
        (Some(path), _) => {
            let name = instance_from_path(&path).unwrap_or_else(|| "execlib".to_owned());
            (path, name)
        }
        (None, Some(name)) => (env.config_path(&name), name),
        (None, None) => (env.config_path("execlib"), "execlib".to_owned()),
    }
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
