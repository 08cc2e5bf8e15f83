//! Config errors: `--check` and start-up report file, line and column.

use crate::support::*;
use std::process::Command;

fn check(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_execlibd"))
        .arg("--check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
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
