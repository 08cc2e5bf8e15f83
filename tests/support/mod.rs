//! Shared test fixtures: a sandbox directory, the real `execlibd` started on it
//! with a `NOTIFY_SOCKET` the test owns, raw control-socket clients, and
//! deadline-and-poll helpers.

#![allow(dead_code)]

pub mod journal;
pub mod web;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any "eventually" waits before failing the test.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `check` until it returns `Some`, failing with `what` after [`DEADLINE`].
pub fn eventually<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    eventually_within(DEADLINE, what, check)
}

/// [`eventually`] for work that takes long by design (thousands of jobs): two minutes.
pub fn eventually_long<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    eventually_within(Duration::from_secs(120), what, check)
}

/// [`eventually`] with its own deadline, for work whose duration is measured (say
/// where it is used: measured how, and the margin).
pub fn eventually_within<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Samples `sample` until its value has not changed for `quiet`, failing with `what`
/// when it is still changing after [`DEADLINE`]; returns the settled value. For
/// checking what must NOT happen: an extra run that comes late is still counted.
pub fn settled<T: PartialEq + std::fmt::Debug>(
    what: &str,
    quiet: Duration,
    mut sample: impl FnMut() -> T,
) -> T {
    let end = Instant::now() + DEADLINE + quiet;
    let mut value = sample();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let now = sample();
        if now != value {
            value = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return value;
        }
        assert!(
            Instant::now() < end,
            "{what} still changing after {DEADLINE:?}: {value:?}"
        );
    }
}

/// A temporary directory with a watched `src/` and an `out/` for job results.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("execlib-test").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("control.sock")
    }

    /// Writes `site.toml`: a `[control]` socket in the sandbox followed by `body`.
    pub fn config(&self, body: &str) -> PathBuf {
        let path = self.path("site.toml");
        let text = format!("[control]\nsocket = \"control.sock\"\nidle_timeout_ms = 1000\n\n{body}");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    /// Waits until `out/<rel>` has content (a job writes it in one go) and returns it.
    pub fn wait_out(&self, rel: &str) -> String {
        eventually(&format!("out/{rel}"), || {
            self.read(&format!("out/{rel}")).filter(|c| !c.is_empty())
        })
    }
}

/// Waits until the file at `path` has content and returns it: a job's `>` creates
/// the file empty before it writes, so an empty file is no answer yet.
pub fn wait_content(path: &Path) -> Vec<u8> {
    eventually(&format!("content in {}", path.display()), || {
        std::fs::read(path).ok().filter(|c| !c.is_empty())
    })
}

/// A datagram socket standing in for systemd's notify socket.
pub struct NotifySocket {
    pub path: PathBuf,
    socket: UnixDatagram,
    pub messages: Vec<String>,
}

impl NotifySocket {
    pub fn new(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        NotifySocket {
            path,
            socket,
            messages: Vec::new(),
        }
    }

    /// Receives what arrives within 50 ms (at most one datagram).
    pub fn poll(&mut self) {
        let mut buf = vec![0u8; 4096];
        if let Ok(n) = self.socket.recv(&mut buf) {
            self.messages
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Takes every datagram already queued, without waiting: once the daemon has
    /// exited, everything it ever sent.
    pub fn drain(&mut self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.messages
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.socket.set_nonblocking(false).unwrap();
    }

    /// Waits up to [`DEADLINE`] for the next datagram; returns it with when it came.
    pub fn next(&mut self) -> Option<(String, Instant)> {
        let end = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.messages.push(message.clone());
                return Some((message, Instant::now()));
            }
        }
        None
    }

    /// How many datagrams so far contain the line `line`.
    pub fn count(&self, line: &str) -> usize {
        self.messages
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }

