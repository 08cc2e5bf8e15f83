//! The directory that holds the control socket must be ours: whoever can rename
//! entries in it can move the socket aside and answer in the daemon's place. A
//! missing directory is created (0700 when not root, as `XDG_RUNTIME_DIR` rules
//! require; 0755 as root, so a socket group can reach it). Then the socket's own
//! directory must be owned by this user (or root) and writable by nobody else, and
//! every directory above it, as written and as resolved, owned by this user or
//! root and writable by nobody else unless sticky (`/tmp`).

use crate::names::escaped;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a directory may not hold the control socket.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// It (or one above it) could be written by another user.
    #[error("refusing to put the control socket in {}: {reason}", escaped(path))]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// Why it is not safe.
        reason: String,
    },
    /// An I/O step failed.
    #[error("cannot {action} {}: {source}", escaped(path))]
    Io {
        /// What was being done.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Creates `dir` if missing and checks that it and its ancestors may hold the socket.
pub fn prepare(dir: &Path) -> Result<(), DirError> {
    let euid = crate::sys::euid();
    if std::fs::symlink_metadata(dir).is_err() {
        let mode = if euid == 0 { 0o755 } else { 0o700 };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|source| DirError::Io {
                action: "create the directory of",
                path: dir.to_owned(),
                source,
            })?;
    }
    let real = dir.canonicalize().map_err(|source| DirError::Io {
        action: "resolve",
        path: dir.to_owned(),
        source,
    })?;
    check(&real, euid, true)?;
    for chain in [dir, real.as_path()] {
        for ancestor in chain.ancestors().skip(1) {
            check(ancestor, euid, false)?;
        }
    }
    Ok(())
}

/// Checks one directory (a symlink as written is skipped: the directory holding it
/// is checked, and its target is in the resolved chain).
fn check(dir: &Path, euid: u32, own: bool) -> Result<(), DirError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|source| DirError::Io {
        action: "inspect",
        path: dir.to_owned(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let unsafe_dir = |reason: String| DirError::Unsafe {
        path: dir.to_owned(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by this user (uid {euid}) or root",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    let shared = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if shared && (own || !sticky) {
        return Err(unsafe_dir(format!(
            "it is writable by {} (mode {mode:04o})",
            if mode & 0o002 != 0 { "others" } else { "its group" }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_directory_is_created_private_and_a_shared_one_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("execlib/site");
        prepare(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        let expected = if crate::sys::euid() == 0 { 0o755 } else { 0o700 };
        assert_eq!(mode, expected);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&dir).unwrap_err().to_string();
        assert!(err.contains("writable by others (mode 0777)"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(
            prepare(&dir).is_err(),
            "sticky is not enough for the socket's own directory"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let parent = base.path().join("execlib");
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = prepare(&dir).unwrap_err().to_string();
        assert!(err.contains("writable by its group"), "{err}");
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        prepare(&dir).expect("a sticky ancestor, as /tmp, is fine");
    }
}
