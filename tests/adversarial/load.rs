//! Family 5: load, with figures. Many control clients stopping, starting and
//! reloading at once; thousands of concurrent HTTP connections; a reload fanned out
//! to every LiveReload client; slowloris connections dripping a header byte a second.

use crate::common::*;
use crate::support::alive;
use crate::ws::{self, Heard, Ws};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- control_load

/// The error codes docs/protocol.md documents.
const DOCUMENTED: [&str; 11] = [
    "bad_request",
    "unknown_command",
    "unknown_listener",
    "too_large",
    "timeout",
    "shutting_down",
    "start_failed",
    "invalid_config",
    "unsupported",
    "busy",
    "not_running",
];

/// One request on its own connection; the reply, or why there was none.
fn control_request(socket: &Path, line: &str) -> Result<Value, String> {
    let stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A daemon turning the connection away (busy) may answer and close before the
    // request is written: the write fails, but the reply is there to read (as
    // execlibctl reads it).
    let written = (&stream).write_all(format!("{line}\n").as_bytes());
    let mut reply = String::new();
    match BufReader::new(&stream).read_line(&mut reply) {
        Ok(0) => Err(match written {
            Err(e) => format!("write: {e}"),
            Ok(()) => "closed without a reply".into(),
        }),
        Ok(_) => serde_json::from_str(&reply).map_err(|e| format!("{e}: {reply:?}")),
        Err(e) => Err(format!("read: {e}")),
    }
}

#[derive(Default)]
struct ControlTally {
    ok: u64,
    codes: BTreeMap<String, u64>,
    problems: Vec<String>,
    latencies: Latencies,
}

impl ControlTally {
    fn record(&mut self, request: &str, reply: Result<Value, String>) {
        match reply {
            Ok(r) if r["ok"] == true => self.ok += 1,
            Ok(r) => {
                let code = r["error"]["code"].as_str().unwrap_or("").to_owned();
                if !DOCUMENTED.contains(&code.as_str()) {
                    self.problems.push(format!("{request}: undocumented reply {r}"));
                }
                *self.codes.entry(code).or_default() += 1;
            }
            Err(e) => self.problems.push(format!("{request}: {e}")),
        }
    }

    fn merge(&mut self, other: ControlTally) {
        self.ok += other.ok;
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        self.problems.extend(other.problems);
        self.latencies.0.extend(other.latencies.0);
    }
}

