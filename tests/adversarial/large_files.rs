//! Family 6: what the large-file path and the build-failure message let a hostile
//! client or job do. Hundreds of connections that ask for a large file and never
//! read (each stream holds its read chunks: memory must stay bounded), the same for
//! a large HTML page with the LiveReload script injected, and a build
//! job that floods its output with huge lines, markup and control characters before
//! failing (the failure message to browsers must stay small), and a job whose output
//! never runs dry (its listener's other jobs, its own timeout and the control socket
//! must not wait for the reading of it).

use crate::common::*;
use crate::support::web::{held_by_server, small_receive_buffer};
use crate::ws::{self, Heard};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn large_file_stalled_readers_stay_bounded() {
    let mut case = Case::new("large_file_stalled_readers");
    raise_nofile();
    let n = scale(600, 200);
    case.set("connections", n);
    let site = site("", "");
    site.sandbox.write("public/large.bin", &"x".repeat(10 << 20));
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let request = format!("GET /large.bin HTTP/1.1\r\nHost: {}\r\n\r\n", site.addr);
    // Each asks for the file and never reads: the server fills the socket, then waits.
    let stalled: Vec<TcpStream> = (0..n)
        .filter_map(|_| TcpStream::connect(&site.addr).ok())
        .filter_map(|mut s| s.write_all(request.as_bytes()).ok().map(|()| s))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let measured = watch.finish(&mut case, Duration::from_millis(500));
    case.set("opened", stalled.len());
    let growth = measured.growth_mb();
    let p99 = measured.probe.latencies.pct_ms(0.99);
    case.set("errors", measured.probe.errors);
    case.check(
        stalled.len() == n,
        format!("only {} of {n} connections opened", stalled.len()),
    );
    // The file goes out with sendfile: a stalled reader holds no buffer of the file's,
    // only its connection (the copying build grew by 106 MB at 600 readers).
    case.check(growth < 40.0, format!("RSS grew {growth:.1} MB (limit 40 MB)"));
    case.check(
        p99 < 100.0,
        format!("HTTP probe p99 {p99:.1} ms meanwhile (limit 100 ms)"),
    );
    case.check(measured.probe.errors == 0, "the probe saw errors");
    drop(stalled);
    drop(daemon);
    case.finish();
}

#[test]
fn build_output_flood_makes_a_small_failure_message() {
    let mut case = Case::new("build_output_flood");
    let megabytes = scale(200, 20);
    case.set("output_mb", megabytes);
    // Lines of 1 MiB of markup and control characters, then a failure.
    let job = format!(
        "head -c {} /dev/zero | tr '\\\\0' '<' | fold -w 1048576; printf '\\\\033[31m<script>x</script>\\\\001\\\\n'; exit 7",
        megabytes << 20
    );
    let listener = format!(
        "[[listener]]\nname = \"build\"\n  [[listener.route]]\n  path = \"content\"\n  debounce_ms = 0\n  shell = '''{job}'''\n"
    );
    let site = site("", &listener);
    std::fs::create_dir_all(site.sandbox.path("content")).unwrap();
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let mut client = ws::hello(&site.addr).expect("a LiveReload client");
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    site.sandbox.write("content/a.md", "x");
    let started = Instant::now();
    let message = match client.next() {
        Ok(Heard::Text(text)) => Some(text),
        _ => None,
    };
    let measured = watch.finish(&mut case, Duration::from_millis(500));
    case.set_ms("failure_after_ms", crate::common::ms(started.elapsed()));
    let size = message.as_ref().map_or(0, String::len);
    case.set("message_bytes", size);
    let growth = measured.growth_mb();
    case.check(
        message
            .as_deref()
            .is_some_and(|m| m.contains("execlib-build") && m.contains("exit code 7")),
        format!(
            "no failure message: {:?}",
            message.as_deref().map(|m| &m[..m.len().min(200)])
        ),
    );
    // 20 lines of at most 1 KiB, escaped as JSON (a control character takes 6 bytes).
    case.check(
        size < 160 * 1024,
        format!("the message is {size} bytes (limit 160 KiB)"),
    );
    case.check(growth < 64.0, format!("RSS grew {growth:.1} MB (limit 64 MB)"));
    drop(daemon);
    case.finish();
}

