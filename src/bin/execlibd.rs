//! `execlibd`: the daemon. Parses arguments, loads the config, runs the library's daemon.

use clap::Parser;
use execlib::{cli::DaemonCli, config, paths::Environment};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = DaemonCli::parse();
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
        println!("{}: ok", execlib::names::escaped(&path));
        return ExitCode::SUCCESS;
    }
    execlib::logging::init(cli.log_format);
    execlib::daemon::main(config)
}
