//! Measures LiveReload latency: the time from writing a page to the reload message
//! arriving at a WebSocket client showing it. Prints p50 and p99 in milliseconds.
//!
//! Usage: `cargo run --release --example reload_latency -- ADDR ROOT RUNS`
//! (ADDR the daemon's HTTP address, ROOT its `[server].root`); see bench/http.sh.

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, root, runs] = args.as_slice() else {
        eprintln!("usage: reload_latency ADDR ROOT RUNS");
        std::process::exit(2);
    };
    let runs: usize = runs.parse().expect("RUNS is a number");
    let page = std::path::Path::new(root).join("latency.html");
    std::fs::write(&page, "v0").unwrap();
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/livereload")).expect("connect");
    let hello = r#"{"command":"hello","protocols":["http://livereload.com/protocols/official-7"]}"#;
    ws.send(tungstenite::Message::text(hello)).unwrap();
    ws.read().unwrap(); // the server's hello
    let info = format!(r#"{{"command":"info","plugins":{{}},"url":"http://{addr}/latency.html"}}"#);
    ws.send(tungstenite::Message::text(info)).unwrap();
    // Let the info land and drain anything pending (the reload for creating the page).
    type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;
    let set_timeout = |ws: &Socket, t: Option<Duration>| {
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(t).unwrap();
        }
    };
    set_timeout(&ws, Some(Duration::from_millis(300)));
    while ws.read().is_ok() {}
    set_timeout(&ws, None);
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let start = Instant::now();
        std::fs::write(&page, format!("v{i}")).unwrap();
        loop {
            let message = ws.read().expect("a reload");
            if message.to_text().is_ok_and(|t| t.contains("/latency.html")) {
                break;
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(50)); // separate the changes
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    println!("{} {:.2} {:.2}", samples.len(), pct(0.50), pct(0.99));
}
