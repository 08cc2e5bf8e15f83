//! Starting a job's process without `fork`: `clone(CLONE_VM | CLONE_VFORK)` runs a
//! short child routine on its own small stack in the daemon's address space (as
//! glibc's `posix_spawn` does), so no page table is copied and a start costs the
//! same whatever the daemon's memory. The routine applies what `posix_spawn` cannot
//! (the open-files limit, the move into the job's cgroup) and then `execve`s; the
//! daemon's thread waits, suspended, until it has.
//!
//! Everything the child needs (paths, argv, environment, descriptors) is prepared
//! here before the clone; the child only makes system calls: no allocation, no
//! lock, no panic. Signals are blocked around the clone so no handler of the daemon
//! runs in the child; the child resets every disposition to its default and
//! unblocks all signals right before `execve`.
//!
//! The clone also returns the child's pidfd (`CLONE_PIDFD`: no `pidfd_open` after
//! it), and the child makes its standard descriptors blocking, so the daemon can
//! make its pipes non-blocking at once ([`pipe`]) for its own ends: a job's start
//! costs the daemon no `fcntl` or `fstat`.

use std::ffi::{CStr, CString, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

/// The child routine's stack: it makes a handful of system calls.
const CHILD_STACK: usize = 64 * 1024;

thread_local! {
    /// Each thread's child stack, made once: a 64 KiB allocation per job (zeroed,
    /// and its free consolidating the allocator's heap) was a tenth of the daemon's
    /// own work per job in a burst. The child uses it only while this thread is
    /// suspended in the clone (`CLONE_VFORK`), so one per thread is enough.
    static CHILD_STACKS: std::cell::Cell<Option<Box<[u128]>>> = const { std::cell::Cell::new(None) };
}

/// One past the highest signal number (glibc's `_NSIG`).
const NSIG: c_int = 65;

/// What to start.
pub struct Spec<'a> {
    /// The program: an absolute path, or one relative to `workdir`.
    pub program: &'a CStr,
    /// Its arguments, `argv[0]` first.
    pub argv: &'a [CString],
    /// Its whole environment, as `KEY=value`.
    pub envp: &'a [&'a CStr],
    /// Its working directory.
    pub workdir: &'a CStr,
    /// Its standard input, output and error.
    pub stdio: [BorrowedFd<'a>; 3],
    /// Its soft open-files limit (at most the hard one); `None`: the daemon's.
    pub nofile_soft: Option<u64>,
    /// An open `cgroup.procs` of the cgroup to run in: the child writes "0" to it
    /// (moving itself) before it executes anything.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
}

/// The step at which the child failed, before the program ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its process group, or its open-files limit.
    Setup,
    /// Moving into its cgroup.
    Cgroup,
    /// Entering its working directory.
    Workdir,
    /// Its standard descriptors.
    Stdio,
    /// Executing the program.
    Exec,
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{stage:?}: {source}")]
pub struct SpawnError {
    /// Where it failed.
    pub stage: Stage,
    /// The system's error.
    pub source: io::Error,
}

impl SpawnError {
    fn os(stage: Stage) -> Self {
        SpawnError {
            stage,
            source: io::Error::last_os_error(),
        }
    }
}

/// A started process: our child until it is reaped with [`Process::try_wait`].
#[derive(Debug)]
pub struct Process {
    /// Its pid, which is also its process group's id.
    pub pid: u32,
    /// A pidfd for it: readable once it has exited.
    pidfd: OwnedFd,
}

impl AsRawFd for Process {
    fn as_raw_fd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }
}

/// A [`Process`] whose exit the tokio reactor watches (through its pidfd).
pub struct AsyncProcess(tokio::io::unix::AsyncFd<Process>);

