//! `execlibd`: the daemon. Parses arguments, loads the config, runs the library's daemon.

use clap::Parser;
use execlib::{cli::DaemonCli, config, paths::Environment};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = DaemonCli::parse();
    let env = Environment::from_process();
    let (path, config) = match load(cli.config, cli.instance, &env) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("execlibd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!("{}: ok", execlib::names::escaped(&path));
        return ExitCode::SUCCESS;
    }
    execlib::logging::init(cli.log_format);
    execlib::daemon::main(config)
}

/// Finds the config file and instance name, then reads and validates the config.
fn load(
    config: Option<PathBuf>,
    instance: Option<String>,
    env: &Environment,
) -> Result<(PathBuf, config::Config), config::ConfigError> {
    let (path, instance) = config::locate(config, instance, env)?;
    let config = config::Config::load(&path, &instance, env)?;
    Ok((path, config))
}