    /// Waits for a datagram containing the line `line`; returns that datagram.
    pub fn wait_for(&mut self, line: &str) -> String {
        let end = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(m) = self.messages.iter().find(|m| m.lines().any(|l| l == line)) {
                return m.clone();
            }
            assert!(
                Instant::now() < end,
                "no {line} from the daemon; got {:?}",
                self.messages
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.messages
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

/// The real daemon, started on a sandbox config; killed on drop if still running.
pub struct Daemon {
    pub child: Child,
    pub notify: NotifySocket,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `execlibd --config <config>` and waits for `READY=1`.
    pub fn start(sandbox: &Sandbox, config: &Path) -> Self {
        let mut daemon = Self::spawn(sandbox, config);
        daemon.notify.wait_for("READY=1");
        daemon
    }

    /// Starts the daemon without waiting for anything.
    pub fn spawn(sandbox: &Sandbox, config: &Path) -> Self {
        Self::spawn_with(sandbox, config, &[], "text")
    }

    /// Starts the daemon behind a `wrapper` command prefix, logging in `format`.
    pub fn spawn_with(sandbox: &Sandbox, config: &Path, wrapper: &[String], format: &str) -> Self {
        Self::spawn_env(sandbox, config, wrapper, Some(format), &[])
    }

    /// Starts the daemon behind `wrapper`, with `--log-format` when given and extra `env`.
    pub fn spawn_env(
        sandbox: &Sandbox,
        config: &Path,
        wrapper: &[String],
        format: Option<&str>,
        env: &[(&str, String)],
    ) -> Self {
        let notify = NotifySocket::new(sandbox.dir.path());
        let log = sandbox.path("daemon.log");
        let daemon = env!("CARGO_BIN_EXE_execlibd");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(daemon);
                c
            }
            None => Command::new(daemon),
        };
        if let Some(format) = format {
            command.arg(format!("--log-format={format}"));
        }
        let child = command
            .arg("--config")
            .arg(config)
            .env("NOTIFY_SOCKET", &notify.path)
            // The default state directory is the sandbox's: daemons of other tests
            // (all instance `site`) never see each other's snapshots or job ledgers.
            .env("STATE_DIRECTORY", sandbox.path("state"))
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            notify,
            socket: sandbox.socket(),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Stops the daemon (SIGSTOP) and waits until it is stopped: from then on it reads
    /// nothing, so what happens meanwhile queues up.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let pid = self.pid();
        eventually("the daemon to be stopped", || {
            proc_stat_field(pid, 3)?.starts_with('T').then_some(())
        });
    }

    /// Lets a frozen daemon run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Waits for the daemon to exit; returns its status and how long that took.
    pub fn wait_exit(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let status = eventually("the daemon to exit", || self.child.try_wait().unwrap());
        (status, start.elapsed())
    }

    /// Runs `execlibctl --socket <socket> args...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(&["--socket", self.socket.to_str().unwrap()], args)
    }

    /// `execlibctl --socket <socket> <args>`, run in `dir` (as a user in that directory).
    pub fn ctl_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_execlibctl"))
            .current_dir(dir)
            .args(["--socket", self.socket.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    }

    /// Sends one raw request line and returns the reply.
    pub fn request(&self, json: &str) -> Value {
        let mut client = Client::connect(&self.socket);
        client.send_line(json.as_bytes());
        client.reply().expect("a reply")
    }

    /// [`request_within`] on this daemon's socket.
    pub fn request_within(&self, json: &str, limit: Duration) -> Result<Value, String> {
        request_within(&self.socket, json, limit)
    }

    /// `listeners` entry for `name`.
    pub fn listener(&self, name: &str) -> Value {
        let reply = self.request(r#"{"cmd":"listeners"}"#);
        reply["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no listener {name} in {reply}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
    }
}

/// Runs `execlibctl` with `global` options then `args`.
pub fn ctl(global: &[&str], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_execlibctl"))
        .args(global)
        .args(args)
        .output()
        .unwrap()
}

/// A raw control-socket connection.
pub struct Client {
    pub reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    /// Sends `bytes` and a newline. Write errors are ignored: the daemon may
    /// rightly close the connection mid-way (a line over the size limit).
    pub fn send_line(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        let _ = stream.write_all(bytes).and_then(|()| stream.write_all(b"\n"));
    }

    /// The next reply, or `None` when the daemon closed the connection.
    pub fn reply(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))),
        }
    }
}

/// Field `n` of `/proc/PID/stat`, numbered as in proc(5) (3 state, 4 parent, 5 process
/// group, 14 and 15 user and system CPU ticks); `None` once the process is gone. The
/// command name (field 2) may hold spaces and parentheses: fields are counted after
/// its last `)`.
pub fn proc_stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name
        .split_whitespace()
        .nth(n.checked_sub(3)?)
        .map(str::to_owned)
}

/// Whether process `pid` still exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    proc_stat_field(pid, 3).is_some_and(|state| !state.starts_with('Z'))
}

/// A listener `docs` watching `src` with one route running `shell`.
pub fn one_route(shell: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  name = \"pages\"\n  path = \"src\"\n  debounce_ms = 50\n  delay_ms = 10\n  {extra}\n  shell = '''{shell}'''\n"
    )
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root: true when not root, after printing why the test skips.
pub fn skip_unless_root(needs: &str) -> bool {
    if is_root() {
        return false;
    }
    skip(&format!("needs root to {needs}"));
    true
}

/// Says why a test skips; fails it instead under `TESTS_NO_SKIP=1` (set by
/// `.ci/run`), so CI cannot go green by skipping. (Not an `EXECLIB_` name: the
/// daemon passes its environment on to jobs, and a test checks their `EXECLIB_*`.)
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("TESTS_NO_SKIP").is_none_or(|v| v != "1"),
        "cannot skip under TESTS_NO_SKIP=1: {why}"
    );
    eprintln!("skipped: {why}");
}

/// A field of `/proc/PID/status` given in kB (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets a process's peak resident memory (`VmHWM`) to its current RSS.
pub fn reset_peak_rss(pid: i32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// Sets `/proc/sys/fs/inotify/<name>` for the life of the guard, restoring it on drop.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    pub fn set(name: &str, value: u64) -> Self {
        let path = Path::new("/proc/sys/fs/inotify").join(name);
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, value.to_string()).unwrap();
        Sysctl { path, old }
    }

    /// Sets another value; the one from before [`Sysctl::set`] is still what is restored.
    pub fn write(&self, value: u64) {
        std::fs::write(&self.path, value.to_string()).unwrap();
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        std::fs::write(&self.path, self.old.trim()).unwrap();
    }
}

