//! Family 12: a web page the developer visits attacks the server on loopback through
//! the browser: it opens `/livereload` from its own origin (cross-site WebSocket
//! hijacking, to read build output and changed file names), or rebinds its own name
//! to 127.0.0.1 and reads the site as its own origin (DNS rebinding). Both are
//! refused before anything is read or a seat taken; the site's own pages still work.

use crate::common::*;
use crate::ws::{self, Heard, TEXT, Ws};
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What attempts were answered: status (0: no answer) and how many times.
#[derive(Default)]
struct Statuses(Vec<(u16, usize)>);

impl Statuses {
    fn add(&mut self, status: u16, n: usize) {
        match self.0.iter_mut().find(|(s, _)| *s == status) {
            Some((_, count)) => *count += n,
            None => self.0.push((status, n)),
        }
    }

    fn merge(&mut self, other: &Statuses) {
        for &(status, n) in &other.0 {
            self.add(status, n);
        }
    }

    /// `403x4000,421x200`, by status.
    fn figure(&self) -> String {
        let mut v = self.0.clone();
        v.sort();
        let parts: Vec<String> = v.iter().map(|(s, n)| format!("{s}x{n}")).collect();
        parts.join(",")
    }
}

// ---------------------------------------------------------------- cross-site LiveReload

