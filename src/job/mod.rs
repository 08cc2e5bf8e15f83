//! Running one job: a command in its own process group (and its own cgroup when
//! the daemon has a delegated tree, see [`contain`]) with its environment, its
//! output logged line by line, termination of all its processes (SIGTERM, a grace
//! period, SIGKILL) when its listener stops or its timeout passes, and what it used
//! (CPU time, peak memory) logged at its end and returned with the last lines of its
//! output ([`Ended`]).

pub mod cgroup;
pub mod child;
pub mod contain;
mod interpreter;
pub mod launch;
pub mod orphans;
mod output;
mod start;

use crate::config::Command;
/// How a job ended: the history's outcome, the one vocabulary the history, the
/// metrics' `outcome` label ([`Outcome::label`]) and `status`'s last run share.
pub use crate::history::{TAIL_LINE, TAIL_LINES, Usage};
pub use crate::protocol::observe::RunOutcome as Outcome;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// A line of job output longer than this is cut, with a marker.
pub const MAX_LINE: usize = 8 * 1024;
/// After the job's main process exits, how long its output may still be drained
/// (a background child may hold the pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);
/// A job's output is first read when it exits, or once it has run this long: a
/// short job's pipes are then read to their end without being registered with the
/// reactor ([`output::OutputPipe`]). A job that writes more than a pipe holds
/// (64 KiB) sooner waits at most this long once.
const OUTPUT_LATER: Duration = Duration::from_millis(10);

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
    /// Its cgroup's limits (applied when jobs get cgroups: [`contain`]).
    pub limits: cgroup::Limits,
}

/// Where a line of output falls among both streams' lines: the number of the read
/// that completed it, then its number in the order lines were logged.
type LineKey = (u64, u64);

/// The last lines of one output stream, numbered so that two streams merge in the
/// order their lines came. Owned by the task reading the stream: no lock, and its
/// buffers are reused once it holds [`TAIL_LINES`] lines.
#[derive(Debug, Default)]
struct StreamTail {
    lines: std::collections::VecDeque<(LineKey, String)>,
}

impl StreamTail {
    fn push(&mut self, key: LineKey, line: &str) {
        let mut cut = TAIL_LINE.min(line.len());
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut slot = match self.lines.len() == TAIL_LINES {
            true => self.lines.pop_front().map(|(_, s)| s).unwrap_or_default(),
            false => String::new(),
        };
        slot.clear();
        slot.push_str(&line[..cut]);
        self.lines.push_back((key, slot));
    }

    /// The last [`TAIL_LINES`] lines of both streams, oldest first.
    fn merge(a: StreamTail, b: StreamTail) -> Vec<String> {
        let mut all: Vec<(LineKey, String)> = a.lines.into_iter().chain(b.lines).collect();
        all.sort_by_key(|(key, _)| *key);
        let skip = all.len().saturating_sub(TAIL_LINES);
        all.into_iter().skip(skip).map(|(_, line)| line).collect()
    }
}

/// How a job ended, what it used and the last lines it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// How it ended: the one vocabulary the history, the metrics' `outcome` label
    /// and `status` share. `Cancelled` only when the stop is what ended its main
    /// process (a job that exited on its own just before a stop keeps its exit).
    pub outcome: Outcome,
    /// CPU time and peak memory, when known.
    pub usage: Option<Usage>,
    /// The last [`TAIL_LINES`] lines of its output (stdout and stderr), oldest first.
    pub output: Vec<String>,
}

/// How the main process came to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndedBy {
    /// It exited, or was killed by a signal it was not sent by us.
    Itself,
    /// Its listener's stop terminated it.
    Stop,
    /// Its timeout terminated it.
    Timeout,
}

/// How a main process that ended by itself ended.
fn from_status(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited { code },
        (None, Some(signal)) => Outcome::Signaled { signal },
        (None, None) => Outcome::NotStarted {
            reason: "no exit status".into(),
        },
    }
}

