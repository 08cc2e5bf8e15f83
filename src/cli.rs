//! The command lines of `execlibd` and `execlibctl`, in the library so the man pages
//! and shell completions are generated from the same definitions
//! (`examples/package_assets.rs`).

use crate::logging::LogFormat;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// execlib daemon: watches directory trees and runs jobs when files change.
#[derive(Debug, Parser)]
#[command(name = "execlibd", version, args_conflicts_with_subcommands = true)]
pub struct DaemonCli {
    /// The config file; the instance name is its stem.
    #[arg(long, conflicts_with = "instance")]
    pub config: Option<PathBuf>,
    /// The instance: config at $CONFIGURATION_DIRECTORY/NAME.toml, else /etc/execlib/NAME.toml.
    #[arg(long)]
    pub instance: Option<String>,
    /// Validate the config and exit 0 (valid) or 1 (invalid) without starting anything.
    #[arg(long)]
    pub check: bool,
    /// Log to the journal or as text on stderr (default: journal when stderr is the journal;
    /// text for `serve`).
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    /// Instead of a config: serve a folder (see `execlibd serve --help`).
    #[command(subcommand)]
    pub command: Option<DaemonCommand>,
}

/// What `execlibd` does without a config file.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Serve a folder on 127.0.0.1 with LiveReload (pages reload when files change),
    /// optionally rebuilding on changes: no config file, no root, no systemd.
    Serve(ServeArgs),
}

/// `execlibd serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The folder to serve (default: the current directory).
    pub dir: Option<PathBuf>,
    /// The port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8778)]
    pub port: u16,
    /// Open the page in a browser (xdg-open) once it is served.
    #[arg(long)]
    pub open: bool,
    /// Rebuild on change: when a file under the current directory matching GLOB
    /// changes, run COMMAND (with sh); browsers reload once it is done.
    #[arg(long, num_args = 2, value_names = ["GLOB", "COMMAND"])]
    pub run: Option<Vec<String>>,
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
    /// Print the daemon's JSON reply (before or after the command).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do: a control request (its variants are the subcommands).
    #[command(subcommand)]
    pub command: crate::protocol::Request,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_after_the_command_is_accepted_as_the_troubleshooting_page_writes_it() {
        for args in [
            ["execlibctl", "listeners", "--json"],
            ["execlibctl", "--json", "listeners"],
        ] {
            let cli = CtlCli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(cli.json, "{args:?}");
        }
        let cli = CtlCli::try_parse_from(["execlibctl", "history", "docs", "--failed", "--json"]).unwrap();
        assert!(cli.json);
        <CtlCli as clap::CommandFactory>::command().debug_assert();
    }
}
