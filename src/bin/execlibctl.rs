//! `execlibctl`: the control client. Parses arguments and sends one request.

use clap::{Parser, Subcommand};
use execlib::control::protocol::Request;
use std::path::PathBuf;
use std::process::ExitCode;

/// Control a running execlib daemon.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, conflicts_with = "instance")]
    socket: Option<PathBuf>,
    /// The instance whose daemon to control.
    #[arg(long)]
    instance: Option<String>,
    /// Print the daemon's JSON reply.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the listeners with their state and counters.
    Listeners,
    /// Start a listener.
    Start { listener: String },
    /// Stop a listener and its jobs.
    Stop { listener: String },
    /// Show the daemon's status.
    Status,
    /// Re-read the configuration.
    Reload,
    /// List the jobs running and queued.
    Jobs,
    /// Run the routes that match PATH as if it had been modified.
    Trigger { listener: String, path: String },
    /// Stop the daemon.
    Shutdown,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match cli.command {
        Command::Listeners => Request::Listeners,
        Command::Start { listener } => Request::Start { listener },
        Command::Stop { listener } => Request::Stop { listener },
        Command::Status => Request::Status,
        Command::Reload => Request::Reload,
        Command::Trigger { listener, path } => Request::Trigger { listener, path },
        Command::Jobs => Request::Jobs,
        Command::Shutdown => Request::Shutdown,
    };
    ExitCode::from(execlib::client::main(
        cli.socket,
        cli.instance,
        cli.json,
        &request,
    ))
}
