//! Catch-up across restarts where comparing the saved snapshot with the tree one
//! directory at a time could go wrong: directories deleted with their files or
//! replaced by files (and files by directories), names that are not UTF-8 or sort
//! differently as bytes and as text, and snapshots saved by earlier versions.

use crate::support::*;
use crate::watching::{catch_up_config, settle};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The logged lines as bytes (names need not be UTF-8), sorted, the sentinel's left out.
fn logged(sandbox: &Sandbox) -> Vec<Vec<u8>> {
    let text = std::fs::read(sandbox.path("out/log")).unwrap_or_default();
    let mut lines: Vec<Vec<u8>> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && !l.starts_with(b"z "))
        .map(<[u8]>::to_vec)
        .collect();
    lines.sort();
    lines
}

/// [`settle`] for a log that may not be UTF-8: writes `src/z` and waits for its line.
fn settle_bytes(sandbox: &Sandbox) {
    sandbox.write("src/z", "sentinel");
    eventually("z's run", || {
        let text = std::fs::read(sandbox.path("out/log")).unwrap_or_default();
        text.split(|&b| b == b'\n')
            .any(|l| l == b"z create,modify")
            .then_some(())
    });
}

fn write(sandbox: &Sandbox, rel: &[u8], body: &str) {
    let path = sandbox.path("src").join(OsStr::from_bytes(rel));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

fn sorted(lines: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
    lines.sort();
    lines
}

#[test]
fn catch_up_reports_directories_gone_or_replaced_and_names_not_utf8() {
    let sandbox = Sandbox::new();
    for rel in [
        &b"gone/a"[..],
        b"gone/deep/b",
        b"todir",
        b"tofile/c",
        b"a-b",
        b"a/b",
        b"n\xff",
        b"d\xfe/e\x80",
        b"same/s",
    ] {
        write(&sandbox, rel, "1");
    }
    let config = catch_up_config(&sandbox);
    let mut daemon = Daemon::start(&sandbox, &config);
    daemon.ctl(&["shutdown"]);
    daemon.wait_exit();
    let src = sandbox.path("src");
    std::fs::remove_dir_all(src.join("gone")).unwrap();
    std::fs::remove_file(src.join("todir")).unwrap();
    write(&sandbox, b"todir/x", "1");
    std::fs::remove_dir_all(src.join("tofile")).unwrap();
    write(&sandbox, b"tofile", "1");
    for rel in [&b"a-b"[..], b"a/b", b"n\xff"] {
        write(&sandbox, rel, "22");
    }
    std::fs::remove_file(src.join(OsStr::from_bytes(b"d\xfe/e\x80"))).unwrap();
    write(&sandbox, b"d\xfe/f\xfe", "1");
    let _daemon = Daemon::start(&sandbox, &config);
    settle_bytes(&sandbox);
    assert_eq!(
        logged(&sandbox),
        sorted(&[
            b"gone/a delete",
            b"gone/deep/b delete",
            b"todir delete",
            b"todir/x create",
            b"tofile/c delete",
            b"tofile create",
            b"a-b modify",
            b"a/b modify",
            b"n\xff modify",
            b"d\xfe/e\x80 delete",
            b"d\xfe/f\xfe create",
        ]),
    );
}

/// A snapshot as versions before the per-directory format saved it (`EXECLIBSNAP2`:
/// full paths, 128-bit times, FNV-1a), for `files` with their states now.
fn version_2(files: &[(&Path, std::fs::Metadata)]) -> Vec<u8> {
    let mut out = b"EXECLIBSNAP2".to_vec();
    out.extend_from_slice(&(files.len() as u64).to_le_bytes());
    for (path, meta) in files {
        let bytes = path.as_os_str().as_bytes();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(&meta.ino().to_le_bytes());
        out.extend_from_slice(&meta.size().to_le_bytes());
        for (s, ns) in [
            (meta.mtime(), meta.mtime_nsec()),
            (meta.ctime(), meta.ctime_nsec()),
        ] {
            out.extend_from_slice(&(i128::from(s) * 1_000_000_000 + i128::from(ns)).to_le_bytes());
        }
    }
    let sum = out.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// An upgrade: the snapshot the previous version saved loads, and only what changed
/// since is reported (an unchanged file is not, so every state was read right).
#[test]
fn catch_up_loads_a_snapshot_saved_by_the_previous_format() {
    let sandbox = Sandbox::new();
    for rel in ["src/same", "src/sub/same", "src/modified", "src/deleted"] {
        sandbox.write(rel, "1");
    }
    let meta = |rel: &str| std::fs::symlink_metadata(sandbox.path(rel)).unwrap();
    let (same, sub, modified, deleted) = (
        sandbox.path("src/same"),
        sandbox.path("src/sub/same"),
        sandbox.path("src/modified"),
        sandbox.path("src/deleted"),
    );
    let saved = version_2(&[
        (&deleted, meta("src/deleted")),
        (&modified, meta("src/modified")),
        (&same, meta("src/same")),
        (&sub, meta("src/sub/same")),
    ]);
    sandbox.write("state/docs.snapshot", "");
    std::fs::write(sandbox.path("state/docs.snapshot"), saved).unwrap();
    std::fs::remove_file(&deleted).unwrap();
    sandbox.write("src/modified", "22");
    sandbox.write("src/created", "1");
    let config = catch_up_config(&sandbox);
    let mut daemon = Daemon::start(&sandbox, &config);
    settle(&sandbox, "z");
    assert_eq!(
        logged(&sandbox),
        sorted(&[b"created create", b"deleted delete", b"modified modify"])
    );
    assert!(
        !daemon.log().contains("cannot use the saved snapshot"),
        "{}",
        daemon.log()
    );
    // Saved again in the current format, which the next start reads.
    daemon.ctl(&["shutdown"]);
    daemon.wait_exit();
    let data = std::fs::read(sandbox.path("state/docs.snapshot")).unwrap();
    assert!(data.starts_with(b"EXECLIBSNAP3"));
    sandbox.write("src/modified", "333");
    let _daemon = Daemon::start(&sandbox, &config);
    wait_log(&sandbox, "modified modify");
    settle(&sandbox, "y");
    assert_eq!(
        log_lines(&sandbox)
            .iter()
            .filter(|l| l.starts_with("modified"))
            .count(),
        2,
        "{:?}",
        log_lines(&sandbox)
    );
}
