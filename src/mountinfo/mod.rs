//! The mount table as `/proc/self/mountinfo` lists it (proc(5)): where each file
//! system is mounted, what part of it, its type and whether it is read-only. Read
//! by the watcher (mounts over watched trees, file systems to poll), by the
//! cgroup code (where cgroup2 is mounted) and by jobs ([`reaches_remote_mount`]:
//! whether a start may wait on a network or FUSE file system).

mod reading;

use reading::{with_current, with_remote};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of `mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount's id (unique while it is mounted; a remount keeps it).
    pub id: u64,
    /// The id of the mount it is mounted on (its own for a namespace's root).
    pub parent: u64,
    /// The directory of the file system shown at the mount point (`/` unless a
    /// subtree is bind-mounted), as text.
    pub root: String,
    /// Where it is mounted.
    pub point: PathBuf,
    /// The file system type (`ext4`, `nfs4`, `fuse.sshfs`, `cgroup2`, …).
    pub fstype: String,
    /// Whether the mount is read-only.
    pub read_only: bool,
}

/// Every mount in a `mountinfo` text, in order. A line is `id parent major:minor
/// root point options [optional fields] - fstype source super-options`, with
/// spaces, tabs, newlines and backslashes in paths escaped as octal (`\040`).
/// Malformed lines are skipped.
pub fn parse(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            if dash < 6 {
                return None;
            }
            Some(Mount {
                id: fields[0].parse().ok()?,
                parent: fields[1].parse().ok()?,
                root: String::from_utf8_lossy(&unescape(fields[3])).into_owned(),
                point: PathBuf::from(std::ffi::OsString::from_vec(unescape(fields[4]))),
                fstype: fields.get(dash + 1)?.to_string(),
                read_only: fields[5].split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

/// Whether changes on a file system of type `fstype` (as `mountinfo` names it) can
/// be made where this kernel does not see them: network file systems, and FUSE
/// (sshfs, bindfs of another tree, rclone, …). Local disk types never.
pub fn is_remote(fstype: &str) -> bool {
    const REMOTE: [&str; 16] = [
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "vboxsf",
        "vmhgfs",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gfs2",
        "ocfs2",
        "ncpfs",
        "coda",
    ];
    REMOTE.contains(&fstype) || fstype == "fuse" || fstype.starts_with("fuse.")
}

/// Whether a file system of type `fstype` may stop answering, its calls waiting
/// for ever: the [`is_remote`] ones, and FUSE on a block device (its daemon may
/// die), virtio-fs (its host side), and autofs (a mount point that mounts one of
/// those on first use).
pub fn may_not_answer(fstype: &str) -> bool {
    is_remote(fstype) || matches!(fstype, "fuseblk" | "virtiofs" | "autofs")
}

/// Whether a file system whose `statfs` type (`f_type`, linux/magic.h) is `magic`
/// may stop answering, as [`may_not_answer`] says by name: NFS, SMB/CIFS, FUSE
/// (fuseblk and virtio-fs too), 9p, Ceph, AFS, Coda, NCP, autofs, GFS2, OCFS2,
/// Lustre, VirtualBox and VMware shared folders.
pub fn may_not_answer_type(magic: i64) -> bool {
    const TYPES: [i64; 17] = [
        0x6969,      // NFS
        0x517B,      // SMB
        0xFF53_4D42, // CIFS
        0xFE53_4D42, // SMB2
        0x6573_5546, // FUSE, fuseblk, virtio-fs
        0x0102_1997, // 9p
        0x00C3_6400, // Ceph
        0x5346_414F, // AFS
        0x6B41_4653, // kAFS
        0x7375_7245, // Coda
        0x564C,      // NCP
        0x0187,      // autofs
        0x0116_1970, // GFS2
        0x7461_636F, // OCFS2
        0x0BD0_0BD0, // Lustre
        0x786F_4256, // vboxsf
        0xBACB_ACBC, // vmhgfs
    ];
    TYPES.contains(&magic)
}

/// At most this many answers are kept per reading (one per job's working
/// directory, program and `PATH` entry, in practice a handful).
const REMOTE_ANSWERS: usize = 1024;

/// How many symbolic links [`reaches_remote_mount`] follows in one path (Linux's
/// own limit, past which a lookup fails with `ELOOP`).
const MAX_LINKS: usize = 40;

/// Whether `path` lies on a mount that may stop answering ([`may_not_answer`]:
/// network, FUSE, autofs), by a recent reading of the mount table (see [`reading`]), once the
/// symbolic links on the way are followed. Links are read only where the path is
/// not yet on such a mount, so nothing is asked of one; an answer is reused for a
/// second. False when the table cannot be read.
pub fn reaches_remote_mount(path: &Path) -> bool {
    !remote_mounts_of(path).is_empty()
}

/// The mount points of the mounts that may stop answering which `path` reaches (see
/// [`reaches_remote_mount`]): the one it lies on and those that one is nested
/// in, outermost first; none when it reaches none.
pub fn remote_mounts_of(path: &Path) -> Vec<PathBuf> {
    let (points, known) = with_remote(|r| (r.points.clone(), r.answers.get(path).cloned()));
    if let Some(answer) = known {
        return answer;
    }
    if points.is_empty() {
        return Vec::new(); // no link to read: nothing can reach such a mount
    }
    // Outside the lock: reading links costs system calls.
    let answer: Vec<PathBuf> = reaches(&points, path).into_iter().cloned().collect();
    with_current(|r| {
        if std::sync::Arc::ptr_eq(&r.points, &points) && r.answers.len() < REMOTE_ANSWERS {
            r.answers.insert(path.to_path_buf(), answer.clone());
        }
    });
    answer
}

/// Whether `path`, taken as written (no link followed: for a path whose links
/// are refused anyway), lies on a mount that may stop answering by a recent
/// reading of the mount table: one of their points is it or a folder above it.
pub fn on_remote_mount(path: &Path) -> bool {
    with_remote(|r| r.points.iter().any(|p| path.starts_with(p)))
}

/// Whether a recent reading of the mount table has a mount that may stop answering.
pub fn any_remote_mount() -> bool {
    with_remote(|r| !r.points.is_empty())
}

/// The mount points of the file systems that may not answer, from the mount table.
fn remote_points() -> Option<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    Some(remote_points_in(&parse(&text)))
}

/// The points of `mounts` that may not answer, but for an `autofs` with a mount made
/// on its point over it (systemd's automounts stay under the file system they
/// mounted, which is what lookups meet). Nothing else hides one: an overlay made
/// in place over NFS still reads from it.
fn remote_points_in(mounts: &[Mount]) -> Vec<PathBuf> {
    let hidden = |m: &Mount| {
        m.fstype == "autofs"
            && mounts
                .iter()
                .any(|n| n.parent == m.id && n.id != m.id && n.point == m.point)
    };
    mounts
        .iter()
        .filter(|m| may_not_answer(&m.fstype) && !hidden(m))
        .map(|m| m.point.clone())
        .collect()
}

/// Which of `points` `path` reaches as it is resolved component by component,
/// following symbolic links (at most [`MAX_LINKS`]; more, and the path is taken as
/// it stands) but reading none on or under a point. A relative path is taken as
/// written. A component that cannot be read as a link is taken as a directory.
/// Every point the path touches is reached, outermost first: once it is under
/// one, the rest of the path is taken as written, `..` lexically (links under a
/// point are never read), to find those nested in it or met after a `..`.
fn reaches<'a>(points: &'a [PathBuf], path: &Path) -> Vec<&'a PathBuf> {
    use std::path::Component;
    let under = |p: &Path| {
        let mut within: Vec<&PathBuf> = points.iter().filter(|point| p.starts_with(point)).collect();
        within.sort_by_key(|point| point.as_os_str().len());
        within.dedup();
        within
    };
    let mut done = PathBuf::new();
    let mut rest: Vec<PathBuf> = path.components().rev().map(|c| c.as_os_str().into()).collect();
    let mut links = 0;
    while let Some(next) = rest.pop() {
        match next.components().next() {
            Some(Component::RootDir) => done = PathBuf::from("/"),
            Some(Component::ParentDir) => {
                done.pop();
            }
            Some(Component::Normal(name)) => {
                done.push(name);
                if !under(&done).is_empty() {
                    // The rest as written, `..` taken lexically (nothing there is read).
                    let mut written = done.clone();
                    for c in rest.iter().rev() {
                        match c.components().next() {
                            Some(Component::ParentDir) => _ = written.pop(),
                            Some(Component::RootDir) => written = PathBuf::from("/"),
                            _ => written.push(c),
                        }
                    }
                    // Both: the walk touched `done`'s points on its way (a `..` out of
                    // a mount's root may still ask it for permission).
                    let mut found = under(&done);
                    found.extend(under(&written));
                    found.sort_by_key(|point| point.as_os_str().len());
                    found.dedup();
                    return found;
                }
                if links < MAX_LINKS
                    && let Ok(target) = std::fs::read_link(&done)
                {
                    links += 1;
                    done.pop();
                    rest.extend(target.components().rev().map(|c| c.as_os_str().into()));
                }
            }
            _ => {}
        }
    }
    under(&done)
}

