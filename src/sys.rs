//! Small safe wrappers over the system calls the rest of the crate needs and
//! std does not offer: `openat`/`openat2` relative to a directory descriptor,
//! reading a symlink through a descriptor, and the peer credentials of a Unix
//! socket. Each wrapper turns a `-1` into the `errno` as an [`io::Error`].

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Wraps a descriptor a system call just returned (or its error).
fn owned(fd: libc::c_long) -> io::Result<File> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd as RawFd) })
}

/// `openat2(dir, path, {flags, resolve})` (see openat2(2)); `dir` `None` is the working
/// directory. `ENOSYS` on kernels before 5.6.
pub fn openat2(dir: Option<BorrowedFd<'_>>, path: &OsStr, flags: i32, resolve: u64) -> io::Result<File> {
    let path = c_string(path.as_bytes())?;
    // SAFETY: open_how is plain data; all zeroes is a valid value, then fields are set.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: `path` is a valid C string and `how` a live open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd()),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(fd)
}

/// `openat(dir, name, flags | O_CLOEXEC)`.
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<File> {
    let name = c_string(name.as_bytes())?;
    // SAFETY: `name` is a valid C string; a bad descriptor only makes the call fail.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    owned(fd as libc::c_long)
}

/// The target of the symlink `fd` was opened on (with `O_PATH | O_NOFOLLOW`):
/// `readlinkat(fd, "")`, so what is read is the link that was opened, not whatever
/// has its name now.
pub fn read_link_fd(fd: BorrowedFd<'_>) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the empty C string is valid and `buf` is writable for its whole length.
    let n = unsafe { libc::readlinkat(fd.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// The credentials (pid, uid, gid) of the process at the other end of a connected
/// Unix socket, as the kernel recorded them at `connect` (`SO_PEERCRED`).
pub fn peer_credentials(socket: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live ucred.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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

/// Copies into `buf` what is waiting to be read on socket `fd`, without consuming
/// it or waiting (`recv(MSG_PEEK | MSG_DONTWAIT)`); `Ok(0)` when nothing is.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        n if n >= 0 => Ok(n as usize),
        _ => match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            e => Err(e),
        },
    }
}

/// `listen(fd, backlog)` again on a listening socket: sets how many connections the
/// kernel queues before `accept` (capped by `net.core.somaxconn`).
pub fn set_backlog(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: listen only changes the socket's queue length; a bad fd just fails.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