/// Runs the job to its end. When `cancel` fires, its process group gets SIGTERM,
/// then SIGKILL after `grace`. Logs into the current span (which should carry the
/// listener, route and file), recording `job_pid` on it.
pub async fn run(spec: &JobSpec, grace: Duration, cancel: &CancellationToken) -> Ended {
    let mut output = Vec::new();
    let (outcome, usage) = run_job(spec, grace, cancel, &mut output).await;
    Ended {
        outcome,
        usage,
        output,
    }
}

async fn run_job(
    spec: &JobSpec,
    grace: Duration,
    cancel: &CancellationToken,
    tail: &mut Vec<String>,
) -> (Outcome, Option<Usage>) {
    let started = Instant::now();
    let group = match contain::job_group(&spec.limits) {
        Ok(group) => group,
        Err(e) => {
            let reason = format!("cannot make the job's cgroup: {e}");
            error!(exit_code = "not_started", "job failed: {reason}");
            return (Outcome::NotStarted { reason }, None);
        }
    };
    let launch = child::Launch {
        command: &spec.command,
        workdir: &spec.workdir,
        env: &spec.env,
        stdin: spec.stdin.is_some(),
        nofile_soft: JOB_FD_LIMIT.get().copied(),
        cgroup_procs: group.as_ref().map(|g| g.procs_fd()),
        found: None,
    };
    let before = crate::sys::boot_ticks();
    // From the start's beginning: a start that waited on the file system used it up.
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let (started_job, _registered) = match start::start(spec, &launch, cancel, deadline).await {
        Ok(started) => started,
        Err(start::Unstarted::Failed(e)) => {
            error!(exit_code = "not_started", "job failed: {e}");
            let reason = e.to_string();
            return (Outcome::NotStarted { reason }, None);
        }
        Err(start::Unstarted::GaveUp { timeout }) => {
            let (outcome, by) = match timeout {
                true => (Outcome::Timeout, "its timeout"),
                false => (Outcome::Cancelled, "its stop"),
            };
            warn!("job ended by {by} before it started: its start was waiting on the file system");
            // Its cgroup's removal may wait a second for what is left in it: not here.
            if group.is_some() {
                let _ = tokio::task::spawn_blocking(move || drop(group)).await;
            }
            return (outcome, None);
        }
    };
    let pid = started_job.child.pid();
    // Recorded until its whole group is gone (the last kill below), for a daemon
    // started after a crash of this one.
    let ticks = before..=crate::sys::boot_ticks();
    let _recorded = spec.ledger.as_ref().map(|l| l.record(pid, ticks));
    spec.pid.store(pid, std::sync::atomic::Ordering::Relaxed);
    tracing::Span::current().record("job_pid", pid);
    info!(job_pid = pid, "job started");
    let job = Job {
        pid,
        group: group.as_ref(),
    };
    let (exit, by, strays) = supervise(started_job, job, spec, (grace, cancel, deadline), tail).await;
    let stats = job.kill(strays).await;
    let mut outcome = match (&exit, by) {
        (_, EndedBy::Stop) => Outcome::Cancelled,
        (_, EndedBy::Timeout) => Outcome::Timeout,
        (Ok(exit), EndedBy::Itself) => from_status(ExitStatus::from_raw(exit.status)),
        (Err(e), EndedBy::Itself) => Outcome::NotStarted {
            reason: format!("waiting for the job: {e}"),
        },
    };
    if let Some(reason) = stats.and_then(|s| s.memory_failure())
        && by != EndedBy::Stop
    {
        outcome = Outcome::OverMemory { reason };
    }
    let usage = exit.ok().map(|e| Usage {
        cpu_usec: stats.and_then(|s| s.cpu_usec).unwrap_or(e.cpu_usec),
        memory_peak: stats.and_then(|s| s.memory_peak).unwrap_or(e.max_rss),
    });
    log_end(&outcome, started.elapsed(), usage);
    // `group`, dropped last, removes the job's (now empty) cgroup.
    (outcome, usage)
}

