//! Mapping a request path to a file under the site root, refusing anything that
//! could reach outside it: `..` in any spelling (percent-encoded, mixed case,
//! backslashes, double-encoded), symlinks resolving outside the root, and hidden
//! files and folders unless allowed.
//!
//! Whatever is served is proven beneath the root by the opens themselves, with no
//! window between a check and an open, whatever renames race with the lookup:
//! - a path without symlinks is opened in one `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` relative to the root's descriptor;
//! - a path with symlinks (or a kernel without `openat2`) is walked a component at a
//!   time from the root's descriptor with `O_NOFOLLOW`: each symlink is opened and
//!   read through its own descriptor and its target spliced into the rest of the
//!   walk; `..` goes back to the directory the walk came from, never above the root;
//!   an absolute target is followed only if it names the root by its real path.

use crate::sys;
use percent_encoding::percent_decode_str;
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The most symlinks one lookup follows (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// What a request path opened to.
#[derive(Debug)]
pub enum Opened {
    /// A regular file under the root, opened for reading.
    File {
        /// The open file.
        file: File,
        /// Its path: the root joined with the names the lookup went through.
        real: PathBuf,
        /// Whether the lookup crossed no symlink (only such answers are cached).
        direct: bool,
    },
    /// A directory requested without its trailing slash: redirect here.
    Redirect(String),
    /// Nothing servable (missing, hidden, outside the root, a directory without
    /// index.html, a file requested with a trailing slash).
    NotFound,
    /// A path no honest client sends (traversal, backslashes, NUL, double encoding).
    BadRequest,
}

/// Opens what `raw` (the request path, still percent-encoded) names under `root`
/// (canonical). With `hidden`, components starting with `.` are allowed.
pub fn open(root: &Path, raw: &str, hidden: bool) -> Opened {
    let (decoded, mut names) = match checked(raw, hidden) {
        Ok(ok) => ok,
        Err(refusal) => return refusal,
    };
    // The root is opened afresh each time: a site generator may have replaced it.
    // (Plain open(2): on a kernel without openat2 the walk below still works.)
    let Ok(root_dir) = open_root(root) else {
        return Opened::NotFound;
    };
    let slash = decoded.ends_with('/');
    match lookup(&root_dir, root, &names, hidden) {
        Some(End::File { file, names, direct }) if !slash => Opened::File {
            real: real_path(root, &names),
            file,
            direct,
        },
        Some(End::Dir) if !slash => Opened::Redirect(redirect_to(raw)),
        Some(End::Dir) => {
            names.push("index.html".into());
            match lookup(&root_dir, root, &names, hidden) {
                Some(End::File { file, names, direct }) => Opened::File {
                    real: real_path(root, &names),
                    file,
                    direct,
                },
                _ => Opened::NotFound,
            }
        }
        _ => Opened::NotFound,
    }
}

/// The metadata of what `raw` names (`index.html` for a directory request) under
/// `root`, reached without crossing a symlink (`RESOLVE_NO_SYMLINKS`, from `/`:
/// `root` is canonical and `..` is refused, so the walk stays beneath it): the check
/// that a cached answer's path still leads to its file the way it did. `None` when
/// refused or missing. Without openat2 (an old kernel, or a systemd unit with
/// `RestrictSUIDSGID=`, whose filter answers it `ENOSYS`), the path is walked a
/// component at a time with `O_NOFOLLOW` instead. `None` too, without a look, when
/// the path lies on a mount that may stop answering
/// ([`crate::mountinfo::on_remote_mount`]): the walk runs on the runtime's thread.
pub fn direct_metadata(root: &Path, raw: &str, hidden: bool) -> Option<std::fs::Metadata> {
    let (decoded, names) = checked(raw, hidden).ok()?;
    let mut path = real_path(root, &names);
    if decoded.ends_with('/') {
        path.push("index.html");
    }
    if crate::mountinfo::on_remote_mount(&path) {
        return None;
    }
    let resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    match sys::openat2(None, path.as_os_str(), libc::O_PATH, resolve) {
        Ok(file) => file.metadata().ok(),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => direct_walk(&path),
        Err(_) => None,
    }
}

/// The metadata of absolute `path`, reached from `/` one component at a time without
/// following a symlink (`None` at the first one).
fn direct_walk(path: &Path) -> Option<std::fs::Metadata> {
    let mut node = open_root(Path::new("/")).ok()?;
    for name in path.components().skip(1) {
        node = sys::openat(node.as_fd(), name.as_os_str(), libc::O_PATH | libc::O_NOFOLLOW).ok()?;
        if node.metadata().ok()?.file_type().is_symlink() {
            return None;
        }
    }
    node.metadata().ok()
}

fn open_root(root: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(root)
}

fn real_path(root: &Path, names: &[OsString]) -> PathBuf {
    let mut path = root.to_owned();
    path.extend(names);
    path
}

/// Where a lookup ended.
enum End {
    /// A regular file, open for reading, the names of its real path below the root,
    /// and whether no symlink was crossed.
    File {
        file: File,
        names: Vec<OsString>,
        direct: bool,
    },
    /// A directory.
    Dir,
}

/// Looks `names` up under the root: in one `openat2` when no symlink is on the way,
/// else by [`walk`]. `None` for anything not servable.
fn lookup(root_dir: &File, root: &Path, names: &[OsString], hidden: bool) -> Option<End> {
    let rel: PathBuf = if names.is_empty() {
        PathBuf::from(".")
    } else {
        names.iter().collect()
    };
    // O_NONBLOCK: opening a named pipe must not wait for a writer (it is then refused
    // as not a regular file); O_NOCTTY: a terminal never becomes ours.
    let flags = libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK;
    let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    match sys::openat2(Some(root_dir.as_fd()), rel.as_os_str(), flags, resolve) {
        Ok(file) => {
            let meta = file.metadata().ok()?;
            if meta.is_dir() {
                Some(End::Dir)
            } else if meta.is_file() {
                Some(End::File {
                    file,
                    names: names.to_vec(),
                    direct: true,
                })
            } else {
                None
            }
        }
        // A symlink on the way (ELOOP), or no openat2: walk it.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOSYS | libc::EAGAIN)) => {
            walk(root_dir, root, names, hidden)
        }
        Err(_) => None,
    }
}

