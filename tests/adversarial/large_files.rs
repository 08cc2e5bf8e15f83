//! Family 6: what the large-file path and the build-failure message let a hostile
//! client or job do. Hundreds of connections that ask for a large file and never
//! read (each stream holds its read chunks: memory must stay bounded), and a build
//! job that floods its output with huge lines, markup and control characters before
//! failing (the failure message to browsers must stay small).

use crate::common::*;
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
