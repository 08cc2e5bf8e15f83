//! What every attack needs: the scale, a site on a free port, the daemon started
//! only on a config it accepts, its memory sampled in the background, an HTTP probe
//! timing a small GET every ~20 ms, raw HTTP requests, `renameat2(RENAME_EXCHANGE)`,
//! and the figures line each case prints (and appends to `EXECLIB_ADVERSARIAL_OUT`).

use crate::support::{Daemon, Sandbox};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

// ---------------------------------------------------------------- scale

/// Whether `EXECLIB_ADVERSARIAL=full` asks for the full figures.
pub fn full() -> bool {
    std::env::var("EXECLIB_ADVERSARIAL").is_ok_and(|v| v == "full")
}

/// `full` at full scale, else `ci`.
pub fn scale(full_scale: usize, ci: usize) -> usize {
    if full() { full_scale } else { ci }
}

/// Milliseconds of `d`, for figures.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- process limits

/// Held for a whole case: adversarial cases run one at a time (they measure latency
/// and memory on a shared machine), even when nextest runs them in parallel.
pub struct Serial {
    _file: std::fs::File,
}

fn serial() -> Serial {
    let path = std::env::temp_dir().join("execlib-adversarial.lock");
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    // SAFETY: flock on a descriptor this function owns; released when the file closes.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    Serial { _file: file }
}

/// Raises this process's open-files soft limit to the hard limit (the daemon, started
/// later, inherits it); returns the new limit.
pub fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed, nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

// ---------------------------------------------------------------- the site

/// A sandbox whose config serves `public/` (with `public/probe.txt`) on `addr`.
pub struct Site {
    pub sandbox: Sandbox,
    pub config: PathBuf,
    pub addr: String,
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A site: `[daemon]` with a 2 s grace, `[control]` with `control_idle_ms`, `[server]`
/// on a free port with LiveReload, `server_extra` lines, then `rest` (listeners).
pub fn site_with(control_idle_ms: u64, server_extra: &str, rest: &str) -> Site {
    let sandbox = Sandbox::new();
    sandbox.write("public/probe.txt", "probe");
    let port = free_port();
    // Every client of these cases connects from 127.0.0.1, where most stand for many
    // clients: the per-address cap is lifted unless the case is about it.
    let per_address = match server_extra.contains("max_connections_per_address") {
        true => String::new(),
        false => known_server_key("max_connections_per_address", 4096),
    };
    let text = format!(
        "[daemon]\nshutdown_grace_ms = 2000\n\n[control]\nsocket = \"control.sock\"\nidle_timeout_ms = {control_idle_ms}\n\n[server]\nlisten = \"127.0.0.1:{port}\"\nroot = \"public\"\nlivereload = true\ndelay_ms = 20\n{per_address}\n{server_extra}\n\n{rest}"
    );
    let config = sandbox.path("site.toml");
    std::fs::write(&config, text).unwrap();
    Site {
        sandbox,
        config,
        addr: format!("127.0.0.1:{port}"),
    }
}

/// [`site_with`] with the control socket's default idle timeout (60 s).
pub fn site(server_extra: &str, rest: &str) -> Site {
    site_with(60_000, server_extra, rest)
}

/// A listener `docs` with one route on `path` running `true`.
pub fn true_listener(path: &str, debounce_ms: u64) -> String {
    format!(
        "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"{path}\"\n  glob = \"**\"\n  debounce_ms = {debounce_ms}\n  shell = \"true\"\n"
    )
}

fn check_config(config: &Path) -> Result<(), String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_execlibd"))
        .arg("--check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    }
}

/// `max_clients = N` when this daemon knows the key (else nothing): the cases that
/// are not about the cap must not trip over a default one.
pub fn max_clients_line(n: usize) -> String {
    known_server_key("max_clients", n)
}

/// `KEY = N` when this daemon's `[server]` knows the key, else nothing.
fn known_server_key(key: &'static str, n: usize) -> String {
    static KNOWN: std::sync::Mutex<Vec<(&str, bool)>> = std::sync::Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let is_known = match known.iter().find(|(k, _)| *k == key) {
        Some(&(_, is_known)) => is_known,
        None => {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("public")).unwrap();
            let config = dir.path().join("probe.toml");
            std::fs::write(&config, format!("[server]\nroot = \"public\"\n{key} = 1\n")).unwrap();
            let is_known = check_config(&config).is_ok();
            known.push((key, is_known));
            is_known
        }
    };
    match is_known {
        true => format!("{key} = {n}"),
        false => String::new(),
    }
}

