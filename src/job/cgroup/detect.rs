//! Finding the daemon's delegated cgroup tree: our cgroup from `/proc/self/cgroup`,
//! the cgroup2 mount holding it from `/proc/self/mountinfo`, and whether it is
//! delegated to us (see the parent module).

use super::{SUPERVISOR, Tree};
use crate::mountinfo::Mount;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The extended attributes systemd sets on a delegated cgroup (root, user managers).
const DELEGATE_ATTRIBUTES: [&str; 2] = ["trusted.delegate", "user.delegate"];

/// Why the daemon has no cgroup tree; its `Display` is a sentence for `status` and the log.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// `/proc/self/cgroup` has no `0::` line: no cgroup2 hierarchy was ever mounted.
    #[error("cgroup v1 only: this host has no cgroup2 (unified) hierarchy")]
    V1Only,
    /// No cgroup2 file system is mounted in our mount namespace.
    #[error("no cgroup2 hierarchy is mounted here (no cgroup2 entry in /proc/self/mountinfo)")]
    NotMounted,
    /// Our cgroup is outside every cgroup2 mount we can see.
    #[error("our cgroup {path} is not under any cgroup2 mount visible here")]
    OutsideMount {
        /// Our cgroup, from `/proc/self/cgroup`.
        path: String,
    },
    /// The cgroup2 mount is read-only.
    #[error("{dir}: read-only (ProtectControlGroups=yes?)")]
    ReadOnly {
        /// Our cgroup's directory.
        dir: PathBuf,
    },
    /// Our cgroup is not ours to manage.
    #[error("{dir}: not delegated: {why}")]
    NotDelegated {
        /// Our cgroup's directory.
        dir: PathBuf,
        /// What is missing.
        why: String,
    },
    /// A file needed to find out could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Finds the daemon's delegated cgroup tree.
pub fn detect() -> Result<Tree, Unavailable> {
    let proc_cgroup = read_for_detect(Path::new("/proc/self/cgroup"))?;
    let path = unified_path(&proc_cgroup).ok_or(Unavailable::V1Only)?;
    let mountinfo = read_for_detect(Path::new("/proc/self/mountinfo"))?;
    let mounts = cgroup2_mounts(&mountinfo);
    if mounts.is_empty() {
        return Err(Unavailable::NotMounted);
    }
    let (mount, dir) = locate(&mounts, path).ok_or_else(|| Unavailable::OutsideMount {
        path: path.to_owned(),
    })?;
    if mount.read_only {
        return Err(Unavailable::ReadOnly { dir });
    }
    let euid = crate::sys::euid();
    // A daemon started again inside its own `supervisor` leaf (or placed there by
    // systemd's DelegateSubgroup=supervisor) manages the parent.
    let parent = dir
        .parent()
        .filter(|_| dir.file_name().is_some_and(|n| n == SUPERVISOR));
    let dir = match parent {
        Some(parent) if delegation(parent, euid).is_ok() => parent.to_owned(),
        _ => dir,
    };
    if let Err(why) = delegation(&dir, euid) {
        return Err(Unavailable::NotDelegated { dir, why });
    }
    Tree::at(&dir).map_err(|source| Unavailable::Io { path: dir, source })
}

/// Reads a `/proc` file for [`detect`].
fn read_for_detect(path: &Path) -> Result<String, Unavailable> {
    fs::read_to_string(path).map_err(|source| Unavailable::Io {
        path: path.to_owned(),
        source,
    })
}

/// Whether cgroup `dir` is delegated to a process with effective uid `euid`; else why not.
pub(super) fn delegation(dir: &Path, euid: u32) -> Result<(), String> {
    for name in DELEGATE_ATTRIBUTES {
        if let Ok(Some(value)) = xattr::get(dir, name) {
            if value == b"1" {
                return Ok(());
            }
        }
    }
    if euid == 0 {
        return Err("it has no trusted.delegate or user.delegate attribute set to 1 \
             (Delegate=yes in the unit, systemd 251 or later)"
            .to_owned());
    }
    let owner = |path: &Path| fs::metadata(path).map(|m| m.uid());
    match (owner(dir), owner(&dir.join("cgroup.procs"))) {
        (Ok(d), Ok(p)) if d == euid && p == euid => Ok(()),
        (Ok(d), Ok(p)) => Err(format!(
            "it and its cgroup.procs belong to uid {d} and {p}, not to us (uid {euid}), and it has \
             no user.delegate attribute (Delegate=yes in the unit)"
        )),
        (Err(e), _) | (_, Err(e)) => Err(format!("cannot check its owner: {e}")),
    }
}

/// Our cgroup in the unified hierarchy: the path of `/proc/self/cgroup`'s `0::` line.
pub(super) fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Every cgroup2 mount in `mountinfo`, in order.
pub(super) fn cgroup2_mounts(mountinfo: &str) -> Vec<Mount> {
    crate::mountinfo::parse(mountinfo)
        .into_iter()
        .filter(|m| m.fstype == "cgroup2")
        .collect()
}

/// The mount holding cgroup `path` (the one with the longest matching root) and
/// the cgroup's directory in it.
pub(super) fn locate<'m>(mounts: &'m [Mount], path: &str) -> Option<(&'m Mount, PathBuf)> {
    mounts
        .iter()
        .rev()
        .filter_map(|m| {
            let rest = match m.root.as_str() {
                "/" => path.strip_prefix('/'),
                root => path.strip_prefix(root).and_then(|r| match r {
                    "" => Some(""),
                    r => r.strip_prefix('/'),
                }),
            }?;
            let dir = match rest {
                "" => m.point.clone(),
                rest => m.point.join(rest),
            };
            Some((m, dir))
        })
        // The last of the longest roots in reverse order: the first in the file.
        .max_by_key(|(m, _)| m.root.len())
}