#[test]
fn endless_output_cannot_hold_up_its_listener() {
    let mut case = Case::new("endless_output");
    // A job that prints without a pause (its pipe never runs dry) beside the same
    // listener's other jobs: their runs, its own timeout and the control socket must
    // not wait for the reading of its output.
    let timeout_ms = scale(3000, 1000) as u64;
    case.set("timeout_ms", timeout_ms);
    let job = r#"case "$EXECLIB_NAME" in loud.md) exec yes;; *) echo ran > "../out/$EXECLIB_NAME";; esac"#;
    let listener = format!(
        "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"content\"\n  debounce_ms = 0\n  timeout_ms = {timeout_ms}\n  kill_grace_ms = 200\n  shell = '''{job}'''\n"
    );
    let site = site("", &listener);
    std::fs::create_dir_all(site.sandbox.path("content")).unwrap();
    std::fs::create_dir_all(site.sandbox.path("out")).unwrap();
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    site.sandbox.write("content/loud.md", "x");
    let loud = Instant::now();
    // The flood is under way (its job started) before the other changes come.
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.request(r#"{"cmd":"listeners"}"#)["listeners"][0]["jobs_running"] != 1 {
        assert!(Instant::now() < deadline, "the loud job never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut others = Vec::new();
    for i in 0..5 {
        let name = format!("quiet{i}.md");
        site.sandbox.write(&format!("content/{name}"), "x");
        let written = Instant::now();
        let out = site.sandbox.path(&format!("out/{name}"));
        while !out.exists() && written.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        others.push(written.elapsed());
    }
    let mut status_max = Duration::ZERO;
    let ended = loop {
        let asked = Instant::now();
        let failed = daemon.request(r#"{"cmd":"listeners"}"#)["listeners"][0]["jobs_failed"].clone();
        status_max = status_max.max(asked.elapsed());
        if failed == 1 || loud.elapsed() > Duration::from_secs(30) {
            break loud.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let measured = watch.finish(&mut case, Duration::from_millis(500));
    let other_max = others.iter().max().copied().unwrap_or_default();
    case.set_ms("other_job_max_ms", crate::common::ms(other_max));
    case.set_ms("loud_ended_ms", crate::common::ms(ended));
    case.set_ms("listeners_max_ms", crate::common::ms(status_max));
    case.check(
        other_max < Duration::from_secs(2),
        format!("another job of the listener ran {other_max:?} after its change (limit 2 s)"),
    );
    case.check(
        ended < Duration::from_millis(timeout_ms + 2000),
        format!("the flooding job ended {ended:?} after its start (timeout {timeout_ms} ms, limit +2 s)"),
    );
    case.check(
        status_max < Duration::from_secs(1),
        format!("`listeners` took up to {status_max:?} (limit 1 s)"),
    );
    let growth = measured.growth_mb();
    case.check(growth < 64.0, format!("RSS grew {growth:.1} MB (limit 64 MB)"));
    drop(daemon);
    case.finish();
}

/// Asks for `path` on `n` connections that never read; returns the connections whose
/// response has begun (its first bytes are waiting to be read) within 10 s: the
/// server has opened, and for an injected page read, the file for each of those.
fn stalled_readers(addr: &str, path: fn(usize) -> String, n: usize) -> (Vec<TcpStream>, usize) {
    let stalled: Vec<TcpStream> = (0..n)
        .filter_map(|i| Some((TcpStream::connect(addr).ok()?, path(i))))
        .filter_map(|(mut s, path)| {
            let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            s.write_all(request.as_bytes()).ok().map(|()| s)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let answered = stalled
        .iter()
        .filter(|s| {
            let left = deadline.saturating_duration_since(Instant::now());
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            s.peek(&mut [0u8; 1]).is_ok_and(|n| n == 1)
        })
        .count();
    (stalled, answered)
}

/// Connections that ask for a large HTML page with `inject = true` and never read:
/// it was read whole for each (the script goes into it), so 60 readers of an 8 MiB
/// page took the daemon from 8 to 642 MB. Past `MAX_INJECT` (1 MiB) a page is sent
/// as it is, with sendfile, like any large file.
#[test]
fn regression_large_injected_html_stalled_readers_stay_bounded() {
    let body = format!("<html><body>{}</body></html>", "x".repeat(4 << 20));
    let n = scale(100, 30);
    injected_page_stalled_readers(
        "large_injected_html_stalled_readers",
        body,
        (n, |_| "/big.html".into()),
        40.0,
    );
}

/// The same for a page just under `MAX_INJECT`, which does get the script: read
/// whole for each request, 100 stalled readers held about 100 MB; kept once in the
/// cache (it is quiet), they share it.
#[test]
fn injected_html_at_the_cap_is_shared_by_stalled_readers() {
    let body = format!("<html><body>{}</body></html>", "x".repeat((1 << 20) - 64));
    let n = scale(100, 30);
    injected_page_stalled_readers(
        "injected_html_at_the_cap_stalled_readers",
        body,
        (n, |_| "/big.html".into()),
        16.0,
    );
}

/// The same page under as many spellings as connections (`/big.html`, `/%62ig.html`,
/// `/b%69g.html`, …): each is its own cache key, so each request reads the page anew
/// and a client that does not read keeps its copy. What the kernel's socket buffer
/// does not take stays in the daemon; the bodies held in memory are bounded
/// (`MAX_BODIES`, 64 MiB: past it the page is sent from the file), and the script
/// goes in without a lower-cased copy of the page (which doubled each request's
/// share: 300 readers peaked at +122 MB).
#[test]
fn many_spellings_of_a_page_stay_within_the_bodies_limit() {
    let body = format!("<html><body>{}</body></html>", "x".repeat((1 << 20) - 64));
    let n = scale(480, 300);
    let distinct: std::collections::BTreeSet<String> = (0..n).map(spelling).collect();
    assert_eq!(distinct.len(), n, "a spelling for each connection");
    injected_page_stalled_readers(
        "injected_html_many_spellings_stalled_readers",
        body,
        (n, spelling),
        96.0,
    );
}

/// The `i`-th of the 480 spellings of `/big.html`: each of its 8 characters after
/// the slash percent-encoded or not, the hex digits in upper or lower case.
fn spelling(i: usize) -> String {
    let mut all = std::collections::BTreeSet::new();
    for bits in 0..512usize {
        let mut out = String::from("/");
        for (k, c) in "big.html".chars().enumerate() {
            match (bits >> k & 1, bits >> 8 & 1) {
                (0, _) => out.push(c),
                (_, 0) => out.push_str(&format!("%{:02X}", c as u32)),
                _ => out.push_str(&format!("%{:02x}", c as u32)),
            }
        }
        all.insert(out);
    }
    all.into_iter().nth(i).expect("480 spellings")
}

/// `n` connections ask for `body` as `/big.html` (with `inject = true`) and never
/// read; RSS must grow less than `limit_mb`, and a browser meanwhile gets the page
/// whole: with the script when it is at most `MAX_INJECT`, else unchanged.
fn injected_page_stalled_readers(
    name: &'static str,
    body: String,
    (n, path): (usize, fn(usize) -> String),
    limit_mb: f64,
) {
    let mut case = Case::new(name);
    case.set("connections", n);
    case.set("page_kb", body.len() / 1024);
    let site = site("inject = true", "");
    site.sandbox.write("public/big.html", &body);
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let injected = body.len() <= 1 << 20;
    if injected {
        // Cached only once it has been quiet for a second (its ctime cannot be set back).
        std::thread::sleep(Duration::from_millis(1100));
        let end = Instant::now() + Duration::from_secs(5);
        while daemon.request(r#"{"cmd":"status"}"#)["server"]["cached_files"].as_u64() < Some(1)
            && Instant::now() < end
        {
            let _ = get_once(&site.addr, "/big.html", Duration::from_secs(3));
        }
    }
    let watch = Watch::start(&daemon, &site.addr);
    let (stalled, answered) = stalled_readers(&site.addr, path, n);
    // The page as a browser gets it, meanwhile: whole.
    let page = get_once(&site.addr, "/big.html", Duration::from_secs(10));
    let measured = watch.finish(&mut case, Duration::from_millis(500));
    case.set("opened", stalled.len());
    case.set("answered", answered);
    case.set("errors", measured.probe.errors);
    let growth = measured.growth_mb();
    case.check(
        stalled.len() == n && answered == n,
        format!("{} of {n} connections opened, {answered} answered", stalled.len()),
    );
    case.check(
        growth < limit_mb,
        format!("RSS grew {growth:.1} MB (limit {limit_mb} MB)"),
    );
    let whole = |r: &Resp| {
        let script = String::from_utf8_lossy(&r.body).contains("/livereload.js");
        r.status == 200
            && match injected {
                true => script && r.body.len() > body.len(),
                false => r.body == body.as_bytes(),
            }
    };
    case.check(
        page.as_ref().is_ok_and(whole),
        format!(
            "the page was not served whole (script: {injected}): {:?}",
            page.map(|r| (r.status, r.body.len()))
        ),
    );
    case.check(measured.probe.errors == 0, "the probe saw errors");
    drop(stalled);
    drop(daemon);
    case.finish();
}

/// Downloads that never read, in every one of the server's connection slots: each
/// held its slot for ever, so one client shut every other out (new connections
/// were closed as soon as accepted). Now the server closes a connection whose
/// client takes nothing for `send_timeout_ms`; the slots come back.
#[test]
fn stalled_downloads_in_every_connection_slot_are_closed_by_the_send_timeout() {
    let mut case = Case::new("stalled_downloads_fill_every_slot");
    raise_nofile();
    let send_timeout = Duration::from_secs(3);
    // Every slot at full scale (4,096); fewer in CI, where the slots are not all taken.
    let n = scale(4096, 300);
    case.set("connections", n);
    let site = site(&format!("send_timeout_ms = {}", send_timeout.as_millis()), "");
    site.sandbox.write("public/large.bin", &"x".repeat(10 << 20));
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let sampler = RssSampler::start(daemon.pid());
    let before_kb = settled_rss_kb(daemon.pid(), Duration::from_millis(500));
    let request = format!("GET /large.bin HTTP/1.1\r\nHost: {}\r\n\r\n", site.addr);
    let stalled: Vec<TcpStream> = (0..n)
        .filter_map(|_| TcpStream::connect(&site.addr).ok())
        .filter_map(|mut s| {
            small_receive_buffer(&s);
            s.write_all(request.as_bytes()).ok().map(|()| s)
        })
        .collect();
    let opened = Instant::now();
    case.set("opened", stalled.len());
    let probe = || get_once(&site.addr, "/probe.txt", Duration::from_secs(1)).is_ok_and(|r| r.status == 200);
    if n >= 4096 {
        case.check(
            !probe(),
            "every slot taken: a new client is shut out (the attack holds)",
        );
    }
    let deadline = opened + send_timeout + Duration::from_secs(10);
    while !probe() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    case.set_ms("served_again_after_ms", ms(opened.elapsed()));
    case.check(
        probe(),
        "a new client is served again once the stalled ones are closed",
    );
    let server: std::net::SocketAddr = site.addr.parse().unwrap();
    let open = || held_by_server(server, &stalled);
    while open() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = open();
    case.set_ms("all_closed_after_ms", ms(opened.elapsed()));
    case.set("still_open", left);
    case.check(
        left == 0,
        format!("{left} stalled connections still held by the server"),
    );
    case.check(
        stalled.len() == n,
        format!("only {} of {n} connections opened", stalled.len()),
    );
    check_connections_growth(&mut case, &sampler, before_kb, n);
    drop(stalled);
    drop(daemon);
    case.finish();
}