/// Starts the daemon on `site` once `execlibd --check` accepts its config; a refused
/// config fails the case at once (with the daemon's reason) instead of timing out.
pub fn start(case: &mut Case, site: &Site) -> Option<Daemon> {
    if let Err(reason) = check_config(&site.config) {
        case.set("config", "refused");
        case.check(false, format!("the daemon refuses the config: {reason}"));
        return None;
    }
    let daemon = Daemon::start(&site.sandbox, &site.config);
    case.log = Some(daemon.log.clone());
    case.drain = Some(NotifyDrain::take_over(&daemon.notify.path));
    Some(daemon)
}

/// Drains the daemon's notify socket in the background, as systemd does. The harness
/// reads it only until `READY=1`; a unix datagram socket then queues just
/// `net.unix.max_dgram_qlen` (often 10) messages, after which the daemon's blocking
/// `sd_notify` (a `STATUS=` per listener change) would stall it: a stall of the test
/// rig, not of the daemon under systemd. The path is rebound to a socket read here.
pub struct NotifyDrain {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl NotifyDrain {
    fn take_over(path: &Path) -> NotifyDrain {
        let _ = std::fs::remove_file(path);
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let _ = socket.recv(&mut buf);
            }
        });
        NotifyDrain {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for NotifyDrain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sets `path`'s mtime `secs` seconds in the past.
pub fn age(path: &Path, secs: u64) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

/// `renameat2(a, b, RENAME_EXCHANGE)` on two fixed paths: both names always exist.
pub struct Exchange {
    a: CString,
    b: CString,
}

impl Exchange {
    pub fn new(a: &Path, b: &Path) -> Self {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        Exchange { a: c(a), b: c(b) }
    }

    pub fn swap(&self) -> std::io::Result<()> {
        // SAFETY: both pointers are NUL-terminated strings that live across the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                self.a.as_ptr(),
                libc::AT_FDCWD,
                self.b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

// ---------------------------------------------------------------- memory

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/PID/status`; 0 once the process is gone.
pub fn status_kb(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The daemon's resident memory, in kB.
pub fn rss_kb(pid: i32) -> u64 {
    status_kb(pid, "VmRSS")
}

/// Checks that the daemon's peak RSS (`sampler`) grew from `before_kb` by less than
/// what `connections` open connections may take: their buffers and tasks (about
/// 14 KiB each at 4,096, 24 allowed), never a file's bytes, over 16 MB.
pub fn check_connections_growth(case: &mut Case, sampler: &RssSampler, before_kb: u64, connections: usize) {
    let growth = (sampler.peak_kb() as f64 - before_kb as f64) / 1024.0;
    case.set("rss_growth_mb", format!("{growth:.1}"));
    let limit = 16.0 + connections as f64 * 24.0 / 1024.0;
    case.check(
        growth < limit,
        format!("RSS grew {growth:.1} MB (limit {limit:.0} MB)"),
    );
}

/// The daemon's resident memory once it has been left alone for `quiet`.
pub fn settled_rss_kb(pid: i32, quiet: Duration) -> u64 {
    std::thread::sleep(quiet);
    rss_kb(pid)
}

/// Samples a process's `VmRSS` every 20 ms in the background, keeping the maximum.
pub struct RssSampler {
    pid: i32,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: i32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kb(pid)));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            pid,
            stop,
            peak,
            handle: Some(handle),
        }
    }

    /// The highest RSS sampled so far, in kB.
    pub fn peak_kb(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(rss_kb(self.pid))
    }

    /// A shared view of the peak, for attack threads that must stop before the machine suffers.
    pub fn peak_handle(&self) -> Arc<AtomicU64> {
        self.peak.clone()
    }

    /// The kernel's own high-water mark for the process (`VmHWM`), in kB.
    pub fn hwm_kb(&self) -> u64 {
        status_kb(self.pid, "VmHWM")
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------- latencies

/// Durations with nearest-rank percentiles, in milliseconds.
#[derive(Default, Clone, Debug)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn pct_ms(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        ms(v[rank - 1])
    }

    pub fn max_ms(&self) -> f64 {
        self.0.iter().max().map_or(f64::NAN, |d| ms(*d))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

// ---------------------------------------------------------------- HTTP

/// A response read off the wire.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server will close the connection after it.
    pub close: bool,
}

/// Reads one response (head, then a `Content-Length` body or up to EOF).
pub fn read_response(reader: &mut impl BufRead) -> Result<Resp, String> {
    let mut line = String::new();
    let n = reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("closed before a response".into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut length, mut close) = (None, false);
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse::<usize>().ok(),
            "connection" => close |= value.trim().eq_ignore_ascii_case("close"),
            "transfer-encoding" => return Err("chunked response".into()),
            _ => {}
        }
    }
    let mut body = Vec::new();
    match length {
        Some(len) => {
            body.resize(len, 0);
            reader.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
        }
        None => {
            close = true;
            reader.read_to_end(&mut body).map_err(|e| format!("body: {e}"))?;
        }
    }
    Ok(Resp { status, body, close })
}

/// A GET on a fresh connection (`Connection: close`), every step within `timeout`.
pub fn get_once(addr: &str, path: &str, timeout: Duration) -> Result<Resp, String> {
    let sock: SocketAddr = addr.parse().unwrap();
    let stream = TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    (&stream)
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    read_response(&mut BufReader::new(stream))
}

/// A keep-alive client: one connection reused until the server closes it.
pub struct KeepAlive {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
    pub connections: usize,
}

impl KeepAlive {
    pub fn new(addr: &str) -> Self {
        KeepAlive {
            addr: addr.to_owned(),
            conn: None,
            connections: 0,
        }
    }

    pub fn get(&mut self, path: &str) -> Result<Resp, String> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.addr).map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            self.conn = Some(BufReader::new(stream));
            self.connections += 1;
        }
        let conn = self.conn.as_mut().unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        let result = conn
            .get_mut()
            .write_all(head.as_bytes())
            .map_err(|e| format!("write: {e}"))
            .and_then(|()| read_response(conn));
        if result.as_ref().map_or(true, |r| r.close) {
            self.conn = None;
        }
        result
    }
}

/// An HTTP probe: a GET of a small file on a fresh connection every ~20 ms, with a 3 s
/// timeout; a non-200, an I/O error or a timeout counts as an error. Latencies are those
/// of the 200s and of the timeouts (a user waited that long), not of quick failures.
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ProbeReport>,
}

/// What the probe saw.
#[derive(Default, Debug)]
pub struct ProbeReport {
    pub ok: usize,
    pub latencies: Latencies,
    pub errors: usize,
    pub first_error: Option<String>,
}

impl Probe {
    /// Probes `GET /probe.txt` on `addr`.
    pub fn start(addr: &str) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, addr) = (stop.clone(), addr.to_owned());
        let handle = std::thread::spawn(move || {
            let mut report = ProbeReport::default();
            while !s.load(Ordering::Relaxed) {
                let start = Instant::now();
                let result = get_once(&addr, "/probe.txt", Duration::from_secs(3));
                let took = start.elapsed();
                match result {
                    Ok(r) if r.status == 200 && took < Duration::from_secs(3) => {
                        report.ok += 1;
                        report.latencies.0.push(took);
                    }
                    other => {
                        // A timeout is what a user waited: it counts in the percentiles too.
                        if took >= Duration::from_secs(3) {
                            report.latencies.0.push(took);
                        }
                        report.errors += 1;
                        let what = other.map_or_else(|e| e, |r| format!("status {}", r.status));
                        report.first_error.get_or_insert(what);
                    }
                }
                std::thread::sleep(Duration::from_millis(20).saturating_sub(took));
            }
            report
        });
        Probe { stop, handle }
    }

    pub fn stop(self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

// ---------------------------------------------------------------- the figures line

const STANDARD: [&str; 6] = [
    "rss_before_mb",
    "rss_peak_mb",
    "rss_after_mb",
    "probe_p50_ms",
    "probe_p99_ms",
    "errors",
];

/// One attack case: its figures and its failed checks. [`Case::finish`] prints the
/// figures line (and appends it to `EXECLIB_ADVERSARIAL_OUT`), then fails the test if
/// a check failed. A case that panics before finishing still prints `held=no`.
pub struct Case {
    name: &'static str,
    fields: Vec<(String, String)>,
    failures: Vec<String>,
    pub log: Option<PathBuf>,
    drain: Option<NotifyDrain>,
    done: bool,
    _serial: Serial,
}

impl Case {
    pub fn new(name: &'static str) -> Case {
        let serial = serial();
        raise_nofile();
        Case {
            name,
            fields: STANDARD.iter().map(|k| (k.to_string(), "-".into())).collect(),
            failures: Vec::new(),
            log: None,
            drain: None,
            done: false,
            _serial: serial,
        }
    }

    /// Sets figure `key` (spaces in the value become `_`, so the line stays `k=v` pairs).
    pub fn set(&mut self, key: &str, value: impl std::fmt::Display) {
        let value = value.to_string().replace(char::is_whitespace, "_");
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(field) => field.1 = value,
            None => self.fields.push((key.to_owned(), value)),
        }
    }

    /// Sets a figure in milliseconds, one decimal.
    pub fn set_ms(&mut self, key: &str, value: f64) {
        self.set(key, format!("{value:.1}"));
    }

    /// Records a check; a false one fails the case at [`Case::finish`].
    pub fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        if !ok {
            self.failures.push(what.into());
        }
        ok
    }

    /// The RSS figures, from kB.
    pub fn rss(&mut self, before_kb: u64, peak_kb: u64, after_kb: u64) {
        for (key, kb) in [
            ("rss_before_mb", before_kb),
            ("rss_peak_mb", peak_kb),
            ("rss_after_mb", after_kb),
        ] {
            self.set(key, format!("{:.1}", kb as f64 / 1024.0));
        }
    }

    /// The probe's figures: p50, p99, max, requests and errors.
    pub fn probe(&mut self, report: &ProbeReport) {
        self.set_ms("probe_p50_ms", report.latencies.pct_ms(0.50));
        self.set_ms("probe_p99_ms", report.latencies.pct_ms(0.99));
        self.set_ms("probe_max_ms", report.latencies.max_ms());
        self.set("probe_ok", report.ok);
        self.set("probe_errors", report.errors);
        if let Some(e) = &report.first_error {
            self.set("probe_first_error", e);
        }
    }

    fn line(&self, held: bool) -> String {
        let mut line = format!(
            "ADVERSARIAL case={} held={}",
            self.name,
            if held { "yes" } else { "no" }
        );
        for (k, v) in &self.fields {
            line.push_str(&format!(" {k}={v}"));
        }
        line
    }

    fn emit(&mut self, held: bool) {
        self.done = true;
        let line = self.line(held);
        eprintln!("{line}");
        if let Ok(out) = std::env::var("EXECLIB_ADVERSARIAL_OUT") {
            let mut file = std::fs::File::options()
                .create(true)
                .append(true)
                .open(out)
                .unwrap();
            file.write_all(format!("{line}\n").as_bytes()).unwrap();
        }
    }

    /// Prints the figures line; panics with every failed check, if any.
    pub fn finish(mut self) {
        let held = self.failures.is_empty();
        self.emit(held);
        if !held {
            if let Some(log) = &self.log {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(30)..];
                eprintln!(
                    "--- daemon log (last {} lines) ---\n{}",
                    tail.len(),
                    tail.join("\n")
                );
            }
            panic!(
                "case {} did not hold:\n- {}",
                self.name,
                self.failures.join("\n- ")
            );
        }
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        if !self.done {
            self.set("aborted", "panic");
            self.emit(false);
        }
    }
}

// ---------------------------------------------------------------- a case's watch

/// The daemon's idle RSS, its peak while the attack runs (sampled), and the HTTP
/// probe running alongside.
pub struct Watch {
    pid: i32,
    before_kb: u64,
    sampler: RssSampler,
    probe: Option<Probe>,
}

impl Watch {
    /// Lets the daemon settle for 500 ms, takes its idle RSS, starts sampling and probing.
    pub fn start(daemon: &Daemon, addr: &str) -> Watch {
        let pid = daemon.pid();
        let before_kb = settled_rss_kb(pid, Duration::from_millis(500));
        Watch {
            pid,
            before_kb,
            sampler: RssSampler::start(pid),
            probe: Some(Probe::start(addr)),
        }
    }

    pub fn before_kb(&self) -> u64 {
        self.before_kb
    }

    pub fn sampler(&self) -> &RssSampler {
        &self.sampler
    }

    /// Stops the probe and sets the figures: RSS before, peak, and after `quiet`.
    pub fn finish(mut self, case: &mut Case, quiet: Duration) -> Measured {
        let probe = self.probe.take().map(Probe::stop).unwrap_or_default();
        let peak_kb = self.sampler.peak_kb();
        let after_kb = settled_rss_kb(self.pid, quiet);
        case.rss(self.before_kb, peak_kb, after_kb);
        case.set(
            "rss_hwm_mb",
            format!("{:.1}", self.sampler.hwm_kb() as f64 / 1024.0),
        );
        case.probe(&probe);
        Measured {
            probe,
            before_kb: self.before_kb,
            peak_kb,
        }
    }
}

/// What a [`Watch`] measured.
pub struct Measured {
    pub probe: ProbeReport,
    pub before_kb: u64,
    pub peak_kb: u64,
}

impl Measured {
    /// MB the daemon grew from idle to its peak during the attack.
    pub fn growth_mb(&self) -> f64 {
        (self.peak_kb as f64 - self.before_kb as f64) / 1024.0
    }
}
