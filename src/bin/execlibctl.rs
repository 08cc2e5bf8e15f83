//! `execlibctl`: the control client. Parses its arguments and sends one request.

use clap::Parser;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(execlib::execlibctl(execlib::cli::CtlCli::parse()))
}
