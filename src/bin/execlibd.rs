//! `execlibd`: the daemon. Parses arguments, loads the config, runs the library's daemon.

use clap::Parser;
use execlib::{config, logging::LogFormat, paths::Environment};
use std::path::PathBuf;
use std::process::ExitCode;

/// execlib daemon: watches directory trees and runs jobs when files change.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The config file; the instance name is its stem.
    #[arg(long, required_unless_present = "instance", conflicts_with = "instance")]
    config: Option<PathBuf>,
    /// The instance: config at $CONFIGURATION_DIRECTORY/NAME.toml, else /etc/execlib/NAME.toml.
    #[arg(long)]
    instance: Option<String>,
    /// Validate the config and exit 0 (valid) or 1 (invalid) without starting anything.
    #[arg(long)]
    check: bool,
    /// Log to the journal or as text on stderr (default: journal when stderr is the journal).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Environment::from_process();
    let (path, instance) = config::locate(cli.config, cli.instance, &env);
    let config = match config::Config::load(&path, &instance, &env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("execlibd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    execlib::logging::init(cli.log_format);
    execlib::daemon::main(config)
}
