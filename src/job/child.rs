//! A job's process: its program found on `PATH`, its environment and pipes made,
//! started by [`crate::sys::spawn`] (a vfork-style clone, never `fork`, so a start
//! costs the same whatever the daemon's size) and awaited through its pidfd.

use super::output::OutputPipe;
use crate::config::Command;
use crate::sys::{AsyncProcess, Exit, SpawnError, Spec, Stage};
use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::net::unix::pipe;

/// Variables systemd gives the daemon that must not leak to jobs.
const SYSTEMD_VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// `/dev/null`, opened once, for jobs' stdin.
static DEV_NULL: std::sync::LazyLock<io::Result<std::fs::File>> =
    std::sync::LazyLock::new(|| std::fs::File::open("/dev/null"));

/// `PATH` when neither the job nor the daemon has one (glibc's default).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What a job's process is started with.
#[derive(Clone, Copy)]
pub struct Launch<'a> {
    /// What to run.
    pub command: &'a Command,
    /// Its working directory.
    pub workdir: &'a Path,
    /// Variables added to the daemon's (without systemd's).
    pub env: &'a BTreeMap<String, OsString>,
    /// Whether it gets a pipe on stdin (else `/dev/null`).
    pub stdin: bool,
    /// Its soft open-files limit; `None`: the daemon's.
    pub nofile_soft: Option<u64>,
    /// The `cgroup.procs` of the cgroup it runs in, if any.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    /// Its program as already found on `PATH` (by the mount check of
    /// `job::start`), so it is not looked up again; `None`: looked up here.
    pub found: Option<&'a Path>,
}

/// A started job process and the daemon's ends of its pipes.
pub struct Started {
    /// The process.
    pub child: Child,
    /// Its stdin, when [`Launch::stdin`] asked for one.
    pub stdin: Option<pipe::Sender>,
    /// Its stdout.
    pub stdout: OutputPipe,
    /// Its stderr.
    pub stderr: OutputPipe,
}

/// Why a job's process could not be started: a sentence for the log and `jobs`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The program is not there, or not executable.
    #[error("cannot start {program}: {source}")]
    Program {
        /// The program as configured, quoted.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// The working directory cannot be entered.
    #[error("working directory {dir} {reason}")]
    Workdir {
        /// The directory, escaped.
        dir: String,
        /// "does not exist", or the error.
        reason: String,
    },
    /// The job could not be moved into its cgroup.
    #[error("cannot move the job into its cgroup: {0}")]
    Cgroup(io::Error),
    /// Anything else (descriptors, process group, a NUL byte in a variable).
    #[error("cannot start the job: {0}")]
    Other(io::Error),
}

/// A job's main process: our child until [`Child::wait`] reaps it; dropped before
/// that, its process group is killed (it is then reaped as an adoptee).
pub struct Child {
    process: AsyncProcess,
    exit: std::sync::OnceLock<Exit>,
}

impl Child {
    /// Its pid (and process group id).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Waits until it has exited, leaving it unreaped (cancel-safe): its pid, and so
    /// its process group's id, stay its own until [`Child::wait`].
    pub async fn exited(&self) -> io::Result<()> {
        match self.exit.get() {
            Some(_) => Ok(()),
            None => self.process.exited().await,
        }
    }

    /// Waits for it to exit and reaps it (cancel-safe; later calls return the same).
    pub async fn wait(&self) -> io::Result<Exit> {
        if let Some(exit) = self.exit.get() {
            return Ok(*exit);
        }
        let exit = self.process.wait().await?;
        Ok(*self.exit.get_or_init(|| exit))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit.get().is_none() {
            crate::sys::kill_group(self.pid(), libc::SIGKILL);
            crate::sys::kill(self.pid(), libc::SIGKILL);
        }
    }
}

