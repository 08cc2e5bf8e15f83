//! Mapping a request path to a file under the site root, refusing anything that
//! could reach outside it: `..` in any spelling (percent-encoded, mixed case,
//! backslashes, double-encoded), symlinks resolving outside the root, and hidden
//! files and folders unless allowed.
//!
//! [`open`] opens the file with `openat2(RESOLVE_BENEATH)` relative to the root, so
//! the kernel itself refuses any resolution that leaves it, atomically (no window
//! between a check and the open); [`resolve`] is the portable fallback, by
//! canonical paths, for kernels without `openat2`.

use percent_encoding::percent_decode_str;
use std::path::{Path, PathBuf};

/// What a request path resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A regular file under the root (canonical path).
    File(PathBuf),
    /// A directory requested without its trailing slash: redirect here.
    Redirect(String),
    /// Nothing servable (missing, hidden, outside the root, a directory without index.html).
    NotFound,
    /// A path no honest client sends (traversal, backslashes, NUL, double encoding).
    BadRequest,
}

/// Resolves `raw` (the request path, still percent-encoded) under `root`, which must
/// be canonical. With `hidden`, components starting with `.` are allowed.
pub fn resolve(root: &Path, raw: &str, hidden: bool) -> Resolved {
    let (decoded, rel) = match checked(raw, hidden) {
        Ok(ok) => ok,
        Err(refusal) => return refusal,
    };
    let candidate = root.join(rel);
    // Symlinks are resolved, and the result must still lie under the root and not be hidden.
    let Some(real) = inside(root, &candidate, hidden) else {
        return Resolved::NotFound;
    };
    if real.is_dir() {
        if !decoded.ends_with('/') {
            return Resolved::Redirect(redirect_to(raw));
        }
        return match inside(root, &real.join("index.html"), hidden) {
            Some(index) if index.is_file() => Resolved::File(index),
            _ => Resolved::NotFound,
        };
    }
    if real.is_file() {
        Resolved::File(real)
    } else {
        Resolved::NotFound
    }
}

/// What a request path opened to.
#[derive(Debug)]
pub enum Opened {
    /// A regular file under the root, opened for reading, with its real path.
    File(std::fs::File, PathBuf),
    /// A directory requested without its trailing slash: redirect here.
    Redirect(String),
    /// Nothing servable.
    NotFound,
    /// A path no honest client sends.
    BadRequest,
}

/// Opens what `raw` names under `root` (canonical), as [`resolve`] would resolve it.
pub fn open(root: &Path, raw: &str, hidden: bool) -> Opened {
    let (decoded, rel) = match checked(raw, hidden) {
        Ok(ok) => ok,
        Err(refusal) => return from_resolved(refusal),
    };
    // The root is opened afresh each time: a site generator may have replaced it.
    let Ok(dir) = std::fs::File::open(root) else {
        return Opened::NotFound;
    };
    let file = match beneath(&dir, &rel) {
        Beneath::Opened(file) => file,
        Beneath::Refused => return Opened::NotFound,
        Beneath::Unsupported => return from_resolved(resolve(root, raw, hidden)),
    };
    let Some((file, real)) = visible(root, file, hidden) else {
        return Opened::NotFound;
    };
    match file.metadata() {
        Ok(meta) if meta.is_dir() => {
            if !decoded.ends_with('/') {
                return Opened::Redirect(redirect_to(raw));
            }
            match beneath(&dir, &rel.join("index.html")) {
                Beneath::Opened(index) => match visible(root, index, hidden) {
                    Some((index, real)) if index.metadata().is_ok_and(|m| m.is_file()) => {
                        Opened::File(index, real)
                    }
                    _ => Opened::NotFound,
                },
                _ => Opened::NotFound,
            }
        }
        Ok(meta) if meta.is_file() => Opened::File(file, real),
        _ => Opened::NotFound,
    }
}

/// `openat2(dir, rel)` with `flags` and `resolve` (see openat2(2)); no `dir`: the
/// working directory (for an absolute `rel`).
fn openat2(
    dir: Option<&std::fs::File>,
    rel: &Path,
    flags: i32,
    resolve: u64,
) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let c_rel = std::ffi::CString::new(rel.as_os_str().as_bytes())?;
    // SAFETY: open_how is plain data; zeroed is a valid value, then the fields are set.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    // SAFETY: the pointers refer to live values of the sizes passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd()),
            c_rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd as i32) })
}

