//! Starting a job's main process. The start is a vfork-style clone: the thread
//! that starts it is suspended until the child has entered its working directory
//! and executed its program ([`crate::sys::spawn`]). On a network or FUSE mount
//! that stops answering, that may be never, so such a start must not suspend a
//! runtime worker (two of them, and the whole daemon stops answering). Nor may the
//! lookup of a program on `PATH`, which the daemon does itself. A job whose working
//! directory or program, or a `PATH` directory it is looked up in, or the
//! interpreter on its program's `#!` line or its dynamic loader
//! ([`super::interpreter`]) lies on such a mount (symbolic links followed) is
//! started on a blocking thread instead, at
//! most [`MAX_REMOTE_STARTS`] at once; the job waits for it, and gives up at its
//! stop or timeout: the child waiting on the mount is then killed (such waits end
//! on SIGKILL), and a start that ends anyway after its job gave up kills what it
//! started.

use super::JobSpec;
use super::child::{self, Launch, StartError, Started};
use super::interpreter;
use super::orphans::{self, Registered};
use crate::config::Command;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// At most this many job starts that may wait on a network or FUSE mount run at
/// once, each on a blocking thread: a start stuck on a mount that never answers
/// keeps its thread (and its place) until the mount answers. Further ones wait for
/// a place, and can still be stopped or time out; jobs on local file systems are
/// not held up.
const MAX_REMOTE_STARTS: usize = 16;

static REMOTE_STARTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_REMOTE_STARTS);

/// Why a job's main process was not started.
pub(super) enum Unstarted {
    /// It could not be.
    Failed(StartError),
    /// Its stop or timeout came first, while its start waited on the file system.
    GaveUp {
        /// Its timeout, not a stop.
        timeout: bool,
    },
}

/// Starts the job's main process and registers it (see [`orphans`]).
pub(super) async fn start(
    spec: &JobSpec,
    launch: &Launch<'_>,
    cancel: &CancellationToken,
    deadline: Option<tokio::time::Instant>,
) -> Result<(Started, Registered), Unstarted> {
    if !may_wait_on_a_remote_mount(spec) {
        let started = orphans::spawn(None, || child::start(launch))
            .map_err(Unstarted::Failed)?
            .ok_or(Unstarted::GaveUp { timeout: false })?;
        let registered = Registered(started.child.pid());
        return Ok((started, registered));
    }
    // A place among the starts that may wait on a mount, waited for as the start is.
    let place = match REMOTE_STARTS.try_acquire() {
        Ok(place) => place,
        Err(_) => {
            warn!(
                "{MAX_REMOTE_STARTS} job starts already wait on a network or FUSE mount: this one waits its turn"
            );
            tokio::select! {
                biased; // a job stopped as a place frees does not take it
                _ = cancel.cancelled() => return Err(Unstarted::GaveUp { timeout: false }),
                _ = until(deadline) => return Err(Unstarted::GaveUp { timeout: true }),
                place = REMOTE_STARTS.acquire() => place.expect("the semaphore is never closed"),
            }
        }
    };
    let owned = (
        spec.command.clone(),
        spec.workdir.clone(),
        spec.env.clone(),
        launch.cgroup_procs.map(|fd| fd.try_clone_to_owned()).transpose(),
    );
    let (stdin, nofile_soft) = (launch.stdin, launch.nofile_soft);
    let attempt = std::sync::Arc::new(orphans::Attempt::default());
    let spawner = attempt.clone();
    let start = tokio::task::spawn_blocking(move || {
        let _place = place; // freed with this thread, however long the mount keeps it
        let (command, workdir, env, procs) = owned;
        let procs = procs.map_err(|e| Unstarted::Failed(StartError::Cgroup(e)))?;
        let launch = Launch {
            command: &command,
            workdir: &workdir,
            env: &env,
            stdin,
            nofile_soft,
            cgroup_procs: procs.as_ref().map(std::os::fd::AsFd::as_fd),
        };
        let started = orphans::spawn(Some(&spawner), || child::start(&launch))
            .map_err(Unstarted::Failed)?
            .ok_or(Unstarted::GaveUp { timeout: false })?;
        // Dropped here if the job gave up meanwhile: the process group is killed, and
        // the process reaped as an adoptee.
        let registered = Registered(started.child.pid());
        Ok((started, registered))
    });
    let gave_up = tokio::select! {
        biased; // a start that is done wins: its process is the job's
        started = start => return started.unwrap_or_else(|e| {
            Err(Unstarted::Failed(StartError::Other(std::io::Error::other(e))))
        }),
        _ = cancel.cancelled() => Unstarted::GaveUp { timeout: false },
        _ = until(deadline) => Unstarted::GaveUp { timeout: true },
    };
    // A start not begun never begins; the child of one waiting on the file system is
    // killed (which frees its thread, when the mount lets the wait be interrupted).
    attempt.give_up();
    Err(gave_up)
}

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Whether starting `spec`'s job may wait on a network or FUSE mount: its
/// working directory, its program named by a path, or (a program looked up on
/// `PATH`, which the daemon does before the start) a `PATH` directory looked in
/// up to the first that has it, or the interpreters `execve` opens for the
/// program lies on one, once symbolic links are followed
/// ([`crate::mountinfo::reaches_remote_mount`]). Only asked when the mount table
/// has such a mount: the interpreters cost a read of the program's head.
fn may_wait_on_a_remote_mount(spec: &JobSpec) -> bool {
    if !crate::mountinfo::any_remote_mount() {
        return false; // the common case: no `PATH` walk, no lookup per path
    }
    let workdir = &spec.workdir;
    let reaches = |p: &Path| crate::mountinfo::reaches_remote_mount(&workdir.join(p));
    // The program, and what `execve` opens to run it: its `#!` interpreter, the
    // dynamic loader.
    let runs = |program: &Path| reaches(program) || interpreter::reaches(program, workdir, |p| reaches(p));
    // In `PATH`'s order, as the lookup goes: up to the first local match.
    let on_path = |name: &str| {
        let path = child::search_path(&spec.env);
        for dir in path.as_bytes().split(|&b| b == b':') {
            let candidate = Path::new(OsStr::from_bytes(if dir.is_empty() { b"." } else { dir })).join(name);
            if reaches(&candidate) {
                return true;
            }
            if child::is_program(&workdir.join(&candidate)) {
                return runs(&candidate);
            }
        }
        false
    };
    reaches(workdir)
        || match &spec.command {
            Command::Run(argv) => match argv.first() {
                Some(program) if program.contains('/') => runs(Path::new(program)),
                Some(program) => on_path(program),
                None => false,
            },
            Command::Shell(_) => runs(Path::new("/bin/sh")),
        }
}
