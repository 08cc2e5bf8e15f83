//! Version-control operations: which paths hold a route's due runs while an
//! operation is at work on its tree (see [`crate::scheduler::hold`]).
//!
//! By default a route's runs wait while git is at work on the work tree that
//! encloses its path: the git directory is found when the listener starts, walking up
//! from the route's path to the first `.git` (a directory, or a `gitdir:` file as in
//! linked worktrees and submodules), and its hold paths are [`GIT_HOLD`] in it. A
//! route's `hold_while` names other paths instead (`[]`: none). Routes with the same
//! paths share one hold. execlib only looks at these paths; it never creates or takes
//! a lock.
//!
//! A `.git` is a local user's input: one may sit in any directory above a route's
//! path that others can write to (a shared, sticky folder). Like git's
//! `safe.directory` rule, a `.git` (and the git directory a `gitdir:` file names) is
//! trusted only when root, the daemon's user or the owner of the route's path owns
//! it; anything else, or a `.git` that is neither a directory nor a regular file (a
//! FIFO, which a plain open would wait on forever), or a symlink (its owner is who
//! placed it, whatever it names), is refused with a warning and the route's runs
//! are not held. A `.git` file is opened without following a symlink and without
//! blocking, and the git directory it names is resolved once.

use crate::config::{HoldWhile, ListenerConfig, RouteConfig};
use crate::names::escaped;
use crate::scheduler::{HoldSpec, Holds, Probe};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// In a git directory, what exists while an operation is at work on the tree:
/// `index.lock` while git writes the work tree and the index (checkout, reset, merge,
/// stash, `am`, each step of a rebase), `HEAD.lock` while it moves HEAD, and the
/// markers of a rebase, merge, cherry-pick or revert in progress (also while one is
/// stopped for the user to resolve conflicts). Not bisect: each of its checkouts is
/// one to build.
pub const GIT_HOLD: &[&str] = &[
    "index.lock",
    "HEAD.lock",
    "rebase-merge",
    "rebase-apply",
    "MERGE_HEAD",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "sequencer",
];

/// The longest `.git` file read (it holds one `gitdir:` line).
const MAX_GITFILE: u64 = 4096;

/// A git work tree and its git directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitTree {
    /// The work tree's top directory.
    pub work_tree: PathBuf,
    /// Its git directory (for a linked worktree or a submodule, the one its `.git`
    /// file names).
    pub git_dir: PathBuf,
}

/// The git work tree enclosing `path` (or its nearest existing ancestor, symlinks
/// resolved, as git sees it), if any. `Err`: the first `.git` above it is not to be
/// trusted (see the module's doc), is neither a directory nor a regular file, or is a
/// `.git` file that names no git directory.
pub fn find_git(path: &Path) -> Result<Option<GitTree>, String> {
    use std::os::unix::fs::MetadataExt;
    let start = path
        .ancestors()
        .find_map(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_else(|| path.to_owned());
    let trust = Trust {
        euid: crate::sys::euid(),
        path_owner: std::fs::metadata(&start).ok().map(|m| m.uid()),
    };
    for dir in start.ancestors() {
        let dot_git = dir.join(".git");
        // The `.git` itself, not what a symlink there names: its owner is who put it there.
        let Ok(meta) = std::fs::symlink_metadata(&dot_git) else {
            continue;
        };
        trust.check(&dot_git, &meta)?;
        let git_dir = match meta.file_type() {
            t if t.is_dir() => dot_git,
            t if t.is_file() => gitfile(&dot_git, &trust)?,
            t => {
                let what = special_kind(t);
                return Err(format!(
                    "{} is a {what}, not a git directory or file",
                    escaped(&dot_git)
                ));
            }
        };
        return Ok(Some(GitTree {
            work_tree: dir.to_owned(),
            git_dir,
        }));
    }
    Ok(None)
}

/// What a `.git` that is neither a directory nor a regular file is, for a message.
fn special_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "symbolic link (not followed)"
    } else if t.is_fifo() {
        "named pipe"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// Whose `.git` is trusted: root's, the daemon's user's, or the route path's owner's.
struct Trust {
    euid: u32,
    path_owner: Option<u32>,
}

impl Trust {
    /// `Err` when `path` (with metadata `meta`) belongs to anyone else.
    fn check(&self, path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let owner = meta.uid();
        if owner == 0 || owner == self.euid || Some(owner) == self.path_owner {
            return Ok(());
        }
        Err(format!(
            "{} belongs to uid {owner}, not to root, to this daemon's user or to the route path's owner: not trusted (as git's safe.directory)",
            escaped(path)
        ))
    }
}

/// The git directory a `.git` file names (`gitdir: PATH`, relative to its directory).
/// The file is opened without following a symlink and without blocking, and must
/// still be a regular file once open (it may have been swapped since it was looked at).
fn gitfile(file: &Path, trust: &Trust) -> Result<PathBuf, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |why: String| format!("{} names no git directory: {why}", escaped(file));
    let mut text = String::new();
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(file)
        .map_err(|e| bad(e.to_string()))?;
    match opened.metadata() {
        Ok(m) if m.is_file() => trust.check(file, &m)?,
        Ok(_) => return Err(bad("not a regular file".to_owned())),
        Err(e) => return Err(bad(e.to_string())),
    }
    opened
        .take(MAX_GITFILE)
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    let target = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("gitdir:"))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no `gitdir:` line".to_owned()))?;
    let dir = file.parent().unwrap_or(Path::new("/"));
    // Resolved once: the hold paths are looked at under this path, so no symlink on
    // the way can later be pointed elsewhere.
    let git_dir = std::fs::canonicalize(dir.join(target)).unwrap_or_else(|_| dir.join(target));
    match std::fs::metadata(&git_dir) {
        Ok(m) if m.is_dir() => trust.check(&git_dir, &m).map(|()| git_dir),
        Ok(_) => Err(bad(format!("{} is not a directory", escaped(&git_dir)))),
        Err(e) => Err(bad(format!("{}: {e}", escaped(&git_dir)))),
    }
}

