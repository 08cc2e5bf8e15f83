//! A LiveReload client for the demo: connects to `ws://ADDR/livereload`, says hello
//! and which page it shows, prints `connected`, then prints the first `reload`
//! message it gets and exits (1 after 10 s without one).
//!
//! Usage: cargo run --example livereload_wait -- 127.0.0.1:8778 /index.html

use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(page)) = (args.next(), args.next()) else {
        eprintln!("usage: livereload_wait ADDR PAGE");
        std::process::exit(2);
    };
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/livereload")).expect("connect");
    let hello = r#"{"command":"hello","protocols":["http://livereload.com/protocols/official-7"]}"#;
    ws.send(tungstenite::Message::text(hello)).expect("hello");
    let info = format!(r#"{{"command":"info","plugins":{{}},"url":"http://{addr}{page}"}}"#);
    ws.send(tungstenite::Message::text(info)).expect("info");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
    }
    let end = Instant::now() + Duration::from_secs(10);
    let mut said = false;
    while Instant::now() < end {
        match ws.read() {
            Ok(tungstenite::Message::Text(text)) if text.contains(r#""command":"hello""#) && !said => {
                println!("connected");
                std::io::stdout().flush().expect("stdout");
                said = true;
            }
            Ok(tungstenite::Message::Text(text)) if text.contains(r#""command":"reload""#) => {
                println!("{text}");
                return;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                eprintln!("livereload_wait: {e}");
                std::process::exit(1);
            }
        }
    }
    eprintln!("livereload_wait: no reload within 10 s");
    std::process::exit(1);
}
