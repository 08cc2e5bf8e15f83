//! Looking a group up by name, so that validation (and so `execlibd --check`)
//! refuses an unknown `[control].group` instead of the daemon failing at start.

use std::ffi::CString;
use std::io;

/// The largest buffer offered to `getgrnam_r` for one group's entry (its members).
const MAX_BUFFER: usize = 4 << 20;

/// The gid of the group called `name`, or `None` when no such group exists.
pub(crate) fn gid(name: &str) -> io::Result<Option<u32>> {
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
            libc::ERANGE if size < MAX_BUFFER => size *= 4,
            // getgrnam_r(3): these too may mean that the group was not found.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            rc => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_exists_and_a_made_up_group_does_not() {
        assert_eq!(super::gid("root").unwrap(), Some(0));
        assert_eq!(super::gid("no-such-group-xyz").unwrap(), None);
        assert!(super::gid("a\0b").is_err());
    }
}
