//! Starting a job's main process. The start is a vfork-style clone: the thread
//! that starts it is suspended until the child has entered its working directory
//! and executed its program ([`crate::sys::spawn`]). On a network or FUSE mount
//! that stops answering, that may be never, so such a start must not suspend a
//! runtime worker (two of them, and the whole daemon stops answering). A job whose
//! working directory or program lies on such a mount is started on a blocking
//! thread instead; the job waits for it, and gives up at its stop or timeout: the
//! child waiting on the mount is then killed (such waits end on SIGKILL), and a
//! start that ends anyway after its job gave up kills what it started.

use super::JobSpec;
use super::child::{self, Launch, StartError, Started};
use super::orphans::{self, Registered};
use crate::config::Command;
use std::path::Path;
use tokio_util::sync::CancellationToken;

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
    if !may_wait_on_a_remote_mount(&spec.command, &spec.workdir) {
        let started = orphans::spawn(None, || child::start(launch))
            .map_err(Unstarted::Failed)?
            .ok_or(Unstarted::GaveUp { timeout: false })?;
        let registered = Registered(started.child.pid());
        return Ok((started, registered));
    }
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
    let timeout = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    let gave_up = tokio::select! {
        biased; // a start that is done wins: its process is the job's
        started = start => return started.unwrap_or_else(|e| {
            Err(Unstarted::Failed(StartError::Other(std::io::Error::other(e))))
        }),
        _ = cancel.cancelled() => Unstarted::GaveUp { timeout: false },
        _ = timeout => Unstarted::GaveUp { timeout: true },
    };
    // A start not begun never begins; the child of one waiting on the file system is
    // killed (which frees its thread, when the mount lets the wait be interrupted).
    attempt.give_up();
    Err(gave_up)
}

/// Whether starting `command` in `workdir` may wait on a network or FUSE mount: its
/// working directory, or its program named by a path, lies on one (as written: see
/// [`crate::mountinfo::under_remote_mount`]).
fn may_wait_on_a_remote_mount(command: &Command, workdir: &Path) -> bool {
    let program = match command {
        Command::Run(argv) => argv.first().filter(|p| p.contains('/')).map(|p| workdir.join(p)),
        Command::Shell(_) => None,
    };
    crate::mountinfo::under_remote_mount(workdir)
        || program.is_some_and(|p| crate::mountinfo::under_remote_mount(&p))
}
