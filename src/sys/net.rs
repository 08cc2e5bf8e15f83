//! Sockets: the peer's credentials, peeking at what waits, the listen backlog,
//! the listening socket systemd passes (`LISTEN_FDS`), and `sendfile` from a file
//! to a socket.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};

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

/// How much of what was written to connected socket `fd` its peer has not read yet
/// (`SIOCOUTQ`; on a Unix socket, the kernel's accounting of the queued buffers, so
/// 0 exactly when everything written has been read; on TCP, the bytes not yet sent
/// or not yet acknowledged).
pub fn unread_by_peer(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (the same request as TIOCOUTQ) writes one int into `queued`,
    // a live c_int; a bad fd just fails.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(queued.max(0) as usize)
}

/// Sends up to `count` bytes of `file`, from byte `offset`, to socket `out`, in the
/// kernel (`sendfile(2)`: no copy through user space); returns how many were sent,
/// `Ok(0)` at the file's end. `out` non-blocking gives `WouldBlock` when its buffer
/// is full. The file's own position is not used or moved.
pub fn sendfile(out: BorrowedFd<'_>, file: BorrowedFd<'_>, offset: u64, count: usize) -> io::Result<usize> {
    let mut off =
        libc::off64_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: sendfile64 reads and updates only `off`, a live off64_t; the kernel
    // moves the bytes itself, and a bad descriptor just fails.
    let n = unsafe { libc::sendfile64(out.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
    match n {
        n if n >= 0 => Ok(n as usize),
        _ => Err(io::Error::last_os_error()),
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

/// The first socket systemd passed this process (`LISTEN_FDS`, `LISTEN_PID` checked),
/// if it is a listening TCP socket; taken once for the life of the process (later
/// calls return the same one). `Err` says why the descriptor cannot be used.
pub fn systemd_listener() -> Result<Option<&'static std::net::TcpListener>, String> {
    static TAKEN: std::sync::OnceLock<Result<Option<std::net::TcpListener>, String>> =
        std::sync::OnceLock::new();
    let taken = TAKEN.get_or_init(|| {
        let Some(fd) = sd_notify::listen_fds().ok().and_then(|mut fds| fds.next()) else {
            return Ok(None);
        };
        if !is_listening_tcp(fd) {
            return Err(format!(
                "descriptor {fd} from LISTEN_FDS is not a listening TCP socket"
            ));
        }
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID checked) for
        // it to own; it was checked to be a listening TCP socket; the OnceLock takes it once.
        Ok(Some(unsafe { std::net::TcpListener::from_raw_fd(fd) }))
    });
    taken.as_ref().map(Option::as_ref).map_err(Clone::clone)
}

/// Whether `fd` is an open, listening stream socket of the IPv4 or IPv6 family.
fn is_listening_tcp(fd: RawFd) -> bool {
    let int_opt = |level, name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`; a bad fd just fails.
        let rc =
            unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut libc::c_int).cast(), &mut len) };
        (rc == 0).then_some(value)
    };
    let family = int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN);
    int_opt(libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
        && matches!(family, Some(libc::AF_INET | libc::AF_INET6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn unread_by_peer_is_zero_once_the_peer_has_read() {
        let (mut ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(unread_by_peer(ours.as_fd()).unwrap(), 0);
        ours.write_all(b"{\"keepalive\":true}\n").unwrap();
        assert!(unread_by_peer(ours.as_fd()).unwrap() > 0, "written, not read");
        let mut buf = [0u8; 64];
        let n = theirs.read(&mut buf).unwrap();
        assert_eq!(n, 19);
        assert_eq!(unread_by_peer(ours.as_fd()).unwrap(), 0, "read");
    }
}
