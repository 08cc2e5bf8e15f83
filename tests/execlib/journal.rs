//! Journal entries carry the structured fields without a prefix, so
//! `journalctl -u execlib@site LISTENER=docs` works.

use crate::support::journal::FakeJournal;
use crate::support::*;

#[test]
fn job_entries_carry_unprefixed_fields() {
    if skip_unless_root("mount a fake journal in a private mount namespace") {
        return;
    }
    let sandbox = Sandbox::new();
    let journal = FakeJournal::new(sandbox.dir.path());
    let config = sandbox.config(&one_route("echo hello from $EXECLIB_NAME", ""));
    let mut daemon = Daemon::spawn_with(&sandbox, &config, &journal.wrapper(), "journald");
    daemon.notify.wait_for("READY=1");
    sandbox.write("src/page.md", "x");
    let path = sandbox.path("src/page.md").display().to_string();

    let output = journal.wait_for("with the job's output", |e| {
        e.get("MESSAGE").map(String::as_str) == Some("hello from page.md")
    });
    let finished = journal.wait_for("for the finished job", |e| {
        e.get("MESSAGE").map(String::as_str) == Some("job finished")
    });
    for entry in [&output, &finished] {
        assert_eq!(entry["LISTENER"], "docs", "{entry:?}");
        assert_eq!(entry["ROUTE"], "pages");
        assert_eq!(entry["EVENT_PATH"], path);
        assert!(entry["JOB_PID"].parse::<u32>().is_ok(), "{entry:?}");
        assert_eq!(entry["SYSLOG_IDENTIFIER"], "execlibd");
    }
    assert_eq!(finished["EXIT_CODE"], "0");
    assert!(finished["DURATION_MS"].parse::<u64>().is_ok(), "{finished:?}");
    assert!(
        !finished.keys().any(|k| k.starts_with("F_")),
        "no field prefix: {finished:?}"
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit().0.code(), Some(0));
}

#[test]
fn journal_is_chosen_when_stderr_is_the_journal_stream() {
    use std::os::unix::fs::MetadataExt;
    if skip_unless_root("mount a fake journal in a private mount namespace") {
        return;
    }
    let sandbox = Sandbox::new();
    let journal = FakeJournal::new(sandbox.dir.path());
    let config = sandbox.config(&one_route("true", ""));
    // The fixture sends stderr to daemon.log: claim that file is the journal stream.
    std::fs::write(sandbox.path("daemon.log"), "").unwrap();
    let mut daemon = Daemon::spawn_env(&sandbox, &config, &journal.wrapper(), None, &[]);
    daemon.notify.wait_for("READY=1");
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit();
    assert!(
        daemon.log().contains("control socket listening"),
        "text on stderr without JOURNAL_STREAM"
    );
    assert!(journal.entries().is_empty());

    let meta = std::fs::metadata(sandbox.path("daemon.log")).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut daemon = Daemon::spawn_env(
        &sandbox,
        &config,
        &journal.wrapper(),
        None,
        &[("JOURNAL_STREAM", stream)],
    );
    daemon.notify.wait_for("READY=1");
    journal.wait_for("from auto-detection", |e| {
        e.get("MESSAGE").map(String::as_str) == Some("control socket listening")
    });
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit();
}