/// Feeds the job's stdin, logs its output and waits for its main process (ending it
/// at `cancel` or its timeout); then SIGTERM to strays and a short drain. Returns how
/// the main process ended and what ended it (a main process that has exited by the
/// time `cancel` fires ended by itself), and whether its process group still had
/// processes for that SIGTERM; `tail` gets the last lines of its output.
async fn supervise(
    started: child::Started,
    job: Job<'_>,
    spec: &JobSpec,
    (grace, cancel, deadline): (Duration, &CancellationToken, Option<tokio::time::Instant>),
    tail: &mut Vec<String>,
) -> (std::io::Result<crate::sys::Exit>, EndedBy, bool) {
    let child::Started {
        child,
        stdin,
        stdout,
        stderr,
    } = started;
    let pid = job.pid;
    // Each stream's last lines, kept here: whatever happens to the reading (a stray
    // holding the pipe open past the drain), the lines read so far are the tail.
    let (mut out_tail, mut err_tail) = (StreamTail::default(), StreamTail::default());
    let (exit, by, strays) = {
        let seq = std::sync::atomic::AtomicU64::new(0);
        let feed = feed(stdin, spec.stdin.as_deref());
        let drained = async {
            let _ = tokio::time::timeout(OUTPUT_LATER, child.exited()).await;
            tokio::join!(
                log_lines(stdout, "stdout", &seq, &mut out_tail),
                log_lines(stderr, "stderr", &seq, &mut err_tail)
            )
        };
        let output = async { tokio::join!(feed, drained) };
        tokio::pin!(output);
        let timeout_ms = spec.timeout.unwrap_or_default().as_millis() as u64;
        // The main process's end, and what ended it: an exit already there wins.
        let wait = async {
            tokio::select! {
                biased;
                exit = child.wait() => (exit, EndedBy::Itself),
                _ = cancel.cancelled() => (terminate(&child, job, grace).await, EndedBy::Stop),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    warn!(job_pid = pid, timeout_ms, "job timed out");
                    (terminate(&child, job, spec.kill_grace).await, EndedBy::Timeout)
                }
            }
        };
        tokio::pin!(wait);
        let mut output_done = false;
        let ended = loop {
            tokio::select! {
                done = &mut wait => break done,
                _ = &mut output, if !output_done => output_done = true,
            }
        };
        // The job is its main process: whatever it left running is a stray. The main
        // process is reaped: a group left empty stays so, and its id could go to a new
        // group only once the kernel's pid counter, which hands out pids in turn, has
        // wrapped around, not in the moment before this signal.
        let strays = job.signal(libc::SIGTERM);
        if !output_done {
            let _ = tokio::time::timeout(OUTPUT_DRAIN, &mut output).await;
        }
        (ended.0, ended.1, strays)
    };
    *tail = StreamTail::merge(out_tail, err_tail);
    (exit, by, strays)
}

/// A running job's processes: its process group and, when jobs get cgroups, its
/// cgroup (which holds every descendant, `setsid` or not).
#[derive(Clone, Copy)]
struct Job<'a> {
    pid: u32,
    group: Option<&'a cgroup::JobGroup>,
}

impl Job<'_> {
    /// Sends `signal` to the job's process group and every process of its cgroup.
    /// Returns whether the process group had processes (with a cgroup: true).
    fn signal(&self, signal: i32) -> bool {
        let group_left = crate::sys::kill_group(self.pid, signal);
        if let Some(group) = self.group {
            group.signal(signal);
        }
        group_left || self.group.is_some()
    }

    /// SIGKILL to everything of the job (to its process group only when `group_left`:
    /// a process group found empty once stays empty, nothing can join it); with a
    /// cgroup, waits until it is empty and returns what it measured.
    async fn kill(&self, group_left: bool) -> Option<cgroup::Stats> {
        if group_left {
            crate::sys::kill_group(self.pid, libc::SIGKILL);
        }
        let group = self.group?;
        group.kill();
        if !group.wait_empty(Duration::from_secs(1)).await {
            warn!(
                job_pid = self.pid,
                "the job's cgroup is not empty a second after SIGKILL"
            );
        }
        Some(group.stats())
    }
}

