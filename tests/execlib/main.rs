//! Integration tests: the real `execlibd` and `execlibctl` binaries on temporary
//! directories, driven over real sockets and real files.

// The tests signal, inspect and limit processes directly (libc), each call with
// a SAFETY comment; the crate's own unsafe code stays in src/sys/.
#![allow(unsafe_code)]

#[path = "../support/mod.rs"]
mod support;

mod browser;
mod catch_up;
mod cgroups;
mod config_errors;
mod control;
mod http;
mod hung;
mod jobs;
mod journal;
mod lifecycle;
mod livereload;
mod metrics;
mod mounts;
mod observe;
mod protocol_errors;
mod regression;
mod reload;
mod serve;
mod users;
mod vcs;
mod watching;
mod whole_files;
