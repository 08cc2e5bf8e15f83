//! Files: opens relative to a directory descriptor (`openat`, `openat2`),
//! symlinks read through their descriptor, file-system types, FIFOs, the umask.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

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

/// The type of the file system `path` is on (`statfs`'s `f_type`: `0x6969` NFS, ...).
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let path = c_string(path.as_os_str().as_bytes())?;
    // SAFETY: statfs is plain data; all zeroes is a valid value for it to overwrite.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `fs` a live statfs struct.
    if unsafe { libc::statfs(path.as_ptr(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i64::from(fs.f_type as u32)) // magic numbers are 32 bits; `f_type` may be signed
}

/// The type of the file system `fd`'s file is on (`fstatfs`'s `f_type`).
pub fn fs_type_of(fd: BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: statfs is plain data; all zeroes is a valid value for it to overwrite.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `fs` a live statfs struct.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i64::from(fs.f_type as u32)) // magic numbers are 32 bits; `f_type` may be signed
}

/// Sets the process's file creation mask; returns the previous one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask only swaps the process's mask; it cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Creates a named pipe at `path` (tests: a file that must never block a reader).
#[cfg(test)]
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    let path = c_string(path.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid C string; mkfifo only creates a file there.
    if unsafe { libc::mkfifo(path.as_ptr(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether some process has the regular file at `path` open for writing, asked with a
/// read lease taken and given back at once (fcntl(2) `F_SETLEASE`, which fails with
/// `EAGAIN` while the file is open for writing anywhere, on a local file system).
/// `None` when it cannot be told: the file is not the daemon's user's and it lacks
/// `CAP_LEASE` (`EACCES`), its file system has no leases, it is gone or is not a
/// regular file. The path is first opened as a handle only (`O_PATH`, not following
/// a last symlink), which opens nothing: a device put in its place (or behind a
/// parent directory swapped for a symlink) is never opened; only a regular file is
/// then opened for reading, through that handle, without blocking and without
/// touching its access time where allowed. A writer opening the file within the
/// microseconds the lease stands waits for its give-back (one opening without
/// blocking gets `EWOULDBLOCK`); the kernel's notice of that is sent as `SIGWINCH`,
/// whose default (the daemon's) is to ignore it, not as `SIGIO`, which would end the
/// daemon.
pub fn open_for_writing(path: &Path) -> Option<bool> {
    /// fcntl(2)'s `F_SETSIG` (asm-generic/fcntl.h, as on x86-64 and arm64), which the
    /// libc crate does not export.
    const F_SETSIG: libc::c_int = 10;
    use std::os::unix::fs::OpenOptionsExt;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    if !handle.metadata().ok()?.is_file() {
        return None;
    }
    let by_handle = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let open = |noatime: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | noatime)
            .open(&by_handle)
    };
    let file = open(libc::O_NOATIME).or_else(|_| open(0)).ok()?;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl with integer arguments on a descriptor `file` owns and keeps open.
    let taken = unsafe {
        libc::fcntl(fd, F_SETSIG, libc::SIGWINCH) == 0
            && libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0
    };
    if taken {
        // SAFETY: as above; gives the lease back.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Some(false);
    }
    (io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)).then_some(true)
}

/// Whether the mount table of the process's namespace changed since the last call
/// on `mountinfo` (an open `/proc/self/mountinfo`), or since it was opened: it
/// raises `POLLPRI` once per change (proc(5)). Never waits.
pub fn mount_table_changed(mountinfo: BorrowedFd<'_>) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: mountinfo.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one live pollfd passed; timeout 0 never waits.
    if unsafe { libc::poll(&mut poll, 1, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(poll.revents & (libc::POLLPRI | libc::POLLERR) != 0)
}

/// `/proc/self/mountinfo`, open and registered with the tokio reactor for
/// `EPOLLPRI`: the kernel raises it on this descriptor whenever the mount table of
/// the process's namespace changes (proc(5)).
pub struct MountTable(tokio::io::unix::AsyncFd<File>);

impl MountTable {
    /// Opens and registers it (needs a tokio runtime).
    pub fn open() -> io::Result<Self> {
        let file = File::open("/proc/self/mountinfo")?;
        // SAFETY: the descriptor is owned by `file`, which the AsyncFd owns and never
        // replaces, so it stays open and the same for the AsyncFd's whole life.
        let fd =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(file, tokio::io::Interest::PRIORITY) };
        fd.map(MountTable).map_err(io::Error::from)
    }

    /// Waits until the mount table changed since the last call (or since it was
    /// opened), then returns its current text.
    pub async fn changed(&self) -> io::Result<String> {
        let mut ready = self.0.ready(tokio::io::Interest::PRIORITY).await?;
        ready.clear_ready();
        // A fresh open reads the whole current table (the kept descriptor only signals).
        std::fs::read_to_string("/proc/self/mountinfo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn run(args: &[&str]) {
        let status = std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
    }

    #[test]
    fn a_mount_made_or_gone_is_seen_at_once() {
        if !super::super::test_as_root("to mount a tmpfs") {
            return;
        }
        let table = File::open("/proc/self/mountinfo").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().to_str().unwrap();
        let _ = mount_table_changed(table.as_fd()).unwrap();
        run(&["mount", "-t", "tmpfs", "tmpfs", at]);
        let made = mount_table_changed(table.as_fd()).unwrap();
        run(&["umount", at]);
        assert!(made, "the mount was seen");
        assert!(
            mount_table_changed(table.as_fd()).unwrap(),
            "the unmount was seen"
        );
    }
}
