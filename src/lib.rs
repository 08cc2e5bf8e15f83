//! execlib: a file-triggered job service for Linux.
//!
//! Data flow: an inotify event ([`watch`]) reaches its [`listener`], which
//! matches it against its routes ([`route`]) and hands matches to the
//! [`scheduler`], which starts [`job`]s. Beside it the [`control`] socket
//! drives the listeners, and [`daemon`] owns every lifecycle.

pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod glob;
pub mod http;
pub mod job;
pub mod ledger;
pub mod listener;
pub mod logging;
pub mod names;
pub mod notify;
pub mod paths;
pub mod protocol;
pub mod route;
pub mod scheduler;
pub mod snapshot;
pub mod state;
mod sys;
pub mod watch;

pub use daemon::run;