impl AsyncProcess {
    /// Registers `process` with the current tokio runtime. On failure the process is
    /// killed and reaped (it must not run unsupervised).
    pub fn new(process: Process) -> io::Result<Self> {
        // SAFETY: the pidfd is owned by `process`, a private field never replaced, so
        // it stays open and the same for as long as the AsyncFd owns `process`.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(process, tokio::io::Interest::READABLE)
        };
        fd.map(AsyncProcess).map_err(|failed| {
            let (process, error) = failed.into_parts();
            let pid = process.pid as libc::pid_t;
            let mut status = 0;
            // SAFETY: `pid` is our unreaped child (we own its pidfd), so it is still
            // that process; waitpid writes only `status`.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            error
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.get_ref().pid
    }

    /// Waits until it has exited, without reaping it: until it is reaped it stays a
    /// zombie holding its pid, so its process group's id cannot be reused by another
    /// process meanwhile (signals to the group are safe). Cancel-safe.
    pub async fn exited(&self) -> io::Result<()> {
        // The pidfd becomes readable when the process exits; the readiness is kept
        // (not cleared) for [`AsyncProcess::wait`].
        self.0.readable().await.map(|_| ())
    }

    /// Waits for it to exit and reaps it. Cancel-safe; after it returned `Ok` once,
    /// later calls fail (the process is reaped).
    pub async fn wait(&self) -> io::Result<Exit> {
        loop {
            let mut ready = self.0.readable().await?;
            if let Some(exit) = self.0.get_ref().try_wait()? {
                return Ok(exit);
            }
            ready.clear_ready();
        }
    }
}

/// How a reaped process ended and what it used.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// The raw wait status (`std::process::ExitStatus::from_raw`).
    pub status: i32,
    /// User plus system CPU time of it and its reaped descendants, in µs.
    pub cpu_usec: u64,
    /// Its largest resident set (or a reaped descendant's), in bytes.
    pub max_rss: u64,
}

/// What the child routine reads, and where it reports a failure.
#[repr(C)]
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    workdir: *const libc::c_char,
    stdio: [RawFd; 3],
    nofile_soft: u64,
    set_nofile: bool,
    cgroup_procs: RawFd,
    /// Cloned sharing the daemon's descriptor table (`CLONE_FILES`): the child
    /// takes a table of its own holding only the kept low descriptors
    /// ([`super::low_fds`]) before it changes any.
    own_table: bool,
    /// Set by the child when it fails: the stage (1 + its index) and errno.
    failed_stage: i32,
    failed_errno: i32,
}

/// Starts `spec` in its own process group. Returns once the program runs (or the
/// child failed, reaped here, with the stage and error).
pub fn spawn(spec: &Spec<'_>) -> Result<Process, SpawnError> {
    let argv = null_terminated(spec.argv);
    let envp = null_terminated(spec.envp);
    let mut args = ChildArgs {
        program: spec.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        workdir: spec.workdir.as_ptr(),
        stdio: spec.stdio.map(|fd| fd.as_raw_fd()),
        nofile_soft: spec.nofile_soft.unwrap_or(0),
        set_nofile: spec.nofile_soft.is_some(),
        cgroup_procs: spec.cgroup_procs.map_or(-1, |fd| fd.as_raw_fd()),
        own_table: false,
        failed_stage: 0,
        failed_errno: 0,
    };
    // The job's standard descriptors among the kept low ones, when a group is free:
    // the child then never holds the daemon's others (see `low_fds`). Given back
    // once the clone has returned (the child has run its program, or is gone).
    let group = super::low_fds::Group::take(args.stdio);
    if let Some(group) = &group {
        args.stdio = group.fds();
        args.own_table = true;
    }
    let mut stack = CHILD_STACKS
        .take()
        .unwrap_or_else(|| vec![0u128; CHILD_STACK / 16].into_boxed_slice());
    let cloned = clone_vfork(&mut args, &mut stack);
    drop(group);
    CHILD_STACKS.set(Some(stack));
    let (pid, pidfd) = cloned?;
    // SAFETY: the child has exec'd or exited (CLONE_VFORK), so nothing writes `args`
    // any more; the volatile reads see what it stored.
    let (failed_stage, failed_errno) = unsafe {
        (
            ptr::read_volatile(&args.failed_stage),
            ptr::read_volatile(&args.failed_errno),
        )
    };
    if failed_stage != 0 {
        drop(pidfd);
        let mut status = 0;
        // SAFETY: `pid` is our child (exited with 127); waitpid writes only `status`.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let stage = [
            Stage::Setup,
            Stage::Cgroup,
            Stage::Workdir,
            Stage::Stdio,
            Stage::Exec,
        ][(failed_stage - 1) as usize];
        return Err(SpawnError {
            stage,
            source: io::Error::from_raw_os_error(failed_errno),
        });
    }
    Ok(Process {
        pid: pid as u32,
        pidfd,
    })
}

