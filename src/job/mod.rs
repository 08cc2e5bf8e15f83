//! Running one job: a command in its own process group with its environment,
//! its output logged line by line, and termination of the whole group
//! (SIGTERM, a grace period, SIGKILL) when its listener stops.

pub mod cgroup;
pub mod launch;
pub mod orphans;

use crate::config::Command;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Variables systemd gives the daemon that must not leak to jobs.
const SYSTEMD_VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];
/// A line of job output longer than this is cut, with a marker.
pub const MAX_LINE: usize = 8 * 1024;
/// After the job's main process exits, how long its output may still be drained
/// (a background child may hold the pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// The soft open-files limit jobs get: the one the daemon started with, before it
/// raised its own (as systemd advises, so programs that loop over every descriptor stay fast).
static JOB_FD_LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Makes jobs start with `soft` as their soft open-files limit.
pub fn restore_fd_limit_in_jobs(soft: u64) {
    let _ = JOB_FD_LIMIT.set(soft);
}

/// Everything needed to start a job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// What to run.
    pub command: Command,
    /// The working directory.
    pub workdir: PathBuf,
    /// Variables added to the daemon's environment (values may be any bytes, like file names).
    pub env: BTreeMap<String, OsString>,
    /// How long it may run; then its group gets SIGTERM, and SIGKILL after `kill_grace`.
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL when the job times out.
    pub kill_grace: Duration,
    /// Where the job's pid is published once it has started (0 until then).
    pub pid: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// What the job reads on stdin (a batch's paths); `/dev/null` when `None`.
    pub stdin: Option<Vec<u8>>,
    /// Where the job is recorded while it runs (see [`crate::ledger`]).
    pub ledger: Option<std::sync::Arc<crate::ledger::Ledger>>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The main process exited with this code.
    Exited(i32),
    /// The main process was killed by this signal.
    Signaled(i32),
    /// The job could not be started.
    NotStarted(String),
    /// The job ran past its timeout and was killed.
    TimedOut,
}

impl Outcome {
    /// Why the job failed, in a few words; `None` on success.
    pub fn failure(&self) -> Option<String> {
        match self {
            Outcome::Exited(0) => None,
            Outcome::Exited(code) => Some(format!("exit code {code}")),
            Outcome::Signaled(sig) => Some(format!("killed by signal {sig}")),
            Outcome::NotStarted(reason) => Some(reason.clone()),
            Outcome::TimedOut => Some("timed out".to_owned()),
        }
    }

    fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Outcome::Exited(code),
            (None, Some(sig)) => Outcome::Signaled(sig),
            (None, None) => Outcome::NotStarted("no exit status".into()),
        }
    }
}

/// Runs the job to its end. When `cancel` fires, its process group gets SIGTERM,
/// then SIGKILL after `grace`. Logs into the current span (which should carry the
/// listener, route and file), recording `job_pid` on it.
pub async fn run(spec: &JobSpec, grace: Duration, cancel: &CancellationToken) -> Outcome {
    let started = Instant::now();
    let mut cmd = command(spec);
    let mut child = match orphans::spawn(&mut cmd) {
        Ok(child) => child,
        Err(e) => {
            let reason = if spec.workdir.is_dir() {
                format!("cannot start {}: {e}", describe(&spec.command))
            } else {
                format!(
                    "working directory {} does not exist",
                    crate::names::escaped(&spec.workdir)
                )
            };
            error!(exit_code = "not_started", "job failed: {reason}");
            return Outcome::NotStarted(reason);
        }
    };
    let pid = child.id().expect("a just-spawned child has a pid");
    let _registered = orphans::Registered(pid);
    // Recorded until its whole group is gone (the last kill below), for a daemon
    // started after a crash of this one.
    let _recorded = spec.ledger.as_ref().and_then(|l| l.record(pid));
    spec.pid.store(pid, std::sync::atomic::Ordering::Relaxed);
    tracing::Span::current().record("job_pid", pid);
    info!(job_pid = pid, "job started");
    let feed = feed(child.stdin.take(), spec.stdin.as_deref());
    let drained = drain(child.stdout.take(), child.stderr.take());
    let output = async { tokio::join!(feed, drained) };
    tokio::pin!(output);
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let timeout_ms = spec.timeout.unwrap_or_default().as_millis() as u64;
    // The main process's status, and whether it was killed for its timeout.
    let wait = async {
        tokio::select! {
            status = child.wait() => (status, false),
            _ = cancel.cancelled() => (terminate(&mut child, pid, grace).await, false),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                warn!(job_pid = pid, timeout_ms, "job timed out");
                (terminate(&mut child, pid, spec.kill_grace).await, true)
            }
        }
    };
    tokio::pin!(wait);
    let mut output_done = false;
    let (status, timed_out) = loop {
        tokio::select! {
            done = &mut wait => break done,
            _ = &mut output, if !output_done => output_done = true,
        }
    };
    // The job is its main process: whatever it left running in its group is a stray.
    crate::sys::kill_group(pid, libc::SIGTERM);
    if !output_done {
        let _ = tokio::time::timeout(OUTPUT_DRAIN, &mut output).await;
    }
    crate::sys::kill_group(pid, libc::SIGKILL);
    let outcome = match status {
        _ if timed_out => Outcome::TimedOut,
        Ok(status) => Outcome::from_status(status),
        Err(e) => Outcome::NotStarted(format!("waiting for the job: {e}")),
    };
    log_end(&outcome, started.elapsed());
    outcome
}

