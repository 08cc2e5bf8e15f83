//! The config file's shape exactly as written in TOML: serde structs that
//! reject unknown keys and keep spans where validation needs a position.

use crate::events::EventKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    pub control: Option<Spanned<RawControl>>,
    pub server: Option<Spanned<RawServer>>,
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    pub metrics: Option<Spanned<RawMetrics>>,
}

/// `[metrics]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<Spanned<String>>,
    pub head_timeout_ms: Option<Spanned<u64>>,
}

/// `[daemon]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub shutdown_grace_ms: Option<u64>,
    pub ready_timeout_ms: Option<u64>,
    pub state_dir: Option<Spanned<PathBuf>>,
}

/// `[control]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub socket: Option<Spanned<PathBuf>>,
    pub mode: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
    pub idle_timeout_ms: Option<Spanned<u64>>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub root: Option<Spanned<PathBuf>>,
    #[serde(rename = "static")]
    pub static_files: Option<bool>,
    pub livereload: Option<bool>,
    pub hidden: Option<bool>,
    pub inject: Option<bool>,
    pub delay_ms: Option<u64>,
    pub idle_timeout_ms: Option<Spanned<u64>>,
    pub send_timeout_ms: Option<Spanned<u64>>,
    pub max_clients: Option<Spanned<usize>>,
    pub max_connections_per_address: Option<Spanned<usize>>,
    pub builds: Option<Vec<Spanned<String>>>,
    pub allowed_hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub livereload_origins: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub autostart: Option<bool>,
    pub catch_up: Option<bool>,
    pub max_jobs: Option<Spanned<usize>>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub post: Vec<Spanned<RawPost>>,
}

/// One `[[listener.post]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPost {
    pub name: Option<Spanned<String>>,
    pub run: Option<Spanned<Vec<Spanned<String>>>>,
    pub shell: Option<Spanned<String>>,
    pub workdir: Option<Spanned<PathBuf>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub kill_grace_ms: Option<u64>,
    pub memory_max: Option<Spanned<RawSize>>,
    pub cpu_weight: Option<Spanned<i64>>,
    pub list: Option<List>,
    #[serde(default)]
    pub env: RawEnv,
}

/// One `[[listener.route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<Spanned<String>>,
    pub path: Spanned<PathBuf>,
    pub glob: Option<Spanned<OneOrMany>>,
    pub ignore: Option<Spanned<Vec<String>>>,
    pub events: Option<Vec<EventKind>>,
    pub debounce_ms: Option<u64>,
    pub delay_ms: Option<u64>,
    pub max_hold_ms: Option<u64>,
    pub poll: Option<crate::watch::PollMode>,
    pub poll_ms: Option<Spanned<u64>>,
    pub hold_while: Option<Vec<Spanned<PathBuf>>>,
    pub max_vcs_hold_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub mode: Option<Mode>,
    pub stage: Option<u32>,
    pub on_failure: Option<OnFailure>,
    pub kill_grace_ms: Option<u64>,
    pub run: Option<Spanned<Vec<Spanned<String>>>>,
    pub shell: Option<Spanned<String>>,
    pub workdir: Option<Spanned<PathBuf>>,
    pub memory_max: Option<Spanned<RawSize>>,
    pub cpu_weight: Option<Spanned<i64>>,
    pub list: Option<Spanned<List>>,
    #[serde(default)]
    pub env: RawEnv,
}

/// An `env` table: keys and values keep their spans, so a bad one is located exactly.
pub type RawEnv = BTreeMap<Spanned<String>, Spanned<String>>;

/// `each` (one job per file) or `batch` (one job for all files of a window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One job per file.
    #[default]
    Each,
    /// One job for every file changed in the window, paths on stdin.
    Batch,
}

/// How a batch's paths (or a post command's) are listed on its job's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum List {
    /// One per line; a path holding a line break is quoted, as git quotes paths.
    #[default]
    Lines,
    /// Each path as it is, ended by a NUL byte (for `xargs -0`, `read -d ''`).
    Nul,
}

/// What a failed job means for the later stages of its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The later stages run anyway.
    #[default]
    Continue,
    /// The later stages do not run for this occurrence.
    Cancel,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings, one or many.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A size as written (`memory_max`): a TOML integer (bytes) or a string in
/// systemd's syntax, checked later with its position.
#[derive(Debug)]
pub enum RawSize {
    /// An integer.
    Integer(i64),
    /// A string.
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of bytes or a string like \"512M\", \"50%\" or \"infinity\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Integer(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
