//! HTTP and WebSocket helpers: raw requests over TCP (so attack paths reach the
//! server exactly as written) and a LiveReload client on tungstenite.

use super::{DEADLINE, Daemon, Sandbox};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A site config: `[server]` on a free port serving `public/`, then `listeners`.
pub fn site_config(sandbox: &Sandbox, server_extra: &str, listeners: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(sandbox.path("public")).unwrap();
    sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 2000\n[server]\nlisten = \"127.0.0.1:0\"\nroot = \"public\"\ndelay_ms = 20\n{server_extra}\n{listeners}"
    ))
}

/// A listener `docs` whose route on `content/` runs `shell` at once (no debounce or
/// delay): a site's build, outside the served `public/`.
pub fn build_route(shell: &str) -> String {
    super::one_route(shell, "")
        .replacen("path = \"src\"", "path = \"content\"", 1)
        .replacen("debounce_ms = 50", "debounce_ms = 0", 1)
        .replacen("delay_ms = 10", "delay_ms = 0", 1)
}

/// The address the daemon's HTTP server listens on, from `status`.
pub fn http_addr(daemon: &Daemon) -> String {
    let status = daemon.request(r#"{"cmd":"status"}"#);
    status["server"]["listen"]
        .as_str()
        .expect("a server address")
        .to_owned()
}

/// A parsed HTTP response (status 0: the connection was reset before any response).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `head` (a request line and headers, without the final blank line) with
/// `Connection: close` and reads the whole response.
pub fn request(addr: &str, head: &str) -> Reply {
    send_raw(
        addr,
        &format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends `raw` exactly as given (the whole request) and reads the whole response.
pub fn send_raw(addr: &str, raw: &str) -> Reply {
    send_on(TcpStream::connect(addr).unwrap(), raw)
}

/// A connection to `addr` from `from`, one of this host's loopback addresses (every
/// 127.x.y.z is): a client with an address of its own.
pub fn connect_from(from: std::net::Ipv4Addr, addr: &str) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((from, 0).into()).unwrap();
        socket.connect(addr.parse().unwrap()).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// `GET path` from `from` (see [`connect_from`]), with `Connection: close`.
pub fn get_from(from: std::net::Ipv4Addr, addr: &str, path: &str) -> Reply {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    send_on(connect_from(from, addr), &raw)
}

/// Sends `raw` on `stream` and reads the whole response (status 0: the connection
/// was closed or reset before any response).
fn send_on(mut stream: TcpStream, raw: &str) -> Reply {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // A write may fail when the server refuses before reading everything (a head too large).
    let _ = stream.write_all(raw.as_bytes());
    // Until the body's Content-Length is in (some servers keep the connection open), or EOF.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let reply = parse(&raw);
            let want = reply
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok());
            if want.is_some_and(|n| raw.len() >= split + 4 + n) {
                return reply;
            }
        }
        let refused = Reply {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        };
        match stream.read(&mut buf) {
            Ok(0) if raw.is_empty() => return refused,
            Ok(0) => return parse(&raw),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // Reset before any response: the server refused the connection outright.
            Err(e) if raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => return refused,
            Err(e) => panic!("reading the response: {e}"),
        }
    }
}

/// `GET path` with extra header lines.
pub fn get(addr: &str, path: &str, headers: &[&str]) -> Reply {
    let mut head = format!("GET {path} HTTP/1.1");
    for h in headers {
        head.push_str("\r\n");
        head.push_str(h);
    }
    request(addr, &head)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// A LiveReload client.
pub struct LrClient {
    pub ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
}

impl LrClient {
    /// Connects to `/livereload` without saying anything.
    pub fn connect(addr: &str) -> Self {
        let (ws, _) = tungstenite::connect(format!("ws://{addr}/livereload")).unwrap();
        let client = LrClient { ws };
        client.set_timeout(DEADLINE);
        client
    }

    /// Connects, says hello, checks the server's hello, and names `page` with `info`.
    pub fn on_page(addr: &str, page: &str) -> Self {
        let mut client = Self::connect(addr);
        client.send(r#"{"command":"hello","protocols":["http://livereload.com/protocols/official-7"]}"#);
        let hello = client.recv().expect("the server's hello");
        assert_eq!(hello["command"], "hello", "{hello}");
        let info =
            serde_json::json!({"command": "info", "plugins": {}, "url": format!("http://{addr}{page}")});
        client.send(&info.to_string());
        client
    }

    pub fn set_timeout(&self, timeout: Duration) {
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = self.ws.get_ref() {
            s.set_read_timeout(Some(timeout)).unwrap();
        }
    }

    pub fn send(&mut self, text: &str) {
        self.ws.send(tungstenite::Message::text(text)).unwrap();
    }

    /// The next JSON message; `None` when the connection closed or nothing came in time.
    pub fn recv(&mut self) -> Option<serde_json::Value> {
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(tungstenite::Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Close(frame)) => return frame.map(|f| f.code.into()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// `/proc/net/tcp`'s state of an established connection.
pub const TCP_ESTABLISHED: u8 = 1;

/// The server's ends of the IPv4 connections to `server`: their state
/// (`/proc/net/tcp`'s `st`, [`TCP_ESTABLISHED`] while open) by client port.
pub fn server_ends(server: std::net::SocketAddr) -> std::collections::HashMap<u16, u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    let hex = |field: &str| u8::from_str_radix(field, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = port(fields.get(1)?)?;
            (local == server.port()).then_some(())?;
            Some((port(fields.get(2)?)?, hex(fields.get(3)?)?))
        })
        .filter(|&(client, _)| client != 0)
        .collect()
}

/// How many of `clients` (connections to `server` on this host) the server still
/// holds open (its end `ESTABLISHED`).
pub fn held_by_server(server: std::net::SocketAddr, clients: &[std::net::TcpStream]) -> usize {
    let ends = server_ends(server);
    clients
        .iter()
        .filter(|c| ends.get(&c.local_addr().unwrap().port()) == Some(&TCP_ESTABLISHED))
        .count()
}

/// Clamps `stream`'s receive buffer, so the server's writes wait for its reads.
pub fn small_receive_buffer(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 16 * 1024;
    // SAFETY: setsockopt reads `size`, a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}