/// Starts the job's process (see [`Launch`]). Must run inside the tokio runtime.
pub fn start(launch: &Launch<'_>) -> Result<Started, StartError> {
    let (argv, program) = argv_and_program(launch)?;
    let own = job_environment(launch.env).map_err(StartError::Other)?;
    let envp = environment(&DAEMON_ENV, launch.env, &own);
    let workdir =
        CString::new(launch.workdir.as_os_str().as_bytes()).map_err(|e| StartError::Other(e.into()))?;
    let null = DEV_NULL
        .as_ref()
        .map_err(|e| StartError::Other(io::Error::new(e.kind(), e.to_string())))?;
    let (stdin_read, stdin_write) = match launch.stdin {
        true => crate::sys::pipe().map(|(r, w)| (Some(r), Some(w))),
        false => Ok((None, None)),
    }
    .map_err(StartError::Other)?;
    let (out_read, out_write) = crate::sys::pipe().map_err(StartError::Other)?;
    let (err_read, err_write) = crate::sys::pipe().map_err(StartError::Other)?;
    let stdin_fd = stdin_read.as_ref().map_or(null.as_fd(), |r| r.as_fd());
    let spawn = |program: &CStr, argv: &[CString]| {
        crate::sys::spawn(&Spec {
            program,
            argv,
            envp: &envp,
            workdir: &workdir,
            stdio: [stdin_fd, out_write.as_fd(), err_write.as_fd()],
            nofile_soft: launch.nofile_soft,
            cgroup_procs: launch.cgroup_procs,
        })
    };
    let process = match spawn(&program, &argv) {
        // A script without `#!`: run by /bin/sh, as execvp(3) and the shells do.
        Err(e) if e.stage == Stage::Exec && e.source.raw_os_error() == Some(libc::ENOEXEC) => {
            let mut sh_argv = vec![CString::from(c"/bin/sh"), program.clone()];
            sh_argv.extend(argv.iter().skip(1).cloned());
            spawn(c"/bin/sh", &sh_argv)
        }
        other => other,
    }
    .map_err(|e| spawn_error(e, launch))?;
    // The child's ends are closed here, so the daemon sees end of output when it is done.
    drop((stdin_read, out_write, err_write));
    let child = Child {
        process: AsyncProcess::new(process).map_err(StartError::Other)?,
        exit: std::sync::OnceLock::new(),
    };
    Ok(Started {
        stdin: stdin_write
            .map(pipe::Sender::from_owned_fd_unchecked)
            .transpose()
            .map_err(StartError::Other)?,
        stdout: OutputPipe::new(out_read),
        stderr: OutputPipe::new(err_read),
        child,
    })
}

fn spawn_error(e: SpawnError, launch: &Launch<'_>) -> StartError {
    match e.stage {
        Stage::Exec => StartError::Program {
            program: describe(launch.command),
            source: e.source,
        },
        Stage::Workdir => StartError::Workdir {
            dir: crate::names::escaped(launch.workdir).to_string(),
            reason: match e.source.kind() {
                io::ErrorKind::NotFound => "does not exist".to_owned(),
                _ => format!("cannot be entered: {}", e.source),
            },
        },
        Stage::Cgroup => StartError::Cgroup(e.source),
        Stage::Setup | Stage::Stdio => StartError::Other(e.source),
    }
}

/// The program as configured, for messages.
pub fn describe(command: &Command) -> String {
    match command {
        Command::Run(argv) => format!("{:?}", argv[0]),
        Command::Shell(_) => "/bin/sh".to_owned(),
    }
}

/// The arguments, and the program's path: `/bin/sh -c SCRIPT`, or the argv with its
/// first word looked up on `PATH` (the job's, else the daemon's) unless it has a `/`.
fn argv_and_program(launch: &Launch<'_>) -> Result<(Vec<CString>, CString), StartError> {
    let words: Vec<&OsStr> = match launch.command {
        Command::Run(argv) => argv.iter().map(OsStr::new).collect(),
        Command::Shell(script) => vec!["/bin/sh".as_ref(), "-c".as_ref(), script.as_ref()],
    };
    let argv = words
        .iter()
        .map(|w| CString::new(w.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Other(e.into()))?;
    let name = Path::new(words[0]);
    let program = if name.as_os_str().as_bytes().contains(&b'/') {
        name.to_path_buf()
    } else if let Some(found) = launch.found {
        found.to_path_buf()
    } else {
        find_on_path(name, &search_path(launch.env), launch.workdir).map_err(|source| {
            StartError::Program {
                program: describe(launch.command),
                source,
            }
        })?
    };
    let program =
        CString::new(program.into_os_string().into_vec()).map_err(|e| StartError::Other(e.into()))?;
    Ok((argv, program))
}

/// The `PATH` a program is looked up on: the job's, else the daemon's, else glibc's default.
pub(super) fn search_path(env: &BTreeMap<String, OsString>) -> OsString {
    env.get("PATH")
        .cloned()
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| DEFAULT_PATH.into())
}

