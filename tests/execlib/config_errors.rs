//! Config errors: `--check` and start-up report file, line and column.

use crate::support::*;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn check(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_execlibd"))
        .arg("--check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// `execlibd --check --config <config>` with at most 256 MiB of address space,
/// which must exit within 2 s (it is killed and the test fails otherwise).
fn check_quickly(config: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_execlibd"));
    command
        .arg("--check")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let limit = libc::rlimit {
        rlim_cur: 256 << 20,
        rlim_max: 256 << 20,
    };
    // SAFETY: setrlimit is async-signal-safe, and `limit` is a copy owned by the closure.
    unsafe {
        command.pre_exec(move || match libc::setrlimit(libc::RLIMIT_AS, &limit) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let mut child = command.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(2) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("execlibd --check on {} did not exit within 2 s", config.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Asserts that `--check` refused `config` (exit 1) at `line:column` with `message`.
fn assert_refused_at(config: &Path, line: usize, column: usize, message: &str) {
    let out = check(config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let location = format!("execlibd: {}:{line}:{column}: ", config.display());
    assert!(stderr.starts_with(&location), "{stderr}");
    assert!(stderr.contains(message), "{stderr}");
}

#[test]
fn check_accepts_a_valid_config_and_starts_nothing() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let out = check(&config);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!sandbox.socket().exists());
}

#[test]
fn check_reports_file_line_and_column() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(
        &one_route("true", "").replace("  name = \"pages\"", "  name = \"pages\"\n  colour = \"red\""),
    );
    let out = check(&config);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let location = format!("{}:9:3: ", config.display());
    assert!(stderr.contains(&location), "{stderr}");
    assert!(stderr.contains("unknown field `colour`"), "{stderr}");
}

#[test]
fn daemon_refuses_to_start_on_an_invalid_config() {
    let sandbox = Sandbox::new();
    let config = sandbox.config("[[listener]]\nname = \"bad name\"\n");
    let mut daemon = Daemon::spawn(&sandbox, &config);
    let (status, _) = daemon.wait_exit();
    assert_eq!(status.code(), Some(1));
    let log = daemon.log();
    assert!(log.contains("site.toml:6:8: listener name \"bad name\""), "{log}");
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("echo x > ../out/resolved", ""));
    // Started from another working directory: `src` still means the sandbox's.
    let _daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/x", "1");
    sandbox.wait_out("resolved");
}

#[test]
fn bundled_example_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/site/site.toml");
    let out = check(std::path::Path::new(example));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn check_refuses_a_fifo_at_once() {
    let sandbox = Sandbox::new();
    let fifo = sandbox.path("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Nobody ever writes to it: reading it would block forever.
    let out = check_quickly(&fifo);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a regular file (a FIFO)"), "{stderr}");
}

#[test]
fn check_refuses_dev_zero_in_bounded_memory() {
    let out = check_quickly(Path::new("/dev/zero"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/dev/zero: cannot read config: is not a regular file"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_a_nul_in_a_route_name() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", "").replace("\"pages\"", "\"pa\\u0000ges\""));
    assert_refused_at(&config, 8, 10, "route name \"pa\\0ges\" contains a NUL byte");
}

#[test]
fn check_refuses_a_zero_timeout() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", "timeout_ms = 0"));
    assert_refused_at(&config, 12, 16, "`timeout_ms` must be at least 1");
}

#[test]
fn check_refuses_a_socket_path_too_long_for_sun_path() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let long = format!("socket = \"/tmp/{}.sock\"", "s".repeat(120));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("socket = \"control.sock\"", &long)).unwrap();
    assert_refused_at(
        &config,
        2,
        10,
        "is 130 bytes long; a Unix socket path holds at most 107 bytes",
    );
}

#[test]
fn check_refuses_an_unknown_group() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("[control]\n", "[control]\ngroup = \"no-such-group-xyz\"\n");
    std::fs::write(&config, text).unwrap();
    assert_refused_at(&config, 2, 9, "group \"no-such-group-xyz\" does not exist");
}

#[test]
fn execlibd_refuses_a_bad_instance_name() {
    for (args, name) in [
        (&["--instance", ".."][..], "\"..\""),
        (&["--instance", "a/b"], "\"a/b\""),
        (&["--instance", ""], "\"\""),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_execlibd"))
            .arg("--check")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let expected = format!("execlibd: invalid instance name {name}: ");
        assert!(stderr.starts_with(&expected), "{stderr}");
    }
}

/// `{a,{a,…b}…}`: alternates nested `depth` deep.
fn nested_alternates(depth: usize) -> String {
    format!("{}b{}", "{a,".repeat(depth), "}".repeat(depth))
}

#[test]
fn regression_deeply_nested_glob_alternates_are_refused_not_a_stack_overflow() {
    let sandbox = Sandbox::new();
    // 20,000 levels overflowed the main thread's stack in globset's compiler.
    let config = sandbox.config(&one_route(
        "true",
        &format!("glob = \"{}\"", nested_alternates(20_000)),
    ));
    assert_refused_at(&config, 12, 10, "is 80001 bytes long; at most 4096 are allowed");
    // Within the length, but nested deeper than 8.
    let config = sandbox.config(&one_route(
        "true",
        &format!("glob = [\"**\", \"{}\"]", nested_alternates(9)),
    ));
    assert_refused_at(&config, 12, 10, "`{…}` alternates nest more than 8 deep");
    let config = sandbox.config(&one_route(
        "true",
        &format!("ignore = [\"{}\"]", nested_alternates(9)),
    ));
    assert_refused_at(&config, 12, 12, "`{…}` alternates nest more than 8 deep");
    let config = sandbox.config(&one_route(
        "true",
        &format!("glob = \"{}\"", nested_alternates(8)),
    ));
    assert_eq!(check(&config).status.code(), Some(0));
}