/// `rounds` of stop then start of `docs`, with a reload every third round.
fn control_client(socket: PathBuf, rounds: usize, barrier: Arc<Barrier>) -> JoinHandle<ControlTally> {
    std::thread::spawn(move || {
        let mut tally = ControlTally::default();
        barrier.wait();
        for round in 0..rounds {
            let mut requests = vec![
                r#"{"cmd":"stop","listener":"docs"}"#,
                r#"{"cmd":"start","listener":"docs"}"#,
            ];
            if round % 3 == 2 {
                requests.push(r#"{"cmd":"reload"}"#);
            }
            for request in requests {
                let start = Instant::now();
                let reply = control_request(&socket, request);
                tally.latencies.0.push(start.elapsed());
                tally.record(request, reply);
            }
        }
        tally
    })
}

#[test]
fn control_load() {
    let mut case = Case::new("control_load");
    let (clients, rounds) = (scale(200, 50), scale(10, 5));
    case.set("clients", clients);
    case.set("rounds", rounds);
    let site = site("", &true_listener("src", 50));
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|_| control_client(daemon.socket.clone(), rounds, barrier.clone()))
        .collect();
    let mut tally = ControlTally::default();
    for t in threads {
        tally.merge(t.join().unwrap());
    }
    watch.finish(&mut case, Duration::from_millis(500));
    let after = control_request(&daemon.socket, r#"{"cmd":"status"}"#);
    case.set("requests", tally.latencies.len());
    case.set("ok", tally.ok);
    for (code, n) in &tally.codes {
        case.set(&format!("code_{code}"), n);
    }
    case.set("problems", tally.problems.len());
    case.set_ms("req_p50_ms", tally.latencies.pct_ms(0.5));
    case.set_ms("req_p99_ms", tally.latencies.pct_ms(0.99));
    case.set_ms("req_max_ms", tally.latencies.max_ms());
    case.set("errors", tally.problems.len());
    let first: Vec<&String> = tally.problems.iter().take(3).collect();
    case.check(
        tally.problems.is_empty(),
        format!(
            "{} requests without a documented reply, e.g. {first:?}",
            tally.problems.len()
        ),
    );
    case.check(tally.ok > 0, "no request succeeded");
    case.check(alive(daemon.pid()), "the daemon died");
    case.check(
        after.as_ref().is_ok_and(|r| r["ok"] == true),
        format!("status afterwards: {after:?}"),
    );
    drop(daemon);
    case.finish();
}

// ---------------------------------------------------------------- http_load

/// `conns` connections to `addr`, opened, then (once every group has opened its own)
/// each sends `GET /probe.txt` and reads the answer: (status, latency) per connection.
fn http_group(
    addr: SocketAddr,
    conns: usize,
    barrier: Arc<Barrier>,
) -> JoinHandle<Vec<Result<(u16, Duration), String>>> {
    std::thread::spawn(move || {
        let streams: Vec<Result<TcpStream, String>> = (0..conns)
            .map(|_| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                    .map_err(|e| format!("connect: {e}"))
            })
            .collect();
        barrier.wait();
        let head = format!("GET /probe.txt HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let sent: Vec<_> = streams
            .into_iter()
            .map(|s| {
                let s = s.and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    (&s).write_all(head.as_bytes())
                        .map(|()| s)
                        .map_err(|e| format!("write: {e}"))
                });
                (s, Instant::now())
            })
            .collect();
        sent.into_iter()
            .map(|(s, t0)| {
                s.and_then(|s| read_response(&mut BufReader::new(s)).map(|r| (r.status, t0.elapsed())))
            })
            .collect()
    })
}

#[test]
fn http_load() {
    let mut case = Case::new("http_load");
    let n = scale(2000, 300);
    let per_thread = 20;
    case.set("connections", n);
    let site = site("", "");
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let addr: SocketAddr = site.addr.parse().unwrap();
    let groups = n.div_ceil(per_thread);
    let barrier = Arc::new(Barrier::new(groups));
    let threads: Vec<_> = (0..groups)
        .map(|g| http_group(addr, per_thread.min(n - g * per_thread), barrier.clone()))
        .collect();
    let results: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    watch.finish(&mut case, Duration::from_millis(500));
    let latencies = Latencies(results.iter().flatten().map(|(_, d)| *d).collect());
    let ok = results.iter().filter(|r| matches!(r, Ok((200, _)))).count();
    let first_error = results.iter().find_map(|r| match r {
        Ok((200, _)) => None,
        Ok((status, _)) => Some(format!("status {status}")),
        Err(e) => Some(e.clone()),
    });
    case.set("status_200", ok);
    case.set("errors", n - ok);
    case.set_ms("get_p50_ms", latencies.pct_ms(0.5));
    case.set_ms("get_p99_ms", latencies.pct_ms(0.99));
    case.set_ms("get_max_ms", latencies.max_ms());
    if let Some(e) = &first_error {
        case.set("first_error", e);
    }
    case.check(
        ok == n,
        format!("{} of {n} GETs were not 200, e.g. {first_error:?}", n - ok),
    );
    case.check(alive(daemon.pid()), "the daemon died");
    drop(daemon);
    case.finish();
}

// ---------------------------------------------------------------- livereload_fanout

/// Waits on every client at once (poll) for the reload of `/fanout.css`: when each
/// heard it, counted from `t0`.
fn deliveries(clients: &mut [Ws], t0: Instant, until: Instant) -> Vec<Option<Duration>> {
    let mut got = vec![None; clients.len()];
    let mut fds: Vec<libc::pollfd> = clients
        .iter()
        .map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while fds.iter().any(|f| f.fd >= 0) && Instant::now() < until {
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if ready <= 0 {
            continue;
        }
        for (i, fd) in fds
            .iter_mut()
            .enumerate()
            .filter(|(_, f)| f.fd >= 0 && f.revents != 0)
        {
            clients[i]
                .stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            match clients[i].next() {
                Ok(Heard::Text(t)) if t.contains("/fanout.css") => got[i] = Some(t0.elapsed()),
                Ok(Heard::Text(_)) => continue,
                _ => {}
            }
            fd.fd = -1;
        }
    }
    got
}

