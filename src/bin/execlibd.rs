//! `execlibd`: the daemon. Parses its arguments and runs the library's daemon.

use clap::Parser;

fn main() -> std::process::ExitCode {
    execlib::execlibd(execlib::cli::DaemonCli::parse())
}
