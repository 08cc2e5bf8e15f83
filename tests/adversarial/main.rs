//! Adversarial tests: each starts the real `execlibd` on a temporary sandbox,
//! attacks it over real sockets and files, asserts what must hold, and prints one
//! `ADVERSARIAL case=... held=...` figures line (see `common::Case`).
//!
//! Scale: `EXECLIB_ADVERSARIAL=full` runs the full figures; unset, the CI scale.
//! `EXECLIB_ADVERSARIAL_OUT=FILE` appends each figures line to FILE.
//! `tests/adversarial/run.sh` runs the full suite and prints a table.

// The tests signal, inspect and limit processes directly (libc), each call with
// a SAFETY comment; the crate's own unsafe code stays in src/sys/.
#![allow(unsafe_code)]

#[path = "../support/mod.rs"]
mod support;

mod common;
mod ws;

mod control_socket;
mod cross_site;
mod drop_folder;
mod event_followers;
mod event_storm;
mod hostile_globs;
mod hung_mount;
mod large_files;
mod livereload_abuse;
mod load;
mod metrics_abuse;
mod symlink_race;