fn lr_clients(daemon: &crate::support::Daemon) -> u64 {
    daemon.request(r#"{"cmd":"status"}"#)["server"]["livereload_clients"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn livereload_fanout() {
    let mut case = Case::new("livereload_fanout");
    let n = scale(1000, 200);
    case.set("clients", n);
    let site = site(
        &format!("idle_timeout_ms = 30000\n{}", max_clients_line(n + 16)),
        "",
    );
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let mut clients = Vec::new();
    let mut refused = None;
    for _ in 0..n {
        match ws::hello(&site.addr) {
            Ok(ws) => clients.push(ws),
            Err(e) => _ = refused.get_or_insert(e),
        }
    }
    let end = Instant::now() + Duration::from_secs(5);
    while lr_clients(&daemon) < clients.len() as u64 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    case.set("connected", clients.len());
    case.set("counted", lr_clients(&daemon));
    let t0 = Instant::now();
    site.sandbox.write("public/fanout.css", "body { color: red }");
    let got = deliveries(&mut clients, t0, t0 + Duration::from_secs(5));
    watch.finish(&mut case, Duration::from_millis(500));
    let times = Latencies(got.iter().flatten().copied().collect());
    let missed = n - times.len();
    case.set("delivered", times.len());
    case.set_ms("delivery_p50_ms", times.pct_ms(0.5));
    case.set_ms("delivery_p99_ms", times.pct_ms(0.99));
    case.set_ms("delivery_max_ms", times.max_ms());
    case.set("errors", missed);
    case.check(
        refused.is_none(),
        format!("clients could not connect: {refused:?}"),
    );
    case.check(
        missed == 0,
        format!("{missed} of {n} clients heard no reload within 5 s"),
    );
    drop(clients);
    drop(daemon);
    case.finish();
}

// ---------------------------------------------------------------- slowloris

/// The bytes a slowloris connection drips, one a second: a head that never ends.
const DRIP: &[u8] =
    b"GET /probe.txt HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

struct Slow {
    stream: TcpStream,
    opened: Instant,
    closed: Option<Duration>,
}

impl Slow {
    /// Reads what the server sent: EOF or an error closes; a response (408) is drained.
    fn check(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break self.closed = Some(self.opened.elapsed()),
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break self.closed = Some(self.opened.elapsed()),
            }
        }
    }

    fn drip(&mut self, i: usize) {
        match self.stream.write(&DRIP[i % DRIP.len()..][..1]) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.closed = Some(self.opened.elapsed()),
        }
    }
}