/// The lines of `out/log`, which the [`log_route`] job appends to.
pub fn log_lines(sandbox: &Sandbox) -> Vec<String> {
    sandbox
        .read("out/log")
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `out/log` holds `line`.
pub fn wait_log(sandbox: &Sandbox, line: &str) {
    eventually(&format!("{line:?} in out/log"), || {
        log_lines(sandbox).iter().any(|l| l == line).then_some(())
    });
}

/// A listener `docs` on `src` whose job appends "NAME EVENTS" to `out/log`. With
/// `max_jobs = 1` runs start and finish in due order, so once a later change's line
/// is logged, every earlier change's line is too.
pub fn log_route(extra: &str) -> String {
    one_route(r#"echo "$EXECLIB_NAME $EXECLIB_EVENT" >> ../out/log"#, extra).replacen(
        "name = \"docs\"\n",
        "name = \"docs\"\nmax_jobs = 1\n",
        1,
    )
}

/// A bindfs (FUSE) view of `real` at `src` whose server can be stopped: every access
/// under `src` then waits for it. Let go, unmounted and ended on drop.
pub struct HungMount {
    server: std::process::Child,
    at: PathBuf,
}

impl HungMount {
    /// Mounts `sandbox`'s `real` (with a folder `sub`) at `src`; `None` (after
    /// saying why) when not root or without bindfs.
    pub fn mount(sandbox: &Sandbox) -> Option<HungMount> {
        if skip_unless_root("mount a FUSE file system") {
            return None;
        }
        std::fs::create_dir_all(sandbox.path("real/sub")).unwrap();
        Self::mount_at(sandbox, "real", "src")
    }

    /// Mounts `sandbox`'s folder `real` at `at` (both relative to it, made here).
    pub fn mount_at(sandbox: &Sandbox, real: &str, at: &str) -> Option<HungMount> {
        if skip_unless_root("mount a FUSE file system") {
            return None;
        }
        let (real, at) = (sandbox.path(real), sandbox.path(at));
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&at).unwrap();
        // `auto_unmount`: fusermount, in a session of its own, unmounts once the server
        // is gone, so a test killed on its timeout (its process group with it) leaves
        // no dead mount behind (each one made every later job start on the host look
        // for network mounts).
        let Ok(server) = std::process::Command::new("bindfs")
            .args(["-f", "-o", "auto_unmount"])
            .arg(&real)
            .arg(&at)
            .stdout(std::process::Stdio::null())
            .spawn()
        else {
            skip("bindfs is not installed (.ci/run installs it: apt install bindfs)");
            return None;
        };
        let mount = HungMount { server, at };
        let point = mount.at.to_str().unwrap().to_owned();
        eventually("the bindfs mount", || {
            let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            table
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(&point))
                .then_some(())
        });
        // Answered once its server has finished the mount's handshake: a server stopped
        // before that leaves callers waiting for the handshake, not on a request.
        // (`statfs` caches nothing: the tests' first lookups still go to the server.)
        let statfs = std::process::Command::new("timeout")
            .args(["10", "stat", "-f"])
            .arg(&mount.at)
            .output();
        assert!(
            statfs.is_ok_and(|o| o.status.success()),
            "the bindfs mount answers"
        );
        Some(mount)
    }

    /// Stops the server: from now on every lookup under the mount waits.
    pub fn hang(&self) {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(self.server.id() as i32, libc::SIGSTOP) }, 0);
        // Every one of its threads stopped: a request made from now on stays unread (a
        // thread still running could read one, whose caller then cannot be killed).
        let tasks = format!("/proc/{}/task", self.server.id());
        eventually("the bindfs server stopped", || {
            let mut states = std::fs::read_dir(&tasks).unwrap().flatten().map(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                stat.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T'))
            });
            states.all(|stopped| stopped != Some(false)).then_some(())
        });
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGCONT) };
        let _ = std::process::Command::new("fusermount")
            .arg("-uz")
            .arg(&self.at)
            .status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Sends one request line to `socket`, on a thread of its own, and waits at most
/// `limit` for the reply: a daemon stuck fails the caller, it does not hang it. `Err`
/// says why (refused, no reply, or not in time).
pub fn request_within(socket: &Path, json: &str, limit: Duration) -> Result<Value, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (socket, line) = (socket.to_owned(), json.to_owned());
    std::thread::spawn(move || {
        let reply = UnixStream::connect(&socket).map(|_| {
            let mut client = Client::connect(&socket);
            client.send_line(line.as_bytes());
            client.reply()
        });
        let _ = tx.send(reply);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(Some(reply))) => Ok(reply),
        Ok(Ok(None)) => Err(format!("{json}: no reply")),
        Ok(Err(e)) => Err(format!("{json}: {e}")),
        Err(_) => Err(format!("{json} not answered within {limit:?}")),
    }
}