/// A mountinfo path with its octal escapes (`\040`, `\134`…) decoded.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push(
                    d.iter()
                        .fold(0u8, |n, b| n.wrapping_mul(8).wrapping_add(b - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_automount_under_the_file_system_it_mounted_is_hidden() {
        let text = "1 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    30 1 0:40 / /home rw - autofs systemd-1 rw\n\
                    31 30 8:2 / /home rw - ext4 /dev/sda2 rw\n\
                    40 1 0:41 / /boot/efi rw - autofs systemd-1 rw\n\
                    50 1 0:50 / /srv/nfs rw - nfs4 server:/x rw\n\
                    51 50 0:51 / /srv/nfs/inner rw - ext4 /dev/sdb1 rw\n\
                    60 1 0:60 / /mnt/auto rw - autofs systemd-1 rw\n\
                    61 60 0:61 / /mnt/auto rw - nfs4 server:/y rw\n\
                    70 1 0:70 / /mnt/lower rw - nfs4 server:/z rw\n\
                    71 70 0:71 / /mnt/lower rw - overlay overlay rw,lowerdir=/mnt/lower\n";
        let points = remote_points_in(&parse(text));
        assert_eq!(
            points,
            ["/boot/efi", "/srv/nfs", "/mnt/auto", "/mnt/lower"].map(PathBuf::from),
            "/home's autofs lies under its ext4; /boot/efi's is not mounted yet; a mount \
             inside NFS hides nothing; NFS over an autofs counts; an overlay over NFS hides it not"
        );
    }

    #[test]
    fn lines_give_root_point_type_and_mode_with_escapes_undone() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    50 23 0:38 /system.slice /mnt/my\\040cgroups ro,relatime master:1 shared:2 - cgroup2 none rw\n\
                    90 22 0:50 / /srv/a\\134b rw - fuse.sshfs host:/ rw\n\
                    garbage\n1 2 3\n- cgroup2\n";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!((mounts[1].id, mounts[1].root.as_str()), (50, "/system.slice"));
        assert_eq!(mounts[1].point, PathBuf::from("/mnt/my cgroups"));
        assert_eq!(
            (mounts[1].fstype.as_str(), mounts[1].read_only),
            ("cgroup2", true)
        );
        assert_eq!(mounts[2].point, PathBuf::from("/srv/a\\b"));
        assert_eq!(
            (mounts[2].fstype.as_str(), mounts[2].read_only),
            ("fuse.sshfs", false)
        );
        assert_eq!(unescape("a\\040b\\134c\\011d\\0"), b"a b\\c\td\\0");
    }

    #[test]
    fn links_are_followed_onto_a_mount_that_may_not_answer_without_reading_under_it() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir_all(base.join("local/dir")).unwrap();
        let points = [PathBuf::from("/never/mounted")];
        symlink("/never/mounted/site", base.join("abs")).unwrap();
        symlink("local", base.join("rel")).unwrap();
        symlink("c2", base.join("c1")).unwrap();
        symlink("../up/../abs", base.join("local/c2")).unwrap();
        symlink("local/c2", base.join("c2")).unwrap();
        symlink("l2", base.join("l1")).unwrap();
        symlink("l1", base.join("l2")).unwrap();
        let reaches = |p: &str| !reaches(&points, &base.join(p)).is_empty();
        assert!(reaches("abs"), "a link straight onto the mount");
        assert!(reaches("abs/deeper/still"), "and below it");
        assert!(!reaches("rel/dir"), "a link that stays local");
        assert!(reaches("c1"), "a chain of links ending on the mount");
        assert!(!reaches("l1"), "a loop ends, taken as it stands");
        assert!(!reaches("local/dir/../dir"));
        assert!(reaches("local/../abs"));
        // Nothing under a point is read: the path is known to reach it at the point.
        let point = |p: &str| super::reaches(&points, Path::new(p));
        assert_eq!(
            point("/never/mounted/../../etc"),
            [&points[0]],
            "touched on the way"
        );
        assert_eq!(point("/never/mounted/x/../y"), [&points[0]]);
        assert!(point("/never").is_empty());
        // Nested mounts: every one the path lies under, as written, outermost first.
        let nested = [
            PathBuf::from("/never/mounted/in"),
            PathBuf::from("/never/mounted"),
        ];
        let point = |p: &str| super::reaches(&nested, Path::new(p));
        assert_eq!(point("/never/mounted/in/x"), [&nested[1], &nested[0]]);
        assert_eq!(point("/never/mounted/inside"), [&nested[1]]);
        assert_eq!(point("/never/mounted/in"), [&nested[1], &nested[0]]);
    }
}