/// The path request `raw` names under `root` as written, with `index.html` for a
/// directory request (`None` for a refused path). A lookup that resolved to exactly
/// this path crossed no symlink: only such answers are cached.
pub fn requested(root: &Path, raw: &str, hidden: bool) -> Option<PathBuf> {
    let (decoded, rel) = checked(raw, hidden).ok()?;
    let path = root.join(rel);
    Some(if decoded.ends_with('/') {
        path.join("index.html")
    } else {
        path
    })
}

/// The metadata of what [`requested`] names, reached without crossing a symlink
/// (`RESOLVE_NO_SYMLINKS`, from `/`: `root` is canonical, and `..` is refused, so
/// the walk stays beneath it): the check that a cached answer's path still leads
/// to its file the way it did. `None` when refused, missing, or without openat2.
pub fn direct_metadata(root: &Path, raw: &str, hidden: bool) -> Option<std::fs::Metadata> {
    let path = requested(root, raw, hidden)?;
    let resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let file = openat2(None, &path, libc::O_PATH | libc::O_CLOEXEC, resolve).ok()?;
    file.metadata().ok()
}

fn from_resolved(resolved: Resolved) -> Opened {
    match resolved {
        Resolved::File(path) => match open_nonblocking(&path) {
            Ok(file) => Opened::File(file, path),
            Err(_) => Opened::NotFound,
        },
        Resolved::Redirect(to) => Opened::Redirect(to),
        Resolved::NotFound => Opened::NotFound,
        Resolved::BadRequest => Opened::BadRequest,
    }
}

fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

enum Beneath {
    Opened(std::fs::File),
    Refused,
    /// Decide by canonical paths instead.
    Unsupported,
}

/// `openat2(dir, rel, O_RDONLY, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: symlinks are
/// followed only while they stay under `dir`.
fn beneath(dir: &std::fs::File, rel: &Path) -> Beneath {
    // O_NONBLOCK: opening a named pipe must not wait for a writer (it is then refused
    // as not a regular file); it changes nothing for regular files.
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    let error = match openat2(
        Some(dir),
        rel,
        flags,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    ) {
        Ok(file) => return Beneath::Opened(file),
        Err(e) => e,
    };
    match error.raw_os_error() {
        // No openat2; or EXDEV: an escape, or any absolute symlink (refused even when it
        // points inside the root): the canonical-path check tells which.
        Some(libc::ENOSYS | libc::EXDEV) => Beneath::Unsupported,
        _ => Beneath::Refused,
    }
}

/// The file and its real path, unless (without `hidden`) a component of its real path
/// below the root is hidden: a symlink may point at a hidden file.
fn visible(root: &Path, file: std::fs::File, hidden: bool) -> Option<(std::fs::File, PathBuf)> {
    use std::os::fd::AsRawFd;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    let rel = real.strip_prefix(root).ok()?;
    let ok = hidden
        || !rel
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
    ok.then_some((file, real))
}

/// The decoded path and its segments as a relative path (`.` for the root), or why
/// it is refused: `.`/`..` segments are bad requests, hidden ones not found (unless `hidden`).
fn checked(raw: &str, hidden: bool) -> Result<(String, PathBuf), Resolved> {
    let decoded = decode(raw).ok_or(Resolved::BadRequest)?;
    let mut rel = PathBuf::from(".");
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err(Resolved::BadRequest);
        }
        if segment.starts_with('.') && !hidden {
            return Err(Resolved::NotFound);
        }
        rel.push(segment);
    }
    Ok((decoded, rel))
}

/// The slash form of a directory path, with one leading slash: `//host` in a
/// `Location` would send the browser to another site.
fn redirect_to(raw: &str) -> String {
    format!("/{}/", raw.trim_start_matches('/'))
}