/// A pipe's (read, write) ends, both close-on-exec and non-blocking (the daemon's
/// ends are read and written through its reactor; [`spawn`] makes the job's
/// standard descriptors blocking in the child).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array passed, which lives here.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The pointers of `strings`, then a null pointer (argv and envp's layout).
fn null_terminated(strings: &[impl AsRef<CStr>]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ref().as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// Clones a child running [`child_main`] on `stack` with all signals blocked; the
/// calling thread resumes once the child has exec'd or exited. Returns its pid and
/// a pidfd for it.
fn clone_vfork(args: &mut ChildArgs, stack: &mut [u128]) -> Result<(libc::pid_t, OwnedFd), SpawnError> {
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only write the sets
    // passed, which live on this stack for the whole call.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let top = stack.as_mut_ptr_range().end.cast::<c_void>();
    let mut pidfd: c_int = -1;
    let shared = if args.own_table { libc::CLONE_FILES } else { 0 };
    // SAFETY: `top` is the 16-byte-aligned end of a live stack of CHILD_STACK bytes
    // that the child alone uses; `args` and everything it points to (argv, envp,
    // paths in `spec`) outlive the child's use of them, since CLONE_VFORK suspends
    // this thread until the child has exec'd or exited; child_main only makes
    // async-signal-safe system calls (see its comment). With CLONE_PIDFD the kernel
    // writes the new pidfd (close-on-exec) to `pidfd`, the parent_tid argument. With
    // CLONE_FILES (`args.own_table`) the child shares the daemon's descriptor table
    // until its close_range: before that it opens, closes and duplicates nothing.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | shared | libc::SIGCHLD,
            (args as *mut ChildArgs).cast::<c_void>(),
            &mut pidfd as *mut c_int,
            ptr::null_mut::<c_void>(),
            ptr::null_mut::<libc::pid_t>(),
        )
    };
    let error = SpawnError::os(Stage::Setup);
    // SAFETY: restores the mask saved above; only reads `old`.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
    if pid == -1 {
        return Err(error);
    }
    if pidfd < 0 {
        // A kernel older than 5.2 ignores CLONE_PIDFD: the child (exec'd or exited by
        // now) cannot be waited for as jobs are, so it is ended here.
        let mut status = 0;
        // SAFETY: `pid` is our unreaped child, so the pid cannot have been reused;
        // waitpid writes only `status`.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
        return Err(SpawnError {
            stage: Stage::Setup,
            source: io::Error::from_raw_os_error(libc::ENOSYS),
        });
    }
    // SAFETY: the clone succeeded and set `pidfd`, a new descriptor nothing else owns.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// The child: runs in the daemon's memory on its own stack, with every signal
/// blocked. Only system calls, on data prepared by the parent; a failure is written
/// to `args` (the parent reads it after the child is gone) and ends it with 127.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    let args = arg.cast::<ChildArgs>();
    // SAFETY: `arg` is the ChildArgs the parent passed and keeps alive (CLONE_VFORK).
    let stage = unsafe { child_steps(&*args) };
    if let Err(stage) = stage {
        // SAFETY: errno is read right after the failing call; the writes go to the
        // parent's ChildArgs, read only after this child is gone; _exit never returns.
        unsafe {
            let errno = *libc::__errno_location();
            ptr::write_volatile(&mut (*args).failed_errno, errno);
            ptr::write_volatile(&mut (*args).failed_stage, stage as i32 + 1);
            libc::_exit(127)
        }
    }
    0
}

