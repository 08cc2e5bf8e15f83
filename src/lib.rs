//! execlib: a file-triggered job service for Linux.
//!
//! Data flow, one direction: an inotify event (`watch`) reaches its `listener`,
//! which matches it against its routes (`route`, with `glob`) and hands matches to
//! its `scheduler`, which starts `job`s (holding them while `vcs` says a
//! version-control operation is at work on their tree). Beside it the `control` socket and the
//! `http` front end work on the daemon's shared `state`, and `daemon` owns every
//! lifecycle. System calls std lacks are wrapped in `sys`, the only module that
//! may use `unsafe`.
//!
//! The public surface is what the binaries and tests use: the command lines
//! ([`cli`]), the control protocol ([`protocol`]), the two programs' bodies
//! ([`execlibd`], [`execlibctl`]), and [`run`], which runs a daemon on a
//! [`Config`] until a future resolves.

pub mod cli;
pub mod protocol;

mod builds;
mod client;
mod config;
mod control;
mod daemon;
mod events;
mod exposition;
mod feed;
mod glob;
mod history;
mod http;
mod job;
mod ledger;
mod listener;
mod logging;
mod metrics;
mod mountinfo;
mod names;
mod notify;
mod paths;
mod probe;
mod route;
mod scheduler;
mod serve;
mod snapshot;
mod state;
mod sys;
mod vcs;
mod watch;

pub use client::main as execlibctl;
pub use config::{Config, ConfigError};
pub use daemon::{DaemonError, main as execlibd, run};
pub use logging::LogFormat;
pub use paths::Environment;