fn log_end(outcome: &Outcome, elapsed: Duration, usage: Option<Usage>) {
    let duration_ms = elapsed.as_millis() as u64;
    let cpu_usec = usage.map(|u| u.cpu_usec);
    let memory_peak = usage.map(|u| u.memory_peak);
    match outcome {
        Outcome::Exited { code: 0 } => {
            info!(exit_code = 0, duration_ms, cpu_usec, memory_peak, "job finished")
        }
        Outcome::Exited { code } => warn!(
            exit_code = code,
            duration_ms, cpu_usec, memory_peak, "job failed with exit code {code}"
        ),
        Outcome::Signaled { signal } => warn!(
            signal,
            duration_ms, cpu_usec, memory_peak, "job killed by signal {signal}"
        ),
        Outcome::NotStarted { reason } => error!(duration_ms, "job failed: {reason}"),
        Outcome::OverMemory { reason } => warn!(
            exit_code = "memory_max",
            duration_ms, cpu_usec, memory_peak, "job failed: {reason}"
        ),
        Outcome::Timeout => warn!(
            exit_code = "timeout",
            duration_ms, cpu_usec, memory_peak, "job failed: killed after its timeout"
        ),
        Outcome::Cancelled => info!(
            exit_code = "cancelled",
            duration_ms, cpu_usec, memory_peak, "job ended by its listener's stop"
        ),
    }
}

/// SIGTERM to the job's processes, SIGKILL after `grace`; then SIGKILL again to
/// sweep any still alive.
async fn terminate(child: &child::Child, job: Job<'_>, grace: Duration) -> std::io::Result<crate::sys::Exit> {
    let pid = job.pid;
    info!(job_pid = pid, "sending SIGTERM to the job's processes");
    job.signal(libc::SIGTERM);
    let exit = match tokio::time::timeout(grace, child.wait()).await {
        Ok(exit) => exit,
        Err(_) => {
            warn!(
                job_pid = pid,
                grace_ms = grace.as_millis() as u64,
                "job outlived its grace: SIGKILL"
            );
            job.signal(libc::SIGKILL);
            child.wait().await
        }
    };
    job.signal(libc::SIGKILL);
    exit
}

/// Writes `data` to the job's stdin, then closes it (a job that stops reading is fine).
async fn feed(stdin: Option<tokio::net::unix::pipe::Sender>, data: Option<&[u8]>) {
    use tokio::io::AsyncWriteExt;
    if let (Some(mut stdin), Some(data)) = (stdin, data) {
        let _ = stdin.write_all(data).await;
    }
}

