//! `execlibctl`: the control client. Parses arguments and sends one request.

use clap::Parser;
use execlib::cli::CtlCli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = CtlCli::parse();
    ExitCode::from(execlib::client::main(
        cli.socket,
        cli.instance,
        cli.json,
        &cli.command,
    ))
}