/// A route's hold paths and what they are, for the log; none: never held.
fn route_paths(route: &RouteConfig) -> Option<(String, Vec<PathBuf>)> {
    match &route.vcs_hold.paths {
        HoldWhile::Paths(paths) if paths.is_empty() => None,
        HoldWhile::Paths(paths) => Some(("hold_while".to_owned(), paths.clone())),
        HoldWhile::Git => match find_git(&route.path) {
            Ok(Some(tree)) => {
                let label = format!("git work tree {}", escaped(&tree.work_tree));
                Some((label, GIT_HOLD.iter().map(|m| tree.git_dir.join(m)).collect()))
            }
            Ok(None) => None,
            Err(e) => {
                warn!(route = %route.name, "{e}: its runs are not held for git operations");
                None
            }
        },
    }
}

/// The holds of a listener's routes, found now (a few `stat`s per route), each
/// logged; routes with the same paths and maximum share one.
pub fn holds(config: &ListenerConfig) -> Holds {
    let mut gates: Vec<(HoldSpec, Vec<usize>)> = Vec::new();
    for (index, route) in config.routes.iter().enumerate() {
        let Some((label, paths)) = route_paths(route) else {
            continue;
        };
        let max = route.vcs_hold.max;
        match gates.iter_mut().find(|(s, _)| s.paths == paths && s.max == max) {
            Some((_, routes)) => routes.push(index),
            None => gates.push((HoldSpec { label, paths, max }, vec![index])),
        }
    }
    for (spec, routes) in &mut gates {
        let names: Vec<&str> = routes.iter().map(|&i| config.routes[i].name.as_str()).collect();
        let word = if names.len() == 1 { "route" } else { "routes" };
        spec.label = format!("{} ({word} {})", spec.label, names.join(", "));
        info!(
            max_ms = spec.max.as_millis() as u64,
            "due runs wait while an operation is at work on {}", spec.label
        );
    }
    Holds {
        gates,
        probe: probe(),
    }
}

/// Whether a path exists, symlinks not followed (a lock may be a dangling symlink,
/// as Mercurial's are). A path that cannot be looked at counts as absent. Asked by
/// the scheduler on the daemon's runtime, so a path on a mount that may not answer
/// (`hold_while` on NFS, a git directory on sshfs) is looked at on a thread of its
/// own, waited for at most [`REMOTE_WAIT`], with at most [`MAX_REMOTE_LOOKS`] such
/// looks unanswered at once: a dead server then counts as "absent" (the runs go
/// ahead) instead of freezing a runtime worker.
pub fn probe() -> Probe {
    Box::new(|path: &Path| match crate::mountinfo::reaches_remote_mount(path) {
        false => identity(path),
        true => remote_identity(path),
    })
}

/// How long a look at a hold path on a mount that may not answer is waited for.
pub const REMOTE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// At most this many looks at hold paths wait on mounts at once; past them a path
/// on such a mount counts as absent at once.
pub const MAX_REMOTE_LOOKS: usize = 4;

static REMOTE_LOOKS: crate::probe::Probes = crate::probe::Probes::new(MAX_REMOTE_LOOKS);

/// The identity (device, inode, change time) of what is at `path`, if anything.
fn identity(path: &Path) -> Option<u128> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    let ctime = meta.ctime() as u128 * 1_000_000_000 + meta.ctime_nsec() as u128;
    Some(((meta.dev() as u128) << 96) ^ ((meta.ino() as u128) << 48) ^ ctime)
}

