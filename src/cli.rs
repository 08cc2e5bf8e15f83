//! The command lines of `execlibd` and `execlibctl`, in the library so the man pages
//! and shell completions are generated from the same definitions
//! (`examples/package_assets.rs`).

use crate::logging::LogFormat;
use clap::Parser;
use std::path::PathBuf;

/// execlib daemon: watches directory trees and runs jobs when files change.
#[derive(Debug, Parser)]
#[command(name = "execlibd", version)]
pub struct DaemonCli {
    /// The config file; the instance name is its stem.
    #[arg(long, required_unless_present = "instance", conflicts_with = "instance")]
    pub config: Option<PathBuf>,
    /// The instance: config at $CONFIGURATION_DIRECTORY/NAME.toml, else /etc/execlib/NAME.toml.
    #[arg(long)]
    pub instance: Option<String>,
    /// Validate the config and exit 0 (valid) or 1 (invalid) without starting anything.
    #[arg(long)]
    pub check: bool,
    /// Log to the journal or as text on stderr (default: journal when stderr is the journal).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Control a running execlib daemon.
#[derive(Debug, Parser)]
#[command(name = "execlibctl", version)]
pub struct CtlCli {
    /// The daemon's control socket.
    #[arg(long, conflicts_with = "instance")]
    pub socket: Option<PathBuf>,
    /// The instance whose daemon to control (default: the only one running).
    #[arg(long)]
    pub instance: Option<String>,
    /// Print the daemon's JSON reply.
    #[arg(long)]
    pub json: bool,
    /// What to do: a control request (its variants are the subcommands).
    #[command(subcommand)]
    pub command: crate::protocol::Request,
}
