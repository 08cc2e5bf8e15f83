//! Family 2: LiveReload clients that abuse the WebSocket: endless fragments without
//! FIN (a message that never ends), pings as fast as they go without ever reading a
//! pong, more clients than the cap, and clients that upgrade but never finish the
//! handshake.

use crate::common::*;
use crate::ws::{self, CONTINUATION, Heard, PING, TEXT, Ws};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the server has to close an offender.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// Attack threads stop writing once the daemon has grown this much (the case has failed
/// long before; this only spares the machine).
const SAFETY_MB: u64 = 256;

/// Listens on `ws` until the server closes it or `until`; sets `closed` when it does.
fn listen(mut ws: Ws, start: Instant, until: Instant, closed: Arc<AtomicBool>) -> Option<(Heard, Duration)> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        ws.stream.set_read_timeout(Some(left)).unwrap();
        let heard = match ws.next() {
            Ok(Heard::Text(_)) => continue,
            Ok(heard) => heard,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => Heard::Ended,
        };
        closed.store(true, Ordering::Relaxed);
        return Some((heard, start.elapsed()));
    }
}

/// Writes a 1 MB text frame without FIN, then 1 MB continuation frames without FIN,
/// until the server closes, the deadline, or the daemon's RSS passes the ceiling.
struct Pump {
    frames: [Arc<Vec<u8>>; 2],
    closed: Arc<AtomicBool>,
    until: Instant,
    rss_kb: Arc<AtomicU64>,
    ceiling_kb: u64,
}

impl Pump {
    fn go_on(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
            && Instant::now() < self.until
            && self.rss_kb.load(Ordering::Relaxed) < self.ceiling_kb
    }