/// Drips a byte a second into every open connection, checking for closes every 50 ms,
/// until all are closed or `until`.
fn drip_until_closed(slow: &mut [Slow], until: Instant) {
    let mut next_drip = Instant::now();
    let mut i = 0;
    while slow.iter().any(|s| s.closed.is_none()) && Instant::now() < until {
        for s in slow.iter_mut().filter(|s| s.closed.is_none()) {
            s.check();
        }
        if Instant::now() >= next_drip {
            slow.iter_mut()
                .filter(|s| s.closed.is_none())
                .for_each(|s| s.drip(i));
            (i, next_drip) = (i + 1, next_drip + Duration::from_secs(1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn slowloris() {
    let mut case = Case::new("slowloris");
    let n = scale(300, 100);
    let idle = Duration::from_millis(3000);
    case.set("connections", n);
    let site = site(&format!("idle_timeout_ms = {}", idle.as_millis()), "");
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let mut slow: Vec<Slow> = (0..n)
        .filter_map(|_| TcpStream::connect(&site.addr).ok())
        .map(|stream| {
            stream.set_nonblocking(true).unwrap();
            Slow {
                stream,
                opened: Instant::now(),
                closed: None,
            }
        })
        .collect();
    drip_until_closed(&mut slow, Instant::now() + idle + Duration::from_secs(5));
    let measured = watch.finish(&mut case, Duration::from_millis(500));
    let limit = idle + Duration::from_secs(2);
    let closes = Latencies(slow.iter().filter_map(|s| s.closed).collect());
    let late = slow.iter().filter(|s| s.closed.is_none_or(|t| t > limit)).count();
    case.set("opened", slow.len());
    case.set("closed", closes.len());
    case.set_ms("close_min_ms", closes.0.iter().min().map_or(f64::NAN, |d| ms(*d)));
    case.set_ms("close_max_ms", closes.max_ms());
    case.set("errors", late + measured.probe.errors);
    let p99 = measured.probe.latencies.pct_ms(0.99);
    case.check(
        slow.len() == n,
        format!("only {} of {n} connections opened", slow.len()),
    );
    case.check(
        late == 0,
        format!("{late} of {n} slow connections were not closed within {limit:?}"),
    );
    case.check(
        p99 < 100.0,
        format!("HTTP probe p99 {p99:.1} ms meanwhile (limit 100 ms)"),
    );
    drop(daemon);
    case.finish();
}

// ---------------------------------------------------------------- one_address_fills_every_slot

/// One client address opening idle connections by the thousand: before the
/// per-address cap it took every one of the 4,096 slots (each held for
/// `idle_timeout_ms`, and again by opening more), and every other client was shut
/// out. Now at most `max_connections_per_address` (512 by default) of its
/// connections are held, the rest are closed as accepted with one warning, and
/// another address is served at once.
#[test]
fn one_address_filling_every_slot_leaves_other_clients_served() {
    use crate::support::web::{get_from, held_by_server};
    use std::net::Ipv4Addr;
    let mut case = Case::new("one_address_fills_every_slot");
    raise_nofile();
    let (n, cap) = (scale(4096, 1024), 512);
    case.set("connections", n);
    // Its connections stay open past the opening and the checks (the idle timeout).
    let site = site(
        &format!("max_connections_per_address = {cap}\nidle_timeout_ms = 120000"),
        "",
    );
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let sampler = RssSampler::start(daemon.pid());
    let before_kb = settled_rss_kb(daemon.pid(), Duration::from_millis(500));
    let (hog, other) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 3));
    let opened_at = Instant::now();
    let opened: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(&site.addr).unwrap()).collect();
    case.set_ms("open_ms", ms(opened_at.elapsed()));
    let server: SocketAddr = site.addr.parse().unwrap();
    let held = || held_by_server(server, &opened);
    let deadline = Instant::now() + Duration::from_secs(20);
    while held() > cap && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let held_now = held();
    case.set("held", held_now);
    case.check(
        held_now == cap,
        format!("{held_now} of its connections held (cap {cap})"),
    );
    let asked = Instant::now();
    let served = get_from(other, &site.addr, "/probe.txt");
    case.set_ms("other_served_ms", ms(asked.elapsed()));
    case.check(
        served.status == 200,
        format!("another address got {}", served.status),
    );
    let again = get_from(hog, &site.addr, "/probe.txt");
    case.check(
        again.status == 0,
        format!("its own next connection got {}", again.status),
    );
    let metrics = String::from_utf8(daemon.ctl(&["metrics"]).stdout).unwrap_or_default();
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("execlib_http_connections_refused_total{reason=\"per_address\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(-1.0) as i64;
    case.set("refused", refused);
    case.check(
        refused == (n - cap + 1) as i64,
        format!("refusals counted {refused}, made {}", n - cap + 1),
    );
    let warnings = daemon
        .log()
        .matches("already open from this client's address")
        .count();
    case.set("warnings", warnings);
    case.check(warnings == 1, format!("{warnings} warnings (one a minute)"));
    check_connections_growth(&mut case, &sampler, before_kb, cap);
    drop(opened);
    drop(daemon);
    case.finish();
}