/// The process to start: its own process group, stdin from /dev/null, output piped,
/// the daemon's environment without systemd's variables plus the job's, and the
/// open-files limit the daemon started with.
fn command(spec: &JobSpec) -> tokio::process::Command {
    let mut cmd = match &spec.command {
        Command::Run(argv) => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
        Command::Shell(script) => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        }
    };
    let stdin = if spec.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    cmd.current_dir(&spec.workdir)
        .envs(&spec.env)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for inherited in SYSTEMD_VARIABLES {
        cmd.env_remove(inherited);
    }
    if let Some(&soft) = JOB_FD_LIMIT.get() {
        crate::sys::restore_nofile_in_child(&mut cmd, soft);
    }
    cmd
}

fn log_end(outcome: &Outcome, elapsed: Duration) {
    let duration_ms = elapsed.as_millis() as u64;
    match outcome {
        Outcome::Exited(0) => info!(exit_code = 0, duration_ms, "job finished"),
        Outcome::Exited(code) => warn!(exit_code = code, duration_ms, "job failed with exit code {code}"),
        Outcome::Signaled(sig) => warn!(signal = sig, duration_ms, "job killed by signal {sig}"),
        Outcome::NotStarted(reason) => error!(duration_ms, "job failed: {reason}"),
        Outcome::TimedOut => warn!(
            exit_code = "timeout",
            duration_ms, "job failed: killed after its timeout"
        ),
    }
}

/// SIGTERM to the group, SIGKILL after `grace`; then SIGKILL again to sweep
/// any process of the group still alive.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: u32,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    info!(job_pid = pid, "sending SIGTERM to the job's process group");
    crate::sys::kill_group(pid, libc::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            warn!(
                job_pid = pid,
                grace_ms = grace.as_millis() as u64,
                "job outlived its grace: SIGKILL"
            );
            crate::sys::kill_group(pid, libc::SIGKILL);
            child.wait().await
        }
    };
    crate::sys::kill_group(pid, libc::SIGKILL);
    status
}

fn describe(command: &Command) -> String {
    match command {
        Command::Run(argv) => format!("{:?}", argv[0]),
        Command::Shell(_) => "/bin/sh".to_owned(),
    }
}

/// Writes `data` to the job's stdin, then closes it (a job that stops reading is fine).
async fn feed(stdin: Option<tokio::process::ChildStdin>, data: Option<&[u8]>) {
    use tokio::io::AsyncWriteExt;
    if let (Some(mut stdin), Some(data)) = (stdin, data) {
        let _ = stdin.write_all(data).await;
    }
}

async fn drain(stdout: Option<tokio::process::ChildStdout>, stderr: Option<tokio::process::ChildStderr>) {
    tokio::join!(log_lines(stdout, "stdout"), log_lines(stderr, "stderr"));
}

/// Logs each line of `reader`, cutting lines over [`MAX_LINE`]; never holds more than one line.
async fn log_lines(reader: Option<impl AsyncRead + Unpin>, stream: &'static str) {
    let Some(reader) = reader else { return };
    let mut reader = BufReader::new(reader);
    let mut line = Vec::with_capacity(256);
    loop {
        match read_capped_line(&mut reader, &mut line).await {
            Ok(None) => return,
            Ok(Some(cut)) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                let marker = if cut { " [line cut at 8 KiB]" } else { "" };
                info!(stream, "{text}{marker}");
            }
            Err(e) => {
                warn!(stream, "reading job output: {e}");
                return;
            }
        }
    }
}

/// Reads one line into `line` (cleared first), keeping at most [`MAX_LINE`] bytes and
/// discarding the rest of a longer line. `Ok(None)` at end of input; `Ok(Some(cut))` otherwise.
pub(crate) async fn read_capped_line(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut cut = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty() || cut).then_some(cut));
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        cut |= chunk.len() > room;
        let used = chunk.len();
        reader.consume(used);
        if done {
            return Ok(Some(cut));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_the_rest_skipped() {
        let mut input = vec![b'x'; MAX_LINE * 3];
        input.extend_from_slice(b"\nshort\nlast");
        let mut reader = BufReader::with_capacity(1024, &input[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_capped_line(&mut reader, &mut line).await.unwrap(),
            Some(true)
        );
        assert_eq!(line.len(), MAX_LINE);
        assert_eq!(
            read_capped_line(&mut reader, &mut line).await.unwrap(),
            Some(false)
        );
        assert_eq!(line, b"short\n");
        assert_eq!(
            read_capped_line(&mut reader, &mut line).await.unwrap(),
            Some(false)
        );
        assert_eq!(line, b"last");
        assert_eq!(read_capped_line(&mut reader, &mut line).await.unwrap(), None);
    }

    #[tokio::test]
    async fn exit_codes_and_missing_programs_are_reported() {
        let spec = |command| JobSpec {
            command,
            workdir: "/".into(),
            env: BTreeMap::new(),
            timeout: None,
            kill_grace: Duration::from_secs(1),
            pid: Default::default(),
            stdin: None,
            ledger: None,
        };
        let never = CancellationToken::new();
        let grace = Duration::from_secs(1);
        let out = run(&spec(Command::Shell("exit 3".into())), grace, &never).await;
        assert_eq!(out, Outcome::Exited(3));
        let out = run(
            &spec(Command::Run(vec!["/nonexistent/prog".into()])),
            grace,
            &never,
        )
        .await;
        assert!(
            matches!(out, Outcome::NotStarted(ref r) if r.contains("/nonexistent/prog")),
            "{out:?}"
        );
    }
}