/// A LiveReload page's client as a browser opens it: `Host: host`, its page's own
/// origin, hello, then the page it shows.
fn page_client(addr: &str, host: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let mut ws = ws::hello_as(stream, host, Some(&format!("http://{host}")))?;
    let info = format!(r#"{{"command":"info","url":"http://{host}/page.html"}}"#);
    ws.send(TEXT, true, info.as_bytes())
        .map_err(|e| format!("info: {e}"))?;
    Ok(ws)
}

/// Waits up to 5 s for `ws` to hear the reload of `/page.html`; how long it took.
fn reload_of_page(ws: &mut Ws, t0: Instant) -> Option<Duration> {
    let until = t0 + Duration::from_secs(5);
    while Instant::now() < until {
        ws.stream
            .set_read_timeout(Some(
                until
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        match ws.next() {
            Ok(Heard::Text(t)) if t.contains(r#""path":"/page.html""#) => return Some(t0.elapsed()),
            Ok(Heard::Text(_)) => continue,
            _ => return None,
        }
    }
    None
}

/// `(Host, Origin)` pairs a hostile page (or a look-alike of the site's own) sends
/// on the handshake, for a site on `127.0.0.1:port`.
fn hostile_origins(port: u16) -> Vec<(String, String)> {
    let own = format!("127.0.0.1:{port}");
    let local = format!("localhost:{port}");
    let other = port.wrapping_add(1).max(1);
    let against_own = [
        "https://evil.example".to_owned(),
        "http://evil.example".into(),
        format!("http://evil.example:{port}"),
        "null".into(),
        String::new(),
        // The same host, another port (another local server's page), or no port.
        format!("http://127.0.0.1:{other}"),
        "http://127.0.0.1".into(),
        "https://127.0.0.1".into(),
        // The same port, another name or address for it.
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
        format!("http://127.0.0.2:{port}"),
        format!("http://2130706433:{port}"),
        // Look-alikes: the site's name as a prefix, in capitals, a trailing dot.
        "http://127.0.0.1.evil.example".into(),
        format!("http://127.0.0.1.evil.example:{port}"),
        format!("http://127.0.0.1:{port}.evil.example"),
        "HTTP://EVIL.EXAMPLE".into(),
        format!("HTTP://127.0.0.1.EVIL.EXAMPLE:{port}"),
        format!("http://127.0.0.1.:{port}"),
        // Userinfo, a path, other schemes.
        format!("http://user@127.0.0.1:{port}"),
        format!("http://evil.example@127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}@evil.example"),
        format!("http://127.0.0.1:{port}/"),
        "file://".into(),
        "chrome-extension://abcdefghijklmnopabcdefghijklmnop".into(),
    ];
    let against_localhost = [
        format!("http://localhost.:{port}"),
        format!("http://LOCALHOST.EVIL.EXAMPLE:{port}"),
        format!("http://localhost.evil.example:{port}"),
        format!("http://{own}"),
        format!("http://app.localhost:{port}"),
    ];
    let mut pairs: Vec<(String, String)> = against_own.into_iter().map(|o| (own.clone(), o)).collect();
    pairs.extend(against_localhost.into_iter().map(|o| (local.clone(), o)));
    pairs
}

/// One hostile handshake: its status (0: no answer), and the client when it connected.
fn hostile_handshake(addr: &str, host: &str, origin: &str) -> (u16, Option<Ws>) {
    let Ok(stream) = TcpStream::connect(addr) else {
        return (0, None);
    };
    match ws::upgrade_as(stream, host, Some(origin), Duration::from_secs(5)) {
        Ok(Ok(ws)) => (101, Some(ws)),
        Ok(Err(status)) => (status, None),
        Err(_) => (0, None),
    }
}

/// What one attacking thread saw: statuses, refusal latencies, the pairs that
/// connected, and their clients (kept open: a seat taken stays taken).
#[derive(Default)]
struct OriginAttack {
    statuses: Statuses,
    latencies: Latencies,
    connected: Vec<String>,
    clients: Vec<Ws>,
}

fn origin_attacker(
    addr: String,
    pairs: Arc<Vec<(String, String)>>,
    rounds: usize,
) -> JoinHandle<OriginAttack> {
    std::thread::spawn(move || {
        let mut seen = OriginAttack::default();
        for _ in 0..rounds {
            for (host, origin) in pairs.iter() {
                let start = Instant::now();
                let (status, client) = hostile_handshake(&addr, host, origin);
                seen.latencies.0.push(start.elapsed());
                seen.statuses.add(status, 1);
                if let Some(client) = client {
                    if seen.connected.len() < 8 {
                        seen.connected.push(format!("Host {host} Origin {origin:?}"));
                    }
                    seen.clients.push(client);
                }
            }
        }
        seen
    })
}

#[test]
fn livereload_refuses_cross_site_origins() {
    let mut case = Case::new("livereload_refuses_cross_site_origins");
    let (threads, rounds) = (4, scale(50, 5));
    // Two honest pages and one seat to spare: a hostile handshake that took a seat
    // would soon leave none.
    // A private site: `allowed_hosts` set, as `execlibd serve` sets it.
    let site = site("idle_timeout_ms = 30000\nmax_clients = 3\nallowed_hosts = []", "");
    site.sandbox.write("public/page.html", "v0");
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let port: u16 = site.addr.rsplit(':').next().unwrap().parse().unwrap();
    let watch = Watch::start(&daemon, &site.addr);
    let local = format!("localhost:{port}");
    let mut honest = Vec::new();
    for host in [site.addr.as_str(), local.as_str()] {
        match page_client(&site.addr, host) {
            Ok(ws) => honest.push(ws),
            Err(e) => _ = case.check(false, format!("the page on {host} could not connect: {e}")),
        }
    }
    // The rebinding page opens LiveReload under its own name: refused by its Host.
    let mut pairs = hostile_origins(port);
    let kinds = pairs.len();
    pairs.push((
        format!("evil.example:{port}"),
        format!("http://evil.example:{port}"),
    ));
    let pairs = Arc::new(pairs);
    case.set("origins", kinds + 1);
    let attackers: Vec<_> = (0..threads)
        .map(|_| origin_attacker(site.addr.clone(), pairs.clone(), rounds))
        .collect();
    let (mut statuses, mut latencies, mut connected, mut leaked) =
        (Statuses::default(), Latencies::default(), Vec::new(), Vec::new());
    for attacker in attackers {
        let seen = attacker.join().unwrap();
        statuses.merge(&seen.statuses);
        latencies.0.extend(seen.latencies.0);
        connected.extend(seen.connected);
        leaked.extend(seen.clients);
    }
    let attempts = latencies.len();
    case.set("handshakes", attempts);
    case.set("statuses", statuses.figure());
    case.set_ms("refusal_p99_ms", latencies.pct_ms(0.99));
    // Seats: back to the two honest pages (a refused handshake never took one).
    let end = Instant::now() + Duration::from_secs(2);
    let mut counted = lr_clients(&daemon);
    while counted != honest.len() as u64 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        counted = lr_clients(&daemon);
    }
    case.set("livereload_clients_after", counted);
    // The site's pages still hear their reload.
    let t0 = Instant::now();
    site.sandbox.write("public/page.html", "v1");
    let heard: Vec<Option<Duration>> = honest.iter_mut().map(|ws| reload_of_page(ws, t0)).collect();
    let reloads = Latencies(heard.iter().flatten().copied().collect());
    case.set("honest_reloaded", format!("{}/{}", reloads.len(), honest.len()));
    case.set_ms("reload_max_ms", reloads.max_ms());
    // The spare seat is still free, and the cap still holds after it.
    let spare = page_client(&site.addr, &site.addr).ok();
    let fourth = ws::upgrade_as(
        TcpStream::connect(&site.addr).unwrap(),
        &site.addr,
        Some(&format!("http://{}", site.addr)),
        Duration::from_secs(5),
    )
    .map_or(0, |r| r.map_or_else(|s| s, |_| 101));
    case.set("spare_seat", if spare.is_some() { 101 } else { 0 });
    case.set("over_the_cap", fourth);
    let refused = statuses.0.iter().filter(|(s, _)| *s == 403 || *s == 421);
    let refused: usize = refused.map(|(_, n)| n).sum();
    let measured = watch.finish(&mut case, Duration::from_millis(200));
    case.set("errors", attempts - refused);
    case.check(
        refused == attempts,
        format!(
            "{} of {attempts} hostile handshakes not refused ({}); connected: {connected:?}",
            attempts - refused,
            statuses.figure()
        ),
    );
    case.check(
        counted == honest.len() as u64 && honest.len() == 2,
        format!(
            "livereload_clients {counted} after the attack, {} honest",
            honest.len()
        ),
    );
    case.check(
        reloads.len() == honest.len(),
        format!("{} of {} pages heard their reload", reloads.len(), honest.len()),
    );
    case.check(spare.is_some(), "the spare seat was taken");
    case.check(fourth == 503, format!("over the cap: {fourth} (503 expected)"));
    case.check(
        measured.probe.errors == 0,
        format!("the HTTP probe saw {} errors", measured.probe.errors),
    );
    drop(leaked);
    drop(daemon);
    case.finish();
}

fn lr_clients(daemon: &crate::support::Daemon) -> u64 {
    daemon.request(r#"{"cmd":"status"}"#)["server"]["livereload_clients"]
        .as_u64()
        .unwrap_or(0)
}

// ---------------------------------------------------------------- DNS rebinding

/// What only the site's file holds.
const SECRET: &str = "rebinding-secret-5f0c2d";

/// One raw request on a fresh connection: its status (0: none) and whether the
/// answer holds the secret.
fn ask(addr: &str, raw: &str) -> (u16, bool) {
    let Ok(stream) = TcpStream::connect(addr) else {
        return (0, false);
    };
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if (&stream).write_all(raw.as_bytes()).is_err() {
        return (0, false);
    }
    let mut reader = BufReader::new(stream);
    let head = raw.starts_with("HEAD ");
    match read_head_and_body(&mut reader, head) {
        Ok((status, body)) => (status, contains(&body, SECRET.as_bytes())),
        Err(_) => (0, false),
    }
}

/// A response's status and body (none for a HEAD; else `Content-Length` bytes, or up
/// to EOF without one).
fn read_head_and_body(reader: &mut BufReader<TcpStream>, head: bool) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = Vec::new();
    match (head, length) {
        (true, _) => {}
        (false, Some(len)) => {
            body.resize(len, 0);
            reader.read_exact(&mut body)?;
        }
        (false, None) => _ = reader.read_to_end(&mut body)?,
    }
    Ok((status, body))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Hostile requests for a site on `127.0.0.1:port`, each with the statuses it may get.
fn rebinding_requests(port: u16) -> Vec<(String, &'static [u16])> {
    const MISDIRECTED: &[u16] = &[421];
    // A Host that is no authority at all may be refused as malformed first.
    const MALFORMED: &[u16] = &[400, 421];
    let names = [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        format!("rebind.evil.example:{port}"),
        "localhost.evil.example".into(),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("evillocalhost:{port}"),
        format!("localhost-evil.example:{port}"),
        format!("EVIL.EXAMPLE:{port}"),
        format!("evil.example.:{port}"),
        "LOCALHOST.EVIL.EXAMPLE.".into(),
        format!("2130706433:{port}"),
        format!("0x7f000001:{port}"),
    ];
    let userinfo = [
        format!("user@localhost:{port}"),
        format!("evil.example@127.0.0.1:{port}"),
        format!("127.0.0.1:{port}@evil.example"),
    ];
    let mut requests = Vec::new();
    for (hosts, expected) in [(&names[..], MISDIRECTED), (&userinfo[..], MALFORMED)] {
        for host in hosts {
            for path in ["/secret.txt", "/", "/%73ecret.txt", "/livereload.js"] {
                for method in ["GET", "HEAD"] {
                    let raw =
                        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                    requests.push((raw, expected));
                }
            }
            let raw = format!("GET /secret.txt HTTP/1.0\r\nHost: {host}\r\n\r\n");
            requests.push((raw, expected));
            let upgrade = format!(
                "GET /livereload HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            requests.push((upgrade, expected));
        }
    }
    // Absolute-form targets, as a proxy would be asked: the target's authority counts,
    // not `Host` (RFC 9112 3.2.2), so a hostile target under a local `Host` too.
    for (target, host) in [
        (
            "http://evil.example/secret.txt".to_owned(),
            "evil.example".to_owned(),
        ),
        (
            format!("http://evil.example:{port}/secret.txt"),
            format!("evil.example:{port}"),
        ),
        (
            format!("http://evil.example:{port}/secret.txt"),
            format!("127.0.0.1:{port}"),
        ),
        (
            format!("http://user@evil.example:{port}/secret.txt"),
            format!("evil.example:{port}"),
        ),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        requests.push((raw, MISDIRECTED));
    }
    requests
}

/// Names a server on loopback answers: what a developer types into the browser.
fn local_hosts(port: u16) -> Vec<String> {
    vec![
        "localhost".into(),
        format!("localhost:{port}"),
        format!("LocalHost.:{port}"),
        format!("app.localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "[::1]".into(),
    ]
}

#[derive(Default)]
struct Rebinding {
    statuses: Statuses,
    leaks: usize,
    unexpected: Vec<String>,
}

fn rebinder(
    addr: String,
    requests: Arc<Vec<(String, &'static [u16])>>,
    rounds: usize,
) -> JoinHandle<Rebinding> {
    std::thread::spawn(move || {
        let mut seen = Rebinding::default();
        for _ in 0..rounds {
            for (raw, expected) in requests.iter() {
                let (status, leaked) = ask(&addr, raw);
                seen.statuses.add(status, 1);
                seen.leaks += usize::from(leaked);
                if (leaked || !expected.contains(&status)) && seen.unexpected.len() < 8 {
                    let head = raw.lines().take(2).collect::<Vec<_>>().join(" | ");
                    seen.unexpected
                        .push(format!("{status} (secret: {leaked}) for {head}"));
                }
            }
        }
        seen
    })
}

#[test]
fn dns_rebinding_hosts_are_refused_on_loopback() {
    let mut case = Case::new("dns_rebinding_hosts_are_refused_on_loopback");
    let (threads, rounds) = (4, scale(25, 2));
    let site = site("allowed_hosts = []", "");
    site.sandbox.write("public/secret.txt", SECRET);
    site.sandbox
        .write("public/index.html", &format!("<p>{SECRET}</p>"));
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let port: u16 = site.addr.rsplit(':').next().unwrap().parse().unwrap();
    let watch = Watch::start(&daemon, &site.addr);
    let requests = Arc::new(rebinding_requests(port));
    case.set("kinds", requests.len());
    let start = Instant::now();
    let rebinders: Vec<_> = (0..threads)
        .map(|_| rebinder(site.addr.clone(), requests.clone(), rounds))
        .collect();
    // Meanwhile a rebinding page on a kept-alive connection: its first request under
    // the site's own name, the next under its own.
    let mut kept = KeepAliveAs::new(&site.addr);
    let first = kept.get(&site.addr, "/secret.txt");
    let second = kept.get(&format!("evil.example:{port}"), "/secret.txt");
    let mut total = Rebinding::default();
    for r in rebinders {
        let seen = r.join().unwrap();
        total.statuses.merge(&seen.statuses);
        total.leaks += seen.leaks;
        total.unexpected.extend(seen.unexpected);
    }
    let took = start.elapsed();
    let sent: usize = total.statuses.0.iter().map(|(_, n)| n).sum();
    case.set("requests", sent);
    case.set("statuses", total.statuses.figure());
    case.set("leaks", total.leaks);
    case.set_ms("attack_ms", ms(took));
    case.set("kept_alive", format!("{first:?}->{second:?}"));
    // The names a developer uses are answered, the file whole.
    let mut local_ok = 0;
    let hosts = local_hosts(port);
    for host in &hosts {
        let raw = format!("GET /secret.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        match ask(&site.addr, &raw) {
            (200, true) => local_ok += 1,
            other => _ = case.check(false, format!("Host {host}: {other:?}, not the file")),
        }
    }
    let (http10, _) = ask(&site.addr, "GET /secret.txt HTTP/1.0\r\n\r\n");
    case.set("local_hosts_served", format!("{local_ok}/{}", hosts.len()));
    case.set("http10_without_host", http10);
    let measured = watch.finish(&mut case, Duration::from_millis(200));
    case.set("errors", total.unexpected.len());
    case.check(total.leaks == 0, format!("{} answers held the file", total.leaks));
    case.check(
        total.unexpected.is_empty(),
        format!("unexpected answers: {:?}", total.unexpected),
    );
    case.check(
        first == Some(200) && second == Some(421),
        format!("kept-alive connection: {first:?} then {second:?} (200 then 421 expected)"),
    );
    case.check(http10 == 200, format!("HTTP/1.0 without Host: {http10}"));
    case.check(
        measured.probe.errors == 0,
        format!("the HTTP probe saw {} errors", measured.probe.errors),
    );
    drop(daemon);
    case.finish();
}

/// One kept-alive connection whose requests each name their own `Host`.
struct KeepAliveAs {
    conn: Option<BufReader<TcpStream>>,
}

impl KeepAliveAs {
    fn new(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).ok();
        if let Some(s) = &stream {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        KeepAliveAs {
            conn: stream.map(BufReader::new),
        }
    }

    /// The status of `GET path` with `Host: host`, if answered on this connection.
    fn get(&mut self, host: &str, path: &str) -> Option<u16> {
        let conn = self.conn.as_mut()?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        conn.get_mut().write_all(head.as_bytes()).ok()?;
        let r = read_response(conn).ok()?;
        if r.close {
            self.conn = None;
        }
        Some(r.status)
    }
}