/// Walks `names` from the root's descriptor a component at a time, never following a
/// symlink by name: see the module's documentation.
fn walk(root_dir: &File, root: &Path, names: &[OsString], hidden: bool) -> Option<End> {
    let mut dirs: Vec<File> = vec![root_dir.try_clone().ok()?];
    let mut real: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = names.iter().cloned().collect();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        match name.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                real.pop()?; // at the root: an escape
                dirs.pop();
                continue;
            }
            [b'.', ..] if !hidden => return None,
            _ => {}
        }
        let dir = dirs.last().expect("the root stays on the stack");
        let node = sys::openat(dir.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW).ok()?;
        let meta = node.metadata().ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            let target = PathBuf::from(sys::read_link_fd(node.as_fd()).ok()?);
            let target = if target.is_absolute() {
                // Only a link naming the root by its real path stays inside; it restarts there.
                let below = target.strip_prefix(root).ok()?.to_owned();
                dirs.truncate(1);
                real.clear();
                below
            } else {
                target
            };
            for c in target.components().rev() {
                pending.push_front(c.as_os_str().to_owned());
            }
            continue;
        }
        real.push(name.clone());
        if meta.is_dir() {
            dirs.push(node);
            continue;
        }
        if !pending.is_empty() || !meta.is_file() {
            return None; // a file in the middle of the path, or not a regular file
        }
        return open_same(dir, &name, &meta).map(|file| End::File {
            file,
            names: real,
            direct: links == 0,
        });
    }
    Some(End::Dir)
}

/// Opens `name` in `dir` for reading, if it is still the file `meta` describes.
fn open_same(dir: &File, name: &OsStr, meta: &std::fs::Metadata) -> Option<File> {
    let flags = libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW;
    let file = sys::openat(dir.as_fd(), name, flags).ok()?;
    let now = file.metadata().ok()?;
    (now.dev() == meta.dev() && now.ino() == meta.ino()).then_some(file)
}

/// The decoded path and its segments, or why it is refused: `.`/`..` segments are
/// bad requests, hidden ones not found (unless `hidden`).
fn checked(raw: &str, hidden: bool) -> Result<(String, Vec<OsString>), Opened> {
    let decoded = decode(raw).ok_or(Opened::BadRequest)?;
    let mut names = Vec::new();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err(Opened::BadRequest);
        }
        if segment.starts_with('.') && !hidden {
            return Err(Opened::NotFound);
        }
        names.push(segment.into());
    }
    Ok((decoded, names))
}

/// The slash form of a directory path, with one leading slash: `//host` in a
/// `Location` would send the browser to another site.
fn redirect_to(raw: &str) -> String {
    format!("/{}/", raw.trim_start_matches('/'))
}

/// Percent-decodes once; `None` for anything that is not a plain UTF-8 path. (Also
/// how LiveReload reads the page a browser reports, so it names files alike.)
pub(super) fn decode(raw: &str) -> Option<String> {
    if !raw.starts_with('/') || raw.contains('\\') {
        return None;
    }
    let decoded = percent_decode_str(raw).decode_utf8().ok()?.into_owned();
    if decoded.contains(['\\', '\0']) {
        return None;
    }
    // What is still encoded after one decoding was encoded twice: no honest client does that.
    let lower = decoded.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00", "%25"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return None;
    }
    Some(decoded)
}

#[cfg(test)]
mod tests;
