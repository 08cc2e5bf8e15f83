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
//! most [`MAX_REMOTE_STARTS`] at once per mount and [`MAX_REMOTE_STARTS_IN_ALL`]
//! in all ([`Places`]); the job waits for it, and gives up at its
//! stop or timeout: the child waiting on the mount is then killed (such waits end
//! on SIGKILL), and a start that ends anyway after its job gave up kills what it
//! started.

use super::JobSpec;
use super::child::{self, Launch, StartError, Started};
use super::interpreter;
use super::orphans::{self, Registered};
use crate::config::Command;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// At most this many job starts that may wait on one network or FUSE mount run
/// at once, each on a blocking thread: a start stuck on a mount that never answers
/// keeps its thread (and its place) until the mount answers. Further ones wait for
/// a place, and can still be stopped or time out; jobs on local file systems, and
/// (up to [`MAX_REMOTE_STARTS_IN_ALL`]) on other mounts, are not held up.
const MAX_REMOTE_STARTS: usize = 16;

/// At most this many such starts run at once over all mounts (the blocking pool's
/// threads are for the rest of the daemon too).
const MAX_REMOTE_STARTS_IN_ALL: usize = 64;

static IN_ALL: Semaphore = Semaphore::const_new(MAX_REMOTE_STARTS_IN_ALL);

/// Each mount's places (those with starts under way or waiting), by mount point.
static PER_MOUNT: std::sync::Mutex<BTreeMap<PathBuf, Arc<Semaphore>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// A start's places: one of each mount's it may meet, and one of all.
struct Places {
    _mounts: Vec<OwnedSemaphorePermit>,
    _all: SemaphorePermit<'static>,
}

/// `mount`'s places; mounts whose places are all free and unasked are forgotten.
fn places_of(mount: &Path) -> Arc<Semaphore> {
    let mut per_mount = PER_MOUNT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    per_mount.retain(|_, s| Arc::strong_count(s) > 1);
    let places = per_mount.entry(mount.to_owned());
    places
        .or_insert_with(|| Arc::new(Semaphore::new(MAX_REMOTE_STARTS)))
        .clone()
}

/// Takes a place of each of `mounts` and one of all for a start that may wait on
/// them, all at once or none: when one is taken (warned, once), it waits for that
/// one to free and tries again, holding nothing meanwhile, so a start waiting on a
/// full mount keeps no place of another. Its stop or deadline gives up first.
async fn place(
    mounts: &BTreeSet<PathBuf>,
    cancel: &CancellationToken,
    deadline: Option<tokio::time::Instant>,
) -> Result<Places, Unstarted> {
    let each: Vec<(&PathBuf, Arc<Semaphore>)> = mounts.iter().map(|m| (m, places_of(m))).collect();
    let mut warned = false;
    loop {
        let mut held = Vec::new();
        let full = each
            .iter()
            .position(|(_, places)| match places.clone().try_acquire_owned() {
                Ok(place) => {
                    held.push(place);
                    false
                }
                Err(_) => true,
            });
        if full.is_none()
            && let Ok(all) = IN_ALL.try_acquire()
        {
            return Ok(Places {
                _mounts: held,
                _all: all,
            });
        }
        drop(held);
        if !warned {
            warned = true;
            match full {
                Some(i) => warn!(
                    mount = %crate::names::escaped(each[i].0),
                    "{MAX_REMOTE_STARTS} job starts already wait on this network or FUSE mount: this one waits its turn"
                ),
                None => warn!(
                    "{MAX_REMOTE_STARTS_IN_ALL} job starts already wait on network or FUSE mounts: this one waits its turn"
                ),
            }
        }
        // Until the place that was missing frees (taken and given back at once).
        let freed = async {
            match full {
                Some(i) => drop(each[i].1.clone().acquire_owned().await),
                None => drop(IN_ALL.acquire().await),
            }
        };
        tokio::select! {
            biased; // a job stopped as a place frees does not take it
            _ = cancel.cancelled() => return Err(Unstarted::GaveUp { timeout: false }),
            _ = until(deadline) => return Err(Unstarted::GaveUp { timeout: true }),
            _ = freed => {}
        }
    }
}

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
    let (mounts, found) = remote_mounts(spec);
    if mounts.is_empty() {
        // The mount check's `PATH` lookup, if it made one, is not made again.
        let launch = Launch {
            found: found.as_deref(),
            ..*launch
        };
        let started = orphans::spawn(None, || child::start(&launch))
            .map_err(Unstarted::Failed)?
            .ok_or(Unstarted::GaveUp { timeout: false })?;
        let registered = Registered(started.child.pid());
        return Ok((started, registered));
    }
    // A place among the starts that may wait on each of its mounts, waited for as the
    // start is.
    let place = place(&mounts, cancel, deadline).await?;
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
            found: None,
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

/// The network or FUSE mounts starting `spec`'s job may wait on (none: a local
/// start), and the program as found on `PATH` when it looked there and found it
/// without meeting such a mount (the workdir joined). What is asked, in the order
/// the start goes: (a program looked up on `PATH`, which the daemon does before the
/// start) the `PATH` directories looked in up to the first that has it, its
/// working directory, its program named by a path, and the interpreters `execve`
/// opens for the program, once symbolic links are followed (each path's innermost
/// mount: [`crate::mountinfo::remote_mounts_of`]). Only asked when the
/// mount table has such a mount: the interpreters cost a read of the program's head.
fn remote_mounts(spec: &JobSpec) -> (BTreeSet<PathBuf>, Option<PathBuf>) {
    let mut mounts = BTreeSet::new();
    if !crate::mountinfo::any_remote_mount() {
        return (mounts, None); // the common case: no `PATH` walk, no lookup per path
    }
    let workdir = &spec.workdir;
    // The innermost mount a path reaches: the one whose server it waits for.
    let reaches = |p: &Path| crate::mountinfo::remote_mounts_of(&workdir.join(p)).pop();
    // In `PATH`'s order, as the lookup goes: up to the first local match, or the
    // first on such a mount (the lookup may wait there; what it finds is unknown).
    let on_path = |name: &str, mounts: &mut BTreeSet<PathBuf>| {
        let path = child::search_path(&spec.env);
        for dir in path.as_bytes().split(|&b| b == b':') {
            let candidate = Path::new(OsStr::from_bytes(if dir.is_empty() { b"." } else { dir })).join(name);
            if let Some(mount) = reaches(&candidate) {
                mounts.insert(mount);
                return None;
            }
            if child::is_program(&workdir.join(&candidate)) {
                return Some(candidate);
            }
        }
        None
    };
    let (program, looked_up) = match &spec.command {
        Command::Run(argv) => match argv.first() {
            Some(program) if program.contains('/') => (Some(PathBuf::from(program)), false),
            Some(program) => (on_path(program, &mut mounts), true),
            None => (None, false),
        },
        Command::Shell(_) => (Some(PathBuf::from("/bin/sh")), false),
    };
    mounts.extend(reaches(workdir));
    if let Some(program) = &program {
        // The program, and what `execve` opens to run it: its `#!` interpreter, the
        // dynamic loader (up to the first on such a mount, which is not read).
        let runs = reaches(program).or_else(|| interpreter::reaches(program, workdir, reaches));
        mounts.extend(runs);
    }
    let found = program.filter(|_| looked_up).map(|p| workdir.join(p));
    (mounts, found)
}
