//! The command lines of `execlibd` and `execlibctl`, in the library so the man pages
//! and shell completions are generated from the same definitions
//! (`examples/package_assets.rs`).

use crate::logging::LogFormat;
use clap::{Parser, Subcommand};
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
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `execlibctl`'s commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List the listeners with their state and counters.
    Listeners,
    /// Start a listener.
    Start {
        /// The listener's name.
        listener: String,
    },
    /// Stop a listener and its jobs.
    Stop {
        /// The listener's name.
        listener: String,
    },
    /// Show the daemon's status.
    Status,
    /// Re-read the configuration and apply what changed.
    Reload,
    /// List the jobs running and queued.
    Jobs,
    /// Run the routes that match PATH as if it had been modified.
    Trigger {
        /// The listener's name.
        listener: String,
        /// The file: absolute, or relative to the config's directory or a route's path
        /// (any bytes).
        path: PathBuf,
    },
    /// Stop the daemon.
    Shutdown,
}

impl CtlCommand {
    /// The control request this command sends.
    pub fn request(self) -> crate::control::protocol::Request {
        use crate::control::protocol::Request;
        match self {
            CtlCommand::Listeners => Request::Listeners,
            CtlCommand::Start { listener } => Request::Start { listener },
            CtlCommand::Stop { listener } => Request::Stop { listener },
            CtlCommand::Status => Request::Status,
            CtlCommand::Reload => Request::Reload,
            CtlCommand::Trigger { listener, path } => Request::Trigger { listener, path },
            CtlCommand::Jobs => Request::Jobs,
            CtlCommand::Shutdown => Request::Shutdown,
        }
    }
}
