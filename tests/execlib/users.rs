//! Two local users: the control socket's directory must be the daemon's own, and
//! `execlibctl` trusts a socket in a per-user location only when its daemon runs as
//! the same user. Needs root (to act as the two users, with `setpriv`).

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ATTACKER: u32 = 61001;
const VICTIM: u32 = 61002;

/// A sandbox other users can read, with the binaries copied in (the build tree may
/// sit under a private home) and a sticky, world-writable `tmp` standing in for /tmp.
fn shared_sandbox() -> (Sandbox, PathBuf, PathBuf) {
    let sandbox = Sandbox::new();
    std::fs::set_permissions(sandbox.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = sandbox.path("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in ["execlibd", "execlibctl"] {
        let from = Path::new(env!("CARGO_BIN_EXE_execlibd")).with_file_name(name);
        std::fs::copy(from, bin.join(name)).unwrap();
    }
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = sandbox.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    (sandbox, bin, tmp)
}

/// `program args` as `uid`, with `env` (and neither `XDG_RUNTIME_DIR` nor `HOME`).
fn as_user(uid: u32, program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
    ])
    .arg(program)
    .args(args)
    .env_remove("XDG_RUNTIME_DIR")
    .env_remove("NOTIFY_SOCKET")
    .env("HOME", "/nonexistent");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn mkdir_owned(path: &Path, uid: u32, mode: u32) {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A config with the default (per-user) socket, its state in a directory of `uid`,
/// and one route on `src` running `shell`.
fn victim_config(sandbox: &Sandbox, uid: u32, shell: &str) -> PathBuf {
    mkdir_owned(&sandbox.path("state"), uid, 0o700);
    let config = sandbox.path("site.toml");
    std::fs::write(
        &config,
        format!("[daemon]\nstate_dir = \"state\"\n{}", one_route(shell, "")),
    )
    .unwrap();
    std::fs::set_permissions(sandbox.path("src"), std::fs::Permissions::from_mode(0o755)).unwrap();
    config
}

fn start_victim(bin: &Path, config: &Path, tmp: &Path) -> Output {
    let cmd = as_user(
        VICTIM,
        &bin.join("execlibd"),
        &["--config", config.to_str().unwrap()],
        &[("TMPDIR", tmp)],
    );
    let mut child = { cmd }.stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Refused at once, or running: then stop it (its socket is what the caller checks).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < end && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn runtime_directory_precreated_by_another_user_is_refused() {
    if skip_unless_root("act as two users") {
        return;
    }
    let (sandbox, bin, tmp) = shared_sandbox();
    let config = victim_config(&sandbox, VICTIM, "true");
    let base = tmp.join(format!("execlib-{VICTIM}"));
    mkdir_owned(&base, ATTACKER, 0o777);
    let out = start_victim(&bin, &config, &tmp);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to put the control socket in"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("owned by uid {ATTACKER}")), "{stderr}");
    assert!(!base.join("site/control.sock").exists());

    mkdir_owned(&base, VICTIM, 0o777);
    let out = start_victim(&bin, &config, &tmp);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writable by others (mode 0777)"), "{stderr}");
}

#[test]
fn runtime_directory_is_created_private_and_the_owner_is_served() {
    if skip_unless_root("act as two users") {
        return;
    }
    let (sandbox, bin, tmp) = shared_sandbox();
    let config = victim_config(&sandbox, VICTIM, "true");
    let _daemon = victim_daemon(&bin, &config, &tmp, std::process::Stdio::null());
    let socket = tmp.join(format!("execlib-{VICTIM}/site/control.sock"));
    eventually("the victim's socket", || socket.exists().then_some(()));
    for dir in [
        socket.parent().unwrap(),
        socket.parent().unwrap().parent().unwrap(),
    ] {
        let meta = std::fs::metadata(dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{dir:?}");
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), VICTIM);
    }
    let ctl = |uid| {
        as_user(uid, &bin.join("execlibctl"), &["status"], &[("TMPDIR", &tmp)])
            .output()
            .unwrap()
    };
    let out = ctl(VICTIM);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = ctl(ATTACKER);
    assert_eq!(
        out.status.code(),
        Some(3),
        "another user finds no instance of its own: {out:?}"
    );
}

#[test]
fn execlibctl_refuses_a_per_user_socket_answered_by_another_user() {
    if skip_unless_root("act as two users") {
        return;
    }
    let (sandbox, bin, _tmp) = shared_sandbox();
    let xdg = sandbox.path("xdg");
    mkdir_owned(&xdg, VICTIM, 0o755);
    let dir = xdg.join("execlib/site");
    std::fs::create_dir_all(&dir).unwrap();
    // Someone else's process answers on the victim's socket path (here: root's).
    let socket = dir.join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let fake = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        while let Ok((stream, _)) = listener.accept() {
            let mut reader = std::io::BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let reply = b"{\"ok\":true,\"listeners\":[]}\n";
            let _ = reader.get_mut().write_all(reply);
            return line;
        }
        String::new()
    });
    let ctl = |args: &[&str]| {
        as_user(
            VICTIM,
            &bin.join("execlibctl"),
            args,
            &[("XDG_RUNTIME_DIR", &xdg)],
        )
        .output()
        .unwrap()
    };
    let out = ctl(&["shutdown"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("runs as uid 0, not as you"), "{stderr}");
    assert!(!stderr.contains("shutting down") && out.stdout.is_empty());
    // Named explicitly, it is used.
    let out = ctl(&["--socket", socket.to_str().unwrap(), "listeners"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(fake.join().unwrap().contains("listeners"));
}

/// A process killed when the test ends, however it ends.
/// The victim's daemon on `config`, its stderr to `stderr`; killed when dropped.
fn victim_daemon(bin: &Path, config: &Path, tmp: &Path, stderr: impl Into<std::process::Stdio>) -> Killed {
    let cmd = as_user(
        VICTIM,
        &bin.join("execlibd"),
        &["--config", config.to_str().unwrap()],
        &[("TMPDIR", tmp)],
    );
    Killed({ cmd }.stderr(stderr).spawn().unwrap())
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn regression_a_folder_the_daemon_could_not_read_was_not_watched_once_made_readable() {
    if skip_unless_root("run the daemon as a user a folder is closed to") {
        return;
    }
    let (sandbox, bin, tmp) = shared_sandbox();
    let config = victim_config(&sandbox, VICTIM, r#"echo "$EXECLIB_NAME" >> ../out/log"#);
    mkdir_owned(&sandbox.path("out"), VICTIM, 0o755);
    // Root's, closed to the daemon's user: it cannot be watched.
    mkdir_owned(&sandbox.path("src/locked"), 0, 0o700);
    // Readable but not searchable: it is watched, the folder in it cannot be.
    mkdir_owned(&sandbox.path("src/half/inner"), 0, 0o755);
    std::fs::set_permissions(sandbox.path("src/half"), std::fs::Permissions::from_mode(0o744)).unwrap();
    let log = sandbox.path("daemon.log");
    let _daemon = victim_daemon(&bin, &config, &tmp, std::fs::File::create(&log).unwrap());
    eventually(
        "the warnings that src/locked and src/half/inner are not watched",
        || {
            let text = std::fs::read_to_string(&log).ok()?;
            (text.matches("not watched, changes under it are not seen").count() == 2).then_some(())
        },
    );
    // Opened to it: from now on, what changes in it runs jobs, as anywhere else.
    std::fs::set_permissions(sandbox.path("src/locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(sandbox.path("src/locked/a.txt"), "1").unwrap();
    eventually("a.txt's job", || {
        let ran = sandbox.read("out/log")?;
        ran.contains("a.txt").then_some(())
    });
    // A folder reached through one made searchable is watched too.
    std::fs::set_permissions(sandbox.path("src/half"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(sandbox.path("src/half/inner/b.txt"), "1").unwrap();
    eventually("b.txt's job", || {
        let ran = sandbox.read("out/log")?;
        ran.contains("b.txt").then_some(())
    });
}
