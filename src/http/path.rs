//! Mapping a request path to a file under the site root, refusing anything that
//! could reach outside it: `..` in any spelling (percent-encoded, mixed case,
//! backslashes, double-encoded), symlinks resolving outside the root, and hidden
//! files and folders unless allowed.

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
    let Some(decoded) = decode(raw) else {
        return Resolved::BadRequest;
    };
    let mut candidate = root.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Resolved::BadRequest;
        }
        if segment.starts_with('.') && !hidden {
            return Resolved::NotFound;
        }
        candidate.push(segment);
    }
    // Symlinks are resolved, and the result must still lie under the root and not be hidden.
    let Some(real) = inside(root, &candidate, hidden) else {
        return Resolved::NotFound;
    };
    if real.is_dir() {
        if !decoded.ends_with('/') {
            return Resolved::Redirect(format!("{raw}/"));
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
