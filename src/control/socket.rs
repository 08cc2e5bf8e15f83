//! Binding the control socket safely: refuse when a live daemon answers on it,
//! replace only a stale socket (never another kind of file), apply the mode and
//! group before accepting, and remove the file on exit.

use crate::config::ControlConfig;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the control socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A daemon already answers on the socket.
    #[error("another execlibd is already running on {}", crate::names::escaped(path))]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the path.
    #[error(
        "{} exists and is not a socket; refusing to replace it",
        crate::names::escaped(path)
    )]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket's directory may not hold it (see [`super::runtime_dir`]).
    #[error(transparent)]
    Directory(#[from] super::runtime_dir::DirError),
    /// An I/O step failed.
    #[error("cannot {action} {}: {source}", crate::names::escaped(path))]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// The socket file; dropping it removes the file if it is still the one we bound.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds the control socket described by `config`.
pub fn bind(config: &ControlConfig) -> Result<(tokio::net::UnixListener, SocketFile), SocketError> {
    let path = &config.socket;
    let io_err = |action, source| SocketError::Io {
        action,
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        super::runtime_dir::prepare(parent)?;
    }
    clear_stale(path)?;
    // Bind with owner-only permissions, then widen to the configured mode: the socket is
    // never more open than asked, even for an instant. Nothing else creates files yet.
    let old = crate::sys::umask(0o177);
    let bound = std::os::unix::net::UnixListener::bind(path);
    crate::sys::umask(old);
    let listener = bound.map_err(|e| io_err("bind", e))?;
    let file = SocketFile {
        ino: std::fs::symlink_metadata(path)
            .map_err(|e| io_err("inspect", e))?
            .ino(),
        path: path.clone(),
    };
    // The group was looked up (and refused when unknown) when the config was validated.
    if let Some(gid) = config.group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| io_err("change the group of", e))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.mode))
        .map_err(|e| io_err("set the mode of", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("configure", e))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| io_err("register", e))?;
    Ok((listener, file))
}

/// Removes a socket file nobody answers on; refuses a live socket or a non-socket.
fn clear_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                action: "inspect",
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse {
            path: path.to_owned(),
        });
    }
    tracing::info!(socket = %crate::names::escaped(path), "replacing a stale control socket");
    std::fs::remove_file(path).map_err(|source| SocketError::Io {
        action: "remove the stale socket",
        path: path.to_owned(),
        source,
    })
}
