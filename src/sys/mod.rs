//! The one room for `unsafe`: small safe wrappers over the system calls the rest
//! of the crate needs and std does not offer. Each wrapper keeps its call's
//! contract itself (valid pointers and sizes, descriptors owned once), documents
//! it in a `SAFETY` comment, and turns a failure into an [`std::io::Error`]. The
//! crate denies `unsafe_code` everywhere else (`[lints]` in `Cargo.toml`).

#![allow(unsafe_code)]

mod fs;
pub mod low_fds;
mod net;
mod proc;
mod spawn;

#[cfg(test)]
pub use fs::mkfifo;
pub use fs::{
    MountTable, fs_type, fs_type_of, mount_table_changed, open_for_writing, openat, openat2, read_link_fd,
    umask,
};
pub use net::{peek, peer_credentials, sendfile, set_backlog, systemd_listener, unread_by_peer};
pub use proc::{
    Pidfd, become_subreaper, boot_ticks, euid, group_id, kill, kill_group, nofile_limit, reap,
    release_free_memory, set_nofile_soft, tid, total_memory, uid,
};
pub use spawn::{AsyncProcess, Exit, SpawnError, Spec, Stage, pipe, spawn};

/// For a unit test that needs root: whether it runs as root. Otherwise it says why
/// it skips, or, under `TESTS_NO_SKIP=1` (as in CI), fails.
#[cfg(test)]
pub fn test_as_root(why: &str) -> bool {
    if euid() == 0 {
        return true;
    }
    assert!(
        std::env::var("TESTS_NO_SKIP").as_deref() != Ok("1"),
        "needs root {why}"
    );
    eprintln!("SKIP: needs root {why}");
    false
}