/// Percent-decodes once; `None` for anything that is not a plain UTF-8 path.
fn decode(raw: &str) -> Option<String> {
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

/// The canonical form of `path` if it exists, lies under `root` and (unless `hidden`)
/// has no hidden component below the root.
fn inside(root: &Path, path: &Path, hidden: bool) -> Option<PathBuf> {
    let real = path.canonicalize().ok()?;
    let rel = real.strip_prefix(root).ok()?;
    let visible = hidden
        || !rel
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
    visible.then_some(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("docs/.hidden")).unwrap();
        std::fs::write(root.join("index.html"), "home").unwrap();
        std::fs::write(root.join("docs/index.html"), "docs").unwrap();
        std::fs::write(root.join("docs/a b.html"), "spaced").unwrap();
        std::fs::write(root.join(".env"), "secret").unwrap();
        std::fs::write(root.join("docs/.hidden/x"), "secret").unwrap();
        std::fs::write(dir.path().join("outside.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.txt"), root.join("escape.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("index.html"), root.join("alias.html")).unwrap();
        std::os::unix::fs::symlink(root.join(".env"), root.join("env.txt")).unwrap();
        let root = root.canonicalize().unwrap();
        (dir, root)
    }

    /// `open`'s answer in `resolve`'s terms, to check both against the same cases.
    fn opened(root: &Path, raw: &str, hidden: bool) -> Resolved {
        match open(root, raw, hidden) {
            Opened::File(_, path) => Resolved::File(path),
            Opened::Redirect(to) => Resolved::Redirect(to),
            Opened::NotFound => Resolved::NotFound,
            Opened::BadRequest => Resolved::BadRequest,
        }
    }

    #[test]
    fn open_agrees_with_resolve() {
        let (_dir, root) = site();
        for raw in [
            "/",
            "/docs/",
            "/docs",
            "/docs/a%20b.html",
            "/alias.html",
            "/missing",
            "/escape.txt",
            "/.env",
            "/env.txt",
            "/docs/.hidden/x",
            "/../outside.txt",
            "/%2e%2e/outside.txt",
            "/..%2foutside.txt",
        ] {
            for hidden in [false, true] {
                assert_eq!(
                    opened(&root, raw, hidden),
                    resolve(&root, raw, hidden),
                    "{raw} hidden={hidden}"
                );
            }
        }
    }

    #[test]
    fn files_directories_and_redirects() {
        let (_dir, root) = site();
        assert_eq!(
            resolve(&root, "/", false),
            Resolved::File(root.join("index.html"))
        );
        assert_eq!(
            resolve(&root, "/docs/", false),
            Resolved::File(root.join("docs/index.html"))
        );
        assert_eq!(
            resolve(&root, "/docs", false),
            Resolved::Redirect("/docs/".into())
        );
        assert_eq!(
            resolve(&root, "/docs/a%20b.html", false),
            Resolved::File(root.join("docs/a b.html"))
        );
        assert_eq!(
            resolve(&root, "/alias.html", false),
            Resolved::File(root.join("index.html"))
        );
        assert_eq!(resolve(&root, "/missing", false), Resolved::NotFound);
        assert_eq!(
            resolve(&root, "//docs", false),
            Resolved::Redirect("/docs/".into()),
            "never //host"
        );
    }

    #[test]
    fn a_named_pipe_is_not_served_and_does_not_block() {
        let (_dir, root) = site();
        let fifo = std::ffi::CString::new(root.join("pipe").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo only creates a file at the given path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(matches!(open(&root, "/pipe", false), Opened::NotFound));
    }

    #[test]
    fn traversal_in_every_spelling_is_refused() {
        let (_dir, root) = site();
        for attack in [
            "/../outside.txt",
            "/docs/../../outside.txt",
            "/%2e%2e/outside.txt",
            "/%2E%2E/outside.txt",
            "/%2e./outside.txt",
            "/.%2e/outside.txt",
            "/..%2foutside.txt",
            "/..%2Foutside.txt",
            "/..\\outside.txt",
            "/..%5coutside.txt",
            "/%252e%252e/outside.txt",
            "/%25%32%65%25%32%65/outside.txt",
            "/docs/%00",
            "/%c0%ae%c0%ae/outside.txt",
            "relative/path",
        ] {
            let got = resolve(&root, attack, false);
            assert!(
                matches!(got, Resolved::BadRequest | Resolved::NotFound),
                "{attack}: {got:?}"
            );
        }
    }

    #[test]
    fn symlinks_out_of_the_root_and_hidden_files_are_not_found() {
        let (_dir, root) = site();
        assert_eq!(resolve(&root, "/escape.txt", false), Resolved::NotFound);
        assert_eq!(resolve(&root, "/escape.txt", true), Resolved::NotFound);
        assert_eq!(resolve(&root, "/.env", false), Resolved::NotFound);
        assert_eq!(
            resolve(&root, "/env.txt", false),
            Resolved::NotFound,
            "a symlink to a hidden file"
        );
        assert_eq!(resolve(&root, "/docs/.hidden/x", false), Resolved::NotFound);
        assert_eq!(resolve(&root, "/.env", true), Resolved::File(root.join(".env")));
    }
}
