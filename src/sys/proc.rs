//! Processes and users: ids, signals, the open-files limit (the daemon's own and
//! its jobs'), group lookup.

use std::ffi::CString;
use std::io;

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The id of the calling thread (`gettid`, asked once per thread).
pub fn tid() -> u32 {
    thread_local! {
        // SAFETY: gettid has no preconditions and cannot fail.
        static TID: u32 = unsafe { libc::gettid() as u32 };
    }
    TID.with(|tid| *tid)
}

/// The real user id of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Sends `signal` to process `pid`; false when it is gone (or not ours).
pub fn kill(pid: u32, signal: i32) -> bool {
    // SAFETY: kill only sends a signal; a pid that is gone just fails with ESRCH.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// Sends `signal` to every process of group `pgid`; false when none is left.
pub fn kill_group(pgid: u32, signal: i32) -> bool {
    // SAFETY: killpg only sends a signal; an empty group just fails with ESRCH.
    unsafe { libc::killpg(pgid as libc::pid_t, signal) == 0 }
}

/// A process held by a pidfd: a signal sent through it reaches that process or
/// nobody, even once its pid has gone to another process.
pub struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    /// Opens a pidfd for process `pid` (`pidfd_open`).
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and touches no memory.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, owned here once.
        Ok(Pidfd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Sends `signal` to the process (`pidfd_send_signal`); false when it has been
    /// reaped (a zombie not reaped yet still takes it).
    pub fn signal(&self, signal: i32) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid pidfd; no siginfo (null) and no flags.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        sent == 0
    }
}

/// Clock ticks since boot (`CLOCK_BOOTTIME` in `/proc/PID/stat`'s unit: a
/// process's start time there is this, read when it started).
pub fn boot_ticks() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct passed; CLOCK_BOOTTIME always exists
    // on Linux. sysconf has no preconditions.
    let (hz, ok) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as u64,
            libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) == 0,
        )
    };
    if !ok {
        return 0;
    }
    let nanos = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    nanos / (1_000_000_000 / hz)
}

/// The machine's RAM in bytes (`sysinfo(2)`: readable where `/proc/meminfo` is hidden).
pub fn total_memory() -> Option<u64> {
    // SAFETY: sysinfo is plain data; all zeroes is a valid value, and sysinfo fills it.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo only writes the struct passed.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    Some(info.totalram as u64 * info.mem_unit.max(1) as u64)
}

/// Hands the allocator's free memory back to the kernel (glibc's `malloc_trim`):
/// after a large transient structure is freed (a watch setup's walk, a stat pass),
/// glibc keeps the freed pages in its arenas, and the resident size would stay at
/// the peak. Does nothing on other C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the
    // kernel; it takes the arenas' locks and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The open-files limit: (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Sets the soft open-files limit (at most the hard one).
pub fn set_nofile_soft(soft: u64) -> io::Result<()> {
    let (_, hard) = nofile_limit()?;
    let limit = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct passed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The largest buffer offered to `getgrnam_r` for one group's entry (its members).
const MAX_GROUP_BUFFER: usize = 4 << 20;

/// The gid of the group called `name`, or `None` when no such group exists.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the name contains a NUL byte"))?;
    let mut size = 16 * 1024;
    loop {
        // SAFETY: `libc::group` is a C struct of integers and raw pointers, for
        // which all-zero bytes (null pointers) are a valid value; getgrnam_r fills it.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; size];
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `cname` is NUL-terminated; `group`, `buf` (of `buf.len()` bytes) and
        // `result` are live, correctly sized storage owned here for the whole call.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => return Ok(None),
            0 => return Ok(Some(group.gr_gid)),
            libc::ERANGE if size < MAX_GROUP_BUFFER => size *= 4,
            // getgrnam_r(3): these too may mean that the group was not found.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            rc => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

/// Makes this process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`): a job's grandchild that escapes its process group and
/// outlives its parent becomes our child instead of init's.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reaps child `pid` if it has exited (`waitpid(pid, WNOHANG)`); true when it was.
pub fn reap(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid writes only `status`; a pid that is not our child just fails.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) == pid as libc::pid_t }
}

#[cfg(test)]
mod tests {
    #[test]
    fn total_memory_agrees_with_proc_meminfo() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        assert_eq!(super::total_memory(), Some(kib * 1024));
    }

    #[test]
    fn root_exists_and_a_made_up_group_does_not() {
        assert_eq!(super::group_id("root").unwrap(), Some(0));
        assert_eq!(super::group_id("no-such-group-xyz").unwrap(), None);
        assert!(super::group_id("a\0b").is_err());
    }
}