/// Logs each line of `reader`, cutting lines over [`MAX_LINE`], and keeps the last
/// ones in `tail`; never holds more than one line beyond its tail. Reads and lines
/// are numbered from `seq` (shared by both streams, see [`output::Stamped`]).
async fn log_lines(
    reader: impl AsyncRead + Unpin,
    stream: &'static str,
    seq: &std::sync::atomic::AtomicU64,
    tail: &mut StreamTail,
) {
    let mut reader = BufReader::new(output::Stamped::new(reader, seq));
    let mut line = Vec::with_capacity(256);
    loop {
        match read_capped_line(&mut reader, &mut line).await {
            Ok(None) => return,
            Ok(Some(cut)) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                let marker = if cut { " [line cut at 8 KiB]" } else { "" };
                info!(stream, "{text}{marker}");
                let logged = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tail.push((reader.get_ref().last(), logged), text);
                // A read can hold thousands of short lines: each logged one counts
                // against the task's budget, so the task yields every so many lines
                // and the listener's other jobs, timeouts and stops are not held up.
                tokio::task::coop::consume_budget().await;
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
pub(crate) mod tests {
    use super::*;

    /// A job running `command` in `/`, no timeout, a 1 s grace, nothing else set.
    pub(crate) fn test_spec(command: Command) -> JobSpec {
        JobSpec {
            command,
            workdir: "/".into(),
            env: BTreeMap::new(),
            timeout: None,
            kill_grace: Duration::from_secs(1),
            pid: Default::default(),
            stdin: None,
            ledger: None,
            limits: Default::default(),
        }
    }

    #[test]
    fn the_tail_keeps_the_last_lines_of_both_streams_in_order_and_cut() {
        let (mut out, mut err) = (StreamTail::default(), StreamTail::default());
        for i in 0..30u64 {
            let tail = if i % 3 == 0 { &mut err } else { &mut out };
            tail.push((i, 0), &format!("line {i}"));
        }
        let long = "é".repeat(TAIL_LINE);
        out.push((30, 0), &long);
        let lines = StreamTail::merge(out, err);
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 11");
        assert_eq!(lines[TAIL_LINES - 2], "line 29");
        let last = &lines[TAIL_LINES - 1];
        assert!(
            last.len() <= TAIL_LINE && last.len() >= TAIL_LINE - 1,
            "{}",
            last.len()
        );
    }

    #[tokio::test]
    async fn regression_a_line_read_after_a_long_read_ends_the_tail() {
        use std::io::Write;
        // stdout's thousand lines come in one read, stderr's line in a later one. The
        // logging of the thousand yields partway (the task's budget), and stderr's
        // line is logged before the last of them: it must still end the tail.
        let (out_read, out_write) = crate::sys::pipe().unwrap();
        let (err_read, err_write) = crate::sys::pipe().unwrap();
        let lines: String = (1..=1000).map(|i| format!("{i}\n")).collect();
        std::fs::File::from(out_write)
            .write_all(lines.as_bytes())
            .unwrap();
        std::fs::File::from(err_write).write_all(b"ERR\n").unwrap();
        let seq = std::sync::atomic::AtomicU64::new(0);
        let (mut out_tail, mut err_tail) = (StreamTail::default(), StreamTail::default());
        tokio::join!(
            log_lines(output::OutputPipe::new(out_read), "stdout", &seq, &mut out_tail),
            log_lines(output::OutputPipe::new(err_read), "stderr", &seq, &mut err_tail)
        );
        let tail = StreamTail::merge(out_tail, err_tail);
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail[0], "982");
        assert_eq!(tail.last().map(String::as_str), Some("ERR"), "{tail:?}");
    }

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
        let spec = test_spec;
        let never = CancellationToken::new();
        let grace = Duration::from_secs(1);
        // stderr's line comes after stdout's 30 (a pause between): the tail is the last 20 read.
        let script = "for i in $(seq 1 30); do echo out$i; done; sleep 0.2; echo err >&2; exit 3";
        let ended = run(&spec(Command::Shell(script.into())), grace, &never).await;
        assert_eq!(ended.outcome, Outcome::Exited { code: 3 });
        let expected: Vec<String> = (12..=30)
            .map(|i| format!("out{i}"))
            .chain(["err".into()])
            .collect();
        assert_eq!(ended.output, expected);
        // A stray holding the output open past the drain: the lines read are kept.
        let script = "echo before; sleep 30 & exit 2";
        let ended = run(&spec(Command::Shell(script.into())), grace, &never).await;
        assert_eq!(
            (ended.outcome, ended.output),
            (Outcome::Exited { code: 2 }, vec!["before".to_owned()])
        );
        assert!(
            ended.usage.is_some(),
            "the job's CPU time and peak memory are known"
        );
        let out = run(
            &spec(Command::Run(vec!["/nonexistent/prog".into()])),
            grace,
            &never,
        )
        .await
        .outcome;
        assert!(
            matches!(out, Outcome::NotStarted { ref reason } if reason.contains("/nonexistent/prog")),
            "{out:?}"
        );
    }
}