    /// Returns the bytes sent.
    fn run(self, stream: TcpStream) -> u64 {
        stream
            .set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (mut frame, mut off, mut sent) = (&self.frames[0], 0, 0u64);
        while self.go_on() {
            match (&stream).write(&frame[off..]) {
                Ok(n) => {
                    (off, sent) = (off + n, sent + n as u64);
                    if off == frame.len() {
                        (frame, off) = (&self.frames[1], 0);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        sent
    }
}

type Attacker = (JoinHandle<Option<(Heard, Duration)>>, JoinHandle<u64>);

/// A reader waiting for the server to close, and a writer pumping fragments.
fn fragment_attacker(
    ws: Ws,
    frames: &[Arc<Vec<u8>>; 2],
    rss_kb: &Arc<AtomicU64>,
    ceiling_kb: u64,
) -> Attacker {
    let start = Instant::now();
    let closed = Arc::new(AtomicBool::new(false));
    let stream = ws.stream.try_clone().unwrap();
    let pump = Pump {
        frames: frames.clone(),
        closed: closed.clone(),
        until: start + CLOSE_WITHIN,
        rss_kb: rss_kb.clone(),
        ceiling_kb,
    };
    let until = start + CLOSE_WITHIN + Duration::from_millis(500);
    let reader = std::thread::spawn(move || listen(ws, start, until, closed));
    let writer = std::thread::spawn(move || pump.run(stream));
    (reader, writer)
}

/// Sets figures on how the attackers ended (close 1009, another code, the connection
/// ended without a close frame, still open), close latencies and bytes sent; returns
/// how many were not closed in time.
fn tally(case: &mut Case, attackers: Vec<Attacker>) -> usize {
    let (mut c1009, mut other, mut ended, mut open, mut sent) = (0, 0, 0, 0, 0u64);
    let mut latencies = Latencies::default();
    for (reader, writer) in attackers {
        match reader.join().unwrap() {
            Some((heard, after)) if after <= CLOSE_WITHIN => {
                latencies.0.push(after);
                match heard {
                    Heard::Close(Some(1009)) => c1009 += 1,
                    Heard::Close(_) => other += 1,
                    _ => ended += 1,
                }
            }
            _ => open += 1,
        }
        sent += writer.join().unwrap();
    }
    case.set("closed_1009", c1009);
    case.set("closed_other_code", other);
    case.set("ended_without_close", ended);
    case.set("not_closed_in_5s", open);
    case.set_ms("close_p50_ms", latencies.pct_ms(0.5));
    case.set_ms("close_max_ms", latencies.max_ms());
    case.set("sent_mb", sent >> 20);
    open
}

#[test]
fn livereload_fragments_without_fin_are_capped() {
    let mut case = Case::new("livereload_fragments_without_fin_are_capped");
    let clients = scale(100, 100);
    let chunk = 1 << 20;
    case.set("clients", clients);
    case.set("frame_kb", chunk >> 10);
    let site = site(
        &format!("idle_timeout_ms = 10000\n{}", max_clients_line(clients + 16)),
        "",
    );
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let mut conns = Vec::new();
    for i in 0..clients {
        match ws::hello(&site.addr) {
            Ok(ws) => conns.push(ws),
            Err(e) => _ = case.check(false, format!("client {i} could not connect: {e}")),
        }
    }
    let watch = Watch::start(&daemon, &site.addr);
    let payload = vec![b'a'; chunk];
    let frames = [
        Arc::new(ws::frame(TEXT, false, &payload, [0; 4])),
        Arc::new(ws::frame(CONTINUATION, false, &payload, [0; 4])),
    ];
    let (rss_kb, ceiling_kb) = (
        watch.sampler().peak_handle(),
        watch.before_kb() + SAFETY_MB * 1024,
    );
    let attackers: Vec<Attacker> = conns
        .into_iter()
        .map(|ws| fragment_attacker(ws, &frames, &rss_kb, ceiling_kb))
        .collect();
    let open = tally(&mut case, attackers);
    let serves = get_once(&site.addr, "/probe.txt", Duration::from_secs(3)).map(|r| r.status);
    let grew = watch.finish(&mut case, Duration::from_secs(1)).growth_mb();
    case.set("errors", open);
    case.check(
        open == 0,
        format!("{open} of {clients} offenders were not closed within 5 s"),
    );
    case.check(
        grew <= 50.0,
        format!("the daemon grew {grew:.1} MB (limit +50 MB)"),
    );
    case.check(serves == Ok(200), format!("HTTP afterwards: {serves:?}"));
    drop(daemon);
    case.finish();
}

#[test]
fn livereload_client_cap_refuses_the_surplus() {
    let mut case = Case::new("livereload_client_cap_refuses_the_surplus");
    let site = site("idle_timeout_ms = 10000\nmax_clients = 5", "");
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let mut clients: Vec<Ws> = (0..5).filter_map(|_| ws::hello(&site.addr).ok()).collect();
    case.check(
        clients.len() == 5,
        format!("only {} of 5 clients got in", clients.len()),
    );
    let surplus = upgrade_status(&site.addr);
    case.set("sixth_status", surplus);
    case.check(surplus == 503, format!("the 6th upgrade got {surplus}, not 503"));
    clients.pop().unwrap().close();
    let start = Instant::now();
    let rejoined = loop {
        match ws::hello(&site.addr) {
            Ok(ws) => break Some(ws),
            Err(_) if start.elapsed() < CLOSE_WITHIN => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    case.set_ms("rejoin_ms", ms(start.elapsed()));
    case.check(rejoined.is_some(), "no client got in within 5 s after one left");
    let again = upgrade_status(&site.addr);
    case.set("surplus_after_rejoin_status", again);
    case.check(
        again == 503,
        format!("the surplus upgrade after the rejoin got {again}, not 503"),
    );
    let report = watch.finish(&mut case, Duration::from_millis(200));
    case.set("errors", report.probe.errors);
    drop(daemon);
    case.finish();
}

/// The status an upgrade of `/livereload` gets (0: the connection failed).
fn upgrade_status(addr: &str) -> u16 {
    match ws::upgrade(addr, Duration::from_secs(5)) {
        Ok(Ok(_)) => 101,
        Ok(Err(status)) => status,
        Err(_) => 0,
    }
}

#[test]
fn livereload_handshake_has_a_deadline() {
    let mut case = Case::new("livereload_handshake_has_a_deadline");
    let idle = Duration::from_millis(1500);
    let n = scale(100, 20);
    case.set("clients", n);
    let site = site(
        &format!(
            "idle_timeout_ms = {}\n{}",
            idle.as_millis(),
            max_clients_line(n + 16)
        ),
        "",
    );
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let limit = idle + Duration::from_secs(2);
    // Half say nothing; half start a hello frame and never finish it.
    let silent: Vec<_> = (0..n)
        .map(|i| {
            let mut ws = ws::upgrade(&site.addr, Duration::from_secs(5)).unwrap().unwrap();
            if i % 2 == 1 {
                let hello = ws::frame(TEXT, true, ws::HELLO.as_bytes(), ws::key());
                ws.stream.write_all(&hello[..hello.len() / 2]).unwrap();
            }
            let start = Instant::now();
            std::thread::spawn(move || {
                listen(ws, start, start + limit + Duration::from_secs(1), Arc::default())
            })
        })
        .collect();
    let closes: Vec<_> = silent.into_iter().map(|h| h.join().unwrap()).collect();
    let late = closes
        .iter()
        .filter(|c| c.as_ref().is_none_or(|(_, t)| *t > limit))
        .count();
    let times = Latencies(closes.iter().flatten().map(|(_, t)| *t).collect());
    case.set_ms("close_min_ms", times.0.iter().min().map_or(f64::NAN, |d| ms(*d)));
    case.set_ms("close_max_ms", times.max_ms());
    case.set("not_closed_in_time", late);
    let codes: Vec<String> = closes.iter().flatten().map(|(h, _)| format!("{h:?}")).collect();
    case.set("first_close", codes.first().map_or("-", |s| s.as_str()));
    let fresh = ws::hello(&site.addr).map(|ws| ws.close());
    watch.finish(&mut case, Duration::from_millis(200));
    case.set("errors", late);
    case.check(
        late == 0,
        format!("{late} of {n} silent clients were not closed within {limit:?}"),
    );
    case.check(fresh.is_ok(), format!("a new client afterwards: {fresh:?}"));
    drop(daemon);
    case.finish();
}

/// Clients that finish the handshake and never say which page they show, while
/// pages with names near `PATH_MAX` change: what the server keeps for each such
/// client (the pages to tell it of once it names its own) stays small.
#[test]
fn unnamed_clients_and_long_page_names_stay_bounded() {
    let mut case = Case::new("unnamed_clients_long_names");
    let n = scale(500, 100);
    case.set("clients", n);
    let site = site(&max_clients_line(n + 16), "");
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let clients: Vec<Ws> = (0..n)
        .map(|_| ws::hello(&site.addr))
        .collect::<Result<_, _>>()
        .expect("LiveReload clients");
    // Measured from here: the clients' own buffers are not what this case is about.
    let watch = Watch::start(&daemon, &site.addr);
    // 4 folders of 250-byte names: pages whose paths are about 1,200 bytes.
    let mut dir = site.sandbox.path("public");
    for level in 0..4 {
        dir = dir.join(format!("{level:0>250}"));
    }
    std::fs::create_dir_all(&dir).unwrap();
    let pages = scale(300, 100);
    case.set("pages", pages);
    for i in 0..pages {
        std::fs::write(dir.join(format!("{i:0>200}.html")), "x").unwrap();
    }
    let measured = watch.finish(&mut case, Duration::from_millis(1000));
    let growth = measured.growth_mb();
    // Bounded by count alone, each client kept 64 of these names (about 77 KB): the
    // daemon grew 3.4 MB at CI scale, against 0.6 MB bounded in bytes.
    let limit = scale(8, 2) as f64;
    case.check(
        growth < limit,
        format!("RSS grew {growth:.1} MB (limit {limit} MB)"),
    );
    let fresh = ws::hello(&site.addr).map(|ws| ws.close());
    case.check(fresh.is_ok(), format!("a new client afterwards: {fresh:?}"));
    drop(clients);
    drop(daemon);
    case.finish();
}

/// How a ping flooder ended: the bytes it sent, and when the server closed it (its
/// writes failed), if it did before the deadline.
struct Flooded {
    sent: u64,
    closed_after: Option<Duration>,
}

/// Writes `batch` (back-to-back pings) over and over on `stream`, never reading,
/// until the server closes it, `until`, or the daemon's RSS passes the ceiling.
fn flood(
    stream: TcpStream,
    batch: Arc<Vec<u8>>,
    until: Instant,
    rss_kb: Arc<AtomicU64>,
    ceiling_kb: u64,
) -> Flooded {
    stream
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let (mut off, mut sent) = (0, 0u64);
    while Instant::now() < until && rss_kb.load(Ordering::Relaxed) < ceiling_kb {
        match (&stream).write(&batch[off..]) {
            Ok(n) => (off, sent) = ((off + n) % batch.len(), sent + n as u64),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                return Flooded {
                    sent,
                    closed_after: Some(start.elapsed()),
                };
            }
        }
    }
    Flooded {
        sent,
        closed_after: None,
    }
}

/// Clients that say hello, then send 125-byte pings as fast as they can and never
/// read (a 4 KiB receive buffer): each ping's pong waits in the server. Unbounded,
/// the daemon grew from 9 to 297 MB for 300 MB of pings; bounded, a client whose
/// pongs cannot go out is closed, and the others (a page's client) are served.
#[test]
fn regression_livereload_ping_flood_without_reading_stays_bounded() {
    let mut case = Case::new("livereload_ping_flood");
    let n = scale(16, 4);
    case.set("clients", n);
    let site = site(&max_clients_line(n + 16), "");
    site.sandbox.write("public/page.html", "v0");
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let flooders: Vec<Ws> = (0..n)
        .map(|_| ws::hello_on(ws::connect_small(&site.addr, 4096).unwrap(), &site.addr))
        .collect::<Result<_, _>>()
        .expect("LiveReload clients");
    let watch = Watch::start(&daemon, &site.addr);
    let ping = ws::frame(PING, true, &[b'p'; 125], [0; 4]);
    let batch = Arc::new(ping.repeat(512));
    let (rss_kb, ceiling_kb) = (
        watch.sampler().peak_handle(),
        watch.before_kb() + SAFETY_MB * 1024,
    );
    let started = Instant::now();
    let until = started + CLOSE_WITHIN;
    let attackers: Vec<JoinHandle<Flooded>> = flooders
        .into_iter()
        .map(|ws| {
            let (batch, rss_kb) = (batch.clone(), rss_kb.clone());
            std::thread::spawn(move || flood(ws.stream, batch, until, rss_kb, ceiling_kb))
        })
        .collect();
    // Meanwhile a page's client connects and must hear its page change.
    let mut probe = ws::hello(&site.addr).expect("a page's client");
    let info = format!(r#"{{"command":"info","url":"http://{}/page.html"}}"#, site.addr);
    probe.send(TEXT, true, info.as_bytes()).unwrap();
    probe
        .stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut reloaded = None;
    for i in 0..25 {
        site.sandbox.write("public/page.html", &format!("v{}", i + 1));
        if let Ok(Heard::Text(text)) = probe.next() {
            reloaded = Some(started.elapsed());
            case.check(
                text.contains(r#""path":"/page.html""#),
                format!("the page's client heard {text}"),
            );
            break;
        }
    }
    let ended: Vec<Flooded> = attackers.into_iter().map(|h| h.join().unwrap()).collect();
    let measured = watch.finish(&mut case, Duration::from_millis(500));
    let open = ended.iter().filter(|f| f.closed_after.is_none()).count();
    let closed = Latencies(ended.iter().filter_map(|f| f.closed_after).collect());
    case.set("sent_mb", ended.iter().map(|f| f.sent).sum::<u64>() >> 20);
    case.set_ms("close_max_ms", closed.max_ms());
    case.set("not_closed_in_5s", open);
    case.set_ms("probe_reload_ms", reloaded.map_or(f64::NAN, ms));
    case.set("errors", open + measured.probe.errors);
    let grew = measured.growth_mb();
    case.check(
        grew <= 16.0,
        format!("the daemon grew {grew:.1} MB (limit +16 MB)"),
    );
    case.check(
        open == 0,
        format!("{open} of {n} flooders were not closed within 5 s"),
    );
    case.check(reloaded.is_some(), "the page's client heard no reload");
    case.check(measured.probe.errors == 0, "the HTTP probe saw errors");
    drop(daemon);
    case.finish();
}

/// LiveReload clients that say hello and never read while builds keep failing with
/// long output: each failure (up to 160 KiB as JSON) was queued for every client, up
/// to 256 of them each. Now a client is sent only the latest build's outcome, so a
/// stalled one holds at most what its socket's write buffer does.
#[test]
fn regression_failed_builds_for_stalled_livereload_clients_stay_bounded() {
    let mut case = Case::new("failed_builds_for_stalled_clients");
    let (n, builds) = (100, 40);
    case.set("clients", n);
    case.set("failed_builds", builds);
    // 20 lines of 1,000 NUL bytes (escaped in the JSON), then a failure.
    let job = "for i in $(seq 20); do head -c 1000 /dev/zero; echo; done; exit 1";
    let listener = format!(
        "[[listener]]\nname = \"build\"\n  [[listener.route]]\n  path = \"content\"\n  debounce_ms = 0\n  shell = '''{job}'''\n"
    );
    let site = site(&max_clients_line(n + 16), &listener);
    std::fs::create_dir_all(site.sandbox.path("content")).unwrap();
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let stalled: Vec<Ws> = (0..n)
        .map(|_| ws::hello_on(ws::connect_small(&site.addr, 4096).unwrap(), &site.addr))
        .collect::<Result<_, _>>()
        .expect("LiveReload clients");
    let watch = Watch::start(&daemon, &site.addr);
    // A client that reads paces the builds: the next change once it heard the last.
    let mut reader = ws::hello(&site.addr).expect("a reading client");
    reader
        .stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut heard = 0;
    for i in 0..builds {
        site.sandbox.write("content/a.md", &format!("v{i}"));
        match reader.next() {
            Ok(Heard::Text(text)) if text.contains("execlib-build") => heard += 1,
            other => {
                case.check(false, format!("build {i}: the reading client heard {other:?}"));
                break;
            }
        }
    }
    let measured = watch.finish(&mut case, Duration::from_millis(500));
    case.set("heard", heard);
    let grew = measured.growth_mb();
    // Each stalled client holds the outcome it is being sent, in its write buffer:
    // 13 MB here (221 MB when every failure was queued for every client).
    let limit = 48.0;
    case.check(
        heard == builds,
        format!("the reading client heard {heard} of {builds} builds"),
    );
    case.check(
        grew <= limit,
        format!("the daemon grew {grew:.1} MB (limit +{limit:.0} MB)"),
    );
    case.check(measured.probe.errors == 0, "the HTTP probe saw errors");
    drop(stalled);
    drop(daemon);
    case.finish();
}