/// The child's steps up to `execve`; returns only on failure, with its stage.
///
/// # Safety
/// Only in the child of [`clone_vfork`], with `args` from [`spawn`].
unsafe fn child_steps(args: &ChildArgs) -> Result<(), Stage> {
    // SAFETY: plain system calls on values and NUL-terminated strings prepared by the
    // parent; sigaction and sigprocmask get zeroed (empty) plain-data structs.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..NSIG {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::sigaction(signal, &default, ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            return Err(Stage::Setup);
        }
        if args.set_nofile {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur = args.nofile_soft.min(limit.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
        if args.cgroup_procs >= 0 && libc::write(args.cgroup_procs, b"0".as_ptr().cast(), 1) != 1 {
            return Err(Stage::Cgroup);
        }
        if libc::chdir(args.workdir) != 0 {
            return Err(Stage::Workdir);
        }
        // A table of its own before any descriptor changes: only the kept low ones
        // (without the kernel support, a copy of the whole table, as without a group).
        if args.own_table {
            let low = super::low_fds::LOW as libc::c_uint;
            let unshared = libc::syscall(
                libc::SYS_close_range,
                low,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            );
            if unshared != 0 && libc::unshare(libc::CLONE_FILES) != 0 {
                return Err(Stage::Stdio);
            }
        }
        for (target, &fd) in args.stdio.iter().enumerate() {
            let target = target as c_int;
            let ok = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            // A job's standard descriptors are blocking, whatever the daemon's ends are.
            let flags = libc::fcntl(target, libc::F_GETFL);
            let blocking = flags != -1
                && (flags & libc::O_NONBLOCK == 0
                    || libc::fcntl(target, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0);
            if !ok || !blocking {
                return Err(Stage::Stdio);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
        libc::execve(args.program, args.argv, args.envp);
        Err(Stage::Exec)
    }
}

impl Process {
    /// Reaps it if it has exited (`wait4` with `WNOHANG`): its status and usage.
    pub fn try_wait(&self) -> io::Result<Option<Exit>> {
        let mut status = 0;
        // SAFETY: rusage is plain data that wait4 fills.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only `status` and `usage`, both live here.
        let rc = unsafe { libc::wait4(self.pid as libc::pid_t, &mut status, libc::WNOHANG, &mut usage) };
        match rc {
            0 => Ok(None),
            -1 => Err(io::Error::last_os_error()),
            _ => {
                let usec = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
                Ok(Some(Exit {
                    status,
                    cpu_usec: usec(usage.ru_utime) + usec(usage.ru_stime),
                    max_rss: usage.ru_maxrss as u64 * 1024,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    fn run(program: &str, argv: &[&str], workdir: &str) -> Result<(Exit, String), SpawnError> {
        let argv: Vec<CString> = argv.iter().map(|a| c(a)).collect();
        let (greeting, path) = (c("GREETING=hello"), c("PATH=/usr/bin:/bin"));
        let envp = [greeting.as_c_str(), path.as_c_str()];
        let (mut reader, writer) = std::io::pipe().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let (program, workdir) = (c(program), c(workdir));
        let process = spawn(&Spec {
            program: &program,
            argv: &argv,
            envp: &envp,
            workdir: &workdir,
            stdio: [null.as_fd(), writer.as_fd(), writer.as_fd()],
            nofile_soft: Some(77),
            cgroup_procs: None,
        })?;
        drop(writer);
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        let exit = loop {
            if let Some(exit) = process.try_wait().unwrap() {
                break exit;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        Ok((exit, out))
    }

    use std::os::fd::AsFd;

    #[test]
    fn a_start_in_a_kept_group_passes_on_none_of_the_daemons_other_descriptors() {
        use super::super::low_fds;
        let fds = || {
            let (exit, out) = run("/bin/sh", &["sh", "-c", "ls /proc/self/fd"], "/").unwrap();
            assert_eq!(exit.status, 0, "{out}");
            out.lines().map(|l| l.parse().unwrap()).collect::<Vec<i32>>()
        };
        // Without close-on-exec, above the kept ones: a copied table passes it on.
        let file = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: duplicates an open descriptor to a free number above the kept ones.
        let leaky = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, low_fds::LOW + 44) };
        assert!(leaky >= low_fds::LOW);
        assert_eq!(low_fds::groups(), 0);
        assert!(fds().contains(&leaky), "nothing kept: the table is copied");
        low_fds::reserve();
        if low_fds::groups() == 0 {
            // SAFETY: asks for close_range on a range with nothing open.
            let refused = unsafe { libc::syscall(libc::SYS_close_range, u32::MAX, u32::MAX, 0) } != 0;
            assert!(refused, "groups kept where close_range works");
            eprintln!("SKIP: close_range is refused here");
            return;
        }
        let got = fds();
        assert!(!got.contains(&leaky), "{got:?}");
        assert!([0, 1, 2].iter().all(|fd| got.contains(fd)), "{got:?}");
        assert!(got.iter().all(|&fd| fd < low_fds::LOW), "only low ones: {got:?}");
        // SAFETY: closes the duplicate made above, owned by nothing else.
        unsafe { libc::close(leaky) };
    }

    #[test]
    fn the_child_gets_its_environment_directory_limit_group_and_default_signals() {
        let script = "echo $GREETING; pwd; ulimit -n; [ $(ps -o pgid= $$) = $$ ] && echo own-group; \
                      grep SigIgn /proc/self/status; grep SigBlk /proc/self/status; exit 7";
        let (exit, out) = run("/bin/sh", &["sh", "-c", script], "/tmp").unwrap();
        assert_eq!(exit.status >> 8, 7, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..4], ["hello", "/tmp", "77", "own-group"], "{out}");
        // Standard signals (1 to 31; SIGPIPE is ignored by Rust programs) are all at
        // their defaults; glibc keeps 32 and 33 for itself.
        let ignored = lines.iter().find_map(|l| l.strip_prefix("SigIgn:\t")).unwrap();
        let ignored = u64::from_str_radix(ignored, 16).unwrap();
        assert_eq!(ignored & 0x7fff_ffff, 0, "{out}");
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
    }

    #[test]
    fn the_jobs_ends_of_non_blocking_pipes_are_blocking_in_the_job() {
        let (reader, writer) = pipe().unwrap();
        let mut reader = std::fs::File::from(reader);
        let (stdin, _feeder) = pipe().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let argv = [
            c("sh"),
            c("-c"),
            c("grep -h flags /proc/self/fdinfo/0 /proc/self/fdinfo/1 /proc/self/fdinfo/2"),
        ];
        let path = c("PATH=/usr/bin:/bin");
        let process = spawn(&Spec {
            program: &c("/bin/sh"),
            argv: &argv,
            envp: &[path.as_c_str()],
            workdir: &c("/"),
            stdio: [stdin.as_fd(), writer.as_fd(), writer.as_fd()],
            nofile_soft: None,
            cgroup_procs: None,
        })
        .unwrap();
        drop((writer, null));
        let mut out = String::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut buf = [0u8; 4096];
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "no end of output: {out}");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        while process.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let flags: Vec<u32> = out
            .lines()
            .map(|l| u32::from_str_radix(l.trim_start_matches("flags:").trim(), 8).unwrap())
            .collect();
        assert_eq!(flags.len(), 3, "{out}");
        for f in flags {
            assert_eq!(f & libc::O_NONBLOCK as u32, 0, "{out}");
        }
    }

    #[test]
    fn failures_say_at_which_step() {
        let e = run("/bin/sh", &["sh"], "/nonexistent-dir").unwrap_err();
        assert_eq!(
            (e.stage, e.source.kind()),
            (Stage::Workdir, io::ErrorKind::NotFound)
        );
        let e = run("/nonexistent/prog", &["prog"], "/").unwrap_err();
        assert_eq!((e.stage, e.source.kind()), (Stage::Exec, io::ErrorKind::NotFound));
    }
}