/// The first executable file called `name` in the directories of `path` (relative
/// ones taken from `workdir`, as `execvp` would after the job's `chdir`).
fn find_on_path(name: &Path, path: &OsStr, workdir: &Path) -> io::Result<PathBuf> {
    let mut denied = false;
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = Path::new(OsStr::from_bytes(if dir.is_empty() { b"." } else { dir }));
        let candidate = workdir.join(dir).join(name);
        match std::fs::metadata(&candidate) {
            Ok(m) if is_executable(&m) => return Ok(candidate),
            Ok(m) if m.is_file() => denied = true,
            _ => {}
        }
    }
    Err(match denied {
        true => io::Error::from(io::ErrorKind::PermissionDenied),
        false => io::Error::new(io::ErrorKind::NotFound, "not found on PATH"),
    })
}

/// Whether `path` is a file a lookup on `PATH` takes (a regular file with an execute bit).
pub(super) fn is_program(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| is_executable(&m))
}

fn is_executable(m: &std::fs::Metadata) -> bool {
    m.is_file() && m.permissions().mode() & 0o111 != 0
}

/// The daemon's environment without systemd's variables, as `KEY=value`: read once
/// (the daemon never changes its environment).
static DAEMON_ENV: std::sync::LazyLock<Vec<(OsString, CString)>> =
    std::sync::LazyLock::new(|| daemon_environment(std::env::vars_os()));

fn daemon_environment(vars: impl Iterator<Item = (OsString, OsString)>) -> Vec<(OsString, CString)> {
    vars.filter(|(k, _)| !SYSTEMD_VARIABLES.iter().any(|s| k == s))
        .filter_map(|(k, v)| Some((k.clone(), pair(k, &v).ok()?)))
        .collect()
}

/// `KEY=value`.
fn pair(key: impl Into<OsString>, value: &OsStr) -> io::Result<CString> {
    let mut pair = key.into().into_vec();
    pair.push(b'=');
    pair.extend_from_slice(value.as_bytes());
    CString::new(pair).map_err(io::Error::other)
}

/// A job's variables as `KEY=value` (its own; the daemon's are in `daemon`).
fn job_environment(extra: &BTreeMap<String, OsString>) -> io::Result<Vec<CString>> {
    extra.iter().map(|(k, v)| pair(k.as_str(), v)).collect()
}

/// The whole environment: the daemon's variables that the job does not set, then
/// the job's own.
fn environment<'a>(
    daemon: &'a [(OsString, CString)],
    extra: &BTreeMap<String, OsString>,
    own: &'a [CString],
) -> Vec<&'a CStr> {
    daemon
        .iter()
        .filter(|(k, _)| k.to_str().is_none_or(|k| !extra.contains_key(k)))
        .map(|(_, pair)| pair.as_c_str())
        .chain(own.iter().map(CString::as_c_str))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_path_in_order_and_relative_entries_from_the_workdir() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        for (dir, mode) in [(&a, 0o644), (&b, 0o755)] {
            std::fs::write(dir.join("tool"), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(dir.join("tool"), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let path = OsString::from(format!("{}:{}", a.display(), b.display()));
        assert_eq!(
            find_on_path("tool".as_ref(), &path, "/".as_ref()).unwrap(),
            b.join("tool")
        );
        assert_eq!(
            find_on_path("tool".as_ref(), "b".as_ref(), tmp.path()).unwrap(),
            b.join("tool")
        );
        let e = find_on_path("tool".as_ref(), a.as_os_str(), "/".as_ref()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let e = find_on_path("nothing".as_ref(), &path, "/".as_ref()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn systemd_variables_stay_with_the_daemon_and_job_variables_win() {
        let mut extra = BTreeMap::new();
        extra.insert("HOME".to_owned(), OsString::from("/job/home"));
        let daemon = [
            ("HOME", "/root"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("LANG", "C"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let daemon = daemon_environment(daemon.into_iter());
        let own = job_environment(&extra).unwrap();
        let env = environment(&daemon, &extra, &own);
        let env: Vec<&[u8]> = env.iter().map(|e| e.to_bytes()).collect();
        assert_eq!(env, [&b"LANG=C"[..], b"HOME=/job/home"]);
    }
}