/// [`identity`] asked on a thread of its own (see [`probe`]), which ends when the
/// file system answers; it is not waited for beyond [`REMOTE_WAIT`].
fn remote_identity(path: &Path) -> Option<u128> {
    let asked = path.to_owned();
    REMOTE_LOOKS
        .ask_blocking(REMOTE_WAIT, move || identity(&asked))
        .unwrap_or_else(|_| {
            unanswered(path);
            None
        })
}

/// Says, at most once a minute, how many looks at hold paths were not answered.
fn unanswered(path: &Path) {
    use std::sync::Mutex;
    static SINCE: Mutex<(Option<std::time::Instant>, u64)> = Mutex::new((None, 0));
    let mut since = SINCE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    since.1 += 1;
    if since
        .0
        .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(60))
    {
        return;
    }
    warn!(
        path = %escaped(path),
        looks = since.1,
        "hold paths on mounts that did not answer within {} ms, or were not asked ({} looks \
         already waited; this one, and others since the last such line): taken as absent",
        REMOTE_WAIT.as_millis(),
        MAX_REMOTE_LOOKS
    );
    *since = (Some(std::time::Instant::now()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, symlinks resolved (as [`find_git`] reports paths).
    fn tmp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap();
        (dir, path)
    }

    #[test]
    fn finds_the_enclosing_work_tree_from_a_subdirectory_or_a_missing_path() {
        let (_dir, top) = tmp();
        std::fs::create_dir_all(top.join(".git")).unwrap();
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        let expected = GitTree {
            work_tree: top.clone(),
            git_dir: top.join(".git"),
        };
        assert_eq!(find_git(&top.join("a/b")).unwrap(), Some(expected.clone()));
        assert_eq!(find_git(&top.join("a/not/yet")).unwrap(), Some(expected));
    }

    #[test]
    fn a_linked_worktree_or_submodule_holds_on_the_git_directory_its_gitfile_names() {
        let (_dir, top) = tmp();
        let own = top.join("main/.git/worktrees/linked");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::create_dir_all(top.join("linked/src")).unwrap();
        let gitfile = "gitdir: ../main/.git/worktrees/linked\n";
        std::fs::write(top.join("linked/.git"), gitfile).unwrap();
        let found = find_git(&top.join("linked/src")).unwrap().unwrap();
        assert_eq!(found.work_tree, top.join("linked"));
        assert_eq!(found.git_dir.canonicalize().unwrap(), own);
        let absolute = format!("gitdir: {}\n", own.display());
        std::fs::write(top.join("linked/.git"), absolute).unwrap();
        assert_eq!(find_git(&top.join("linked")).unwrap().unwrap().git_dir, own);
    }

    #[test]
    fn no_work_tree_and_a_broken_gitfile_are_told_apart() {
        let (_dir, top) = tmp();
        if find_git(&top).unwrap().is_some() {
            return; // the temporary directory lies in a work tree: nothing to test here
        }
        std::fs::write(top.join(".git"), "gitdir: nowhere\n").unwrap();
        let e = find_git(&top).unwrap_err();
        assert!(e.contains("names no git directory"), "{e}");
        std::fs::write(top.join(".git"), "not a gitfile\n").unwrap();
        assert!(find_git(&top).unwrap_err().contains("no `gitdir:` line"));
    }

    /// `find_git` of `path`, or `None` if it has not answered within 5 s.
    fn find_git_within_5s(path: PathBuf) -> Option<Result<Option<GitTree>, String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(find_git(&path)));
        rx.recv_timeout(std::time::Duration::from_secs(5)).ok()
    }

    #[test]
    fn regression_a_named_pipe_called_git_above_a_route_is_refused_at_once() {
        // A local user's `mkfifo .git` in a shared folder above a route's path kept the
        // listener from starting (an open that waited for a writer), and shutdown with it.
        let (_dir, top) = tmp();
        if find_git(&top).unwrap().is_some() {
            return; // the temporary directory lies in a work tree: nothing to test here
        }
        std::fs::create_dir_all(top.join("alice/src")).unwrap();
        crate::sys::mkfifo(&top.join(".git"), 0o666).unwrap();
        let found = find_git_within_5s(top.join("alice/src")).expect("find_git answered");
        let e = found.unwrap_err();
        assert!(e.contains("is a named pipe"), "{e}");
        // A symlink named `.git` is not followed, whatever it names.
        std::fs::remove_file(top.join(".git")).unwrap();
        crate::sys::mkfifo(&top.join("pipe"), 0o666).unwrap();
        std::os::unix::fs::symlink("pipe", top.join(".git")).unwrap();
        let e = find_git_within_5s(top.join("alice/src"))
            .expect("answered")
            .unwrap_err();
        assert!(e.contains("is a symbolic link"), "{e}");
    }

    #[test]
    fn regression_a_git_directory_another_user_owns_is_not_trusted() {
        // Another user's `.git/index.lock` above a route's path held its runs for a minute.
        if !crate::sys::test_as_root("to give a file to another user") {
            return;
        }
        let (_dir, top) = tmp();
        if find_git(&top).unwrap().is_some() {
            return; // the temporary directory lies in a work tree: nothing to test here
        }
        let nobody = 65534;
        std::fs::create_dir_all(top.join("alice/src")).unwrap();
        std::fs::create_dir_all(top.join(".git")).unwrap();
        std::os::unix::fs::chown(top.join(".git"), Some(nobody), Some(nobody)).unwrap();
        let e = find_git(&top.join("alice/src")).unwrap_err();
        assert!(
            e.contains("belongs to uid 65534") && e.contains("not trusted"),
            "{e}"
        );
        // The route path's owner's own work tree is trusted.
        std::os::unix::fs::chown(top.join("alice/src"), Some(nobody), Some(nobody)).unwrap();
        let found = find_git(&top.join("alice/src")).unwrap().expect("a work tree");
        assert_eq!(found.git_dir, top.join(".git"));
        // Nor can another user's symlink lend them a trusted directory: `.git -> .`
        // would make `index.lock` in the shared folder hold the route.
        std::fs::remove_dir(top.join(".git")).unwrap();
        std::os::unix::fs::symlink(".", top.join(".git")).unwrap();
        std::os::unix::fs::lchown(top.join(".git"), Some(nobody), Some(nobody)).unwrap();
        std::os::unix::fs::chown(top.join("alice/src"), Some(0), Some(0)).unwrap();
        assert!(
            find_git(&top.join("alice/src"))
                .unwrap_err()
                .contains("not trusted")
        );
        std::fs::remove_file(top.join(".git")).unwrap();
        // And a `.git` file another user owns is refused before it is read.
        std::fs::create_dir_all(top.join("repo")).unwrap();
        std::fs::write(top.join(".git"), "gitdir: repo\n").unwrap();
        std::os::unix::fs::chown(top.join("alice/src"), Some(0), Some(0)).unwrap();
        std::os::unix::fs::chown(top.join(".git"), Some(nobody), Some(nobody)).unwrap();
        assert!(
            find_git(&top.join("alice/src"))
                .unwrap_err()
                .contains("not trusted")
        );
    }

    #[test]
    fn the_probe_sees_dangling_symlinks_and_not_missing_paths() {
        let (_dir, top) = tmp();
        let lock = top.join("wlock");
        let exists = probe();
        assert!(exists(&lock).is_none());
        std::os::unix::fs::symlink("host:1234", &lock).unwrap();
        let first = exists(&lock).expect("a dangling symlink is there");
        std::fs::remove_file(&lock).unwrap();
        std::fs::write(&lock, "").unwrap();
        assert_ne!(exists(&lock), Some(first), "another file, another identity");
    }

    #[test]
    fn routes_with_the_same_paths_share_one_hold_and_an_empty_hold_while_has_none() {
        let (_dir, top) = tmp();
        std::fs::create_dir_all(top.join(".git")).unwrap();
        let route = |name: &str, path: &str, extra: &str| {
            format!(
                "  [[listener.route]]\n  name = \"{name}\"\n  path = \"{path}\"\n  {extra}\n  shell = \"true\"\n"
            )
        };
        let text = [
            "[[listener]]\nname = \"l\"\n".to_owned(),
            route("a", "src", ""),
            route("b", "src/sub", ""),
            route("off", "src", "hold_while = []"),
            route(
                "tool",
                "src",
                "hold_while = [\"tool.lock\"]\n  max_vcs_hold_ms = 10",
            ),
        ]
        .concat();
        let env = crate::paths::Environment {
            xdg_runtime_dir: Some("/run/user/1000".into()),
            ..Default::default()
        };
        let config = crate::config::Config::parse(&top.join("site.toml"), &text, "site", &env).unwrap();
        let gates = holds(&config.listeners[0]).gates;
        let git = HoldSpec {
            label: format!("git work tree {} (routes a, b)", top.display()),
            paths: GIT_HOLD.iter().map(|m| top.join(".git").join(m)).collect(),
            max: std::time::Duration::from_secs(60),
        };
        let tool = HoldSpec {
            label: "hold_while (route tool)".to_owned(),
            paths: vec![top.join("tool.lock")],
            max: std::time::Duration::from_millis(10),
        };
        assert_eq!(gates, [(git, vec![0, 1]), (tool, vec![3])]);
    }
}
