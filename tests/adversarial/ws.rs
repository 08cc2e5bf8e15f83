//! A minimal WebSocket client on a plain `TcpStream`: the upgrade to `/livereload`,
//! masked frames written by hand (so a case can send what no library would: endless
//! fragments without FIN, half a frame), and the server's frames read back.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The LiveReload hello a browser sends first.
pub const HELLO: &str = r#"{"command":"hello","protocols":["http://livereload.com/protocols/official-7"]}"#;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// A frame larger than this from the server is a protocol error here.
const MAX_SERVER_FRAME: usize = 16 << 20;

/// A masking key that differs from frame to frame.
pub fn key() -> [u8; 4] {
    static NEXT: AtomicU32 = AtomicU32::new(0x9e37_79b9);
    NEXT.fetch_add(0x6d2b_79f5, Ordering::Relaxed).to_be_bytes()
}

/// A client frame: `opcode`, FIN when `fin`, masked with `key`. An all-zero key is
/// valid and leaves the payload as is, so one big frame can be shared by many clients.
pub fn frame(opcode: u8, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(if fin { 0x80 } else { 0 } | opcode);
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// A frame from the server.
#[derive(Debug)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// What a client hears next.
#[derive(Debug, PartialEq)]
pub enum Heard {
    Text(String),
    /// A close frame, with its code when it has one.
    Close(Option<u16>),
    /// The connection ended (EOF or reset) without a close frame.
    Ended,
}

/// A client connection past the upgrade.
pub struct Ws {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A connection to `addr` (IPv4) whose receive buffer is `rcvbuf` bytes, set before
/// the connect so the window it offers the server stays that small: a client that
/// does not read backs the server's writes up at once.
pub fn connect_small(addr: &str, rcvbuf: i32) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddrV4 = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    // SAFETY: socket(2) takes no pointers; the descriptor is checked and owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket no one else owns; the stream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: the option's value is a live i32 whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in, alive across the call, its size passed with it.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Asks `addr` to upgrade `/livereload`: the client on 101, else the status answered.
pub fn upgrade(addr: &str, timeout: Duration) -> io::Result<Result<Ws, u16>> {
    upgrade_on(TcpStream::connect(addr)?, addr, timeout)
}

/// [`upgrade`] on a connection already open to `addr`.
pub fn upgrade_on(stream: TcpStream, addr: &str, timeout: Duration) -> io::Result<Result<Ws, u16>> {
    upgrade_as(stream, addr, None, timeout)
}

/// [`upgrade_on`] as a browser page would ask: `Host: host` and, when given, `Origin: origin`.
pub fn upgrade_as(
    stream: TcpStream,
    host: &str,
    origin: Option<&str>,
    timeout: Duration,
) -> io::Result<Result<Ws, u16>> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    write!(
        &stream,
        "GET /livereload HTTP/1.1\r\nHost: {host}\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = (&stream).read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the upgrade",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status != 101 {
        return Ok(Err(status));
    }
    buf.drain(..end);
    Ok(Ok(Ws { stream, buf }))
}

/// Upgrades, says hello and checks the server's hello.
pub fn hello(addr: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    hello_on(stream, addr)
}

/// [`hello`] on a connection already open to `addr`.
pub fn hello_on(stream: TcpStream, addr: &str) -> Result<Ws, String> {
    hello_as(stream, addr, None)
}

/// [`hello_on`] as a browser page would: `Host: host`, `Origin: origin` when given.
pub fn hello_as(stream: TcpStream, host: &str, origin: Option<&str>) -> Result<Ws, String> {
    let mut ws = match upgrade_as(stream, host, origin, Duration::from_secs(10)) {
        Ok(Ok(ws)) => ws,
        Ok(Err(status)) => return Err(format!("upgrade answered {status}")),
        Err(e) => return Err(format!("upgrade: {e}")),
    };
    ws.send(TEXT, true, HELLO.as_bytes())
        .map_err(|e| format!("send hello: {e}"))?;
    match ws.next() {
        Ok(Heard::Text(t)) if t.contains(r#""command":"hello""#) => Ok(ws),
        other => Err(format!("no hello back: {other:?}")),
    }
}

fn ended(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
    )
}

impl Ws {
    /// Sends one frame (masked with a fresh key).
    pub fn send(&mut self, opcode: u8, fin: bool, payload: &[u8]) -> io::Result<()> {
        self.stream.write_all(&frame(opcode, fin, payload, key()))
    }

    /// Sends a close frame (1000) and shuts the connection down.
    pub fn close(mut self) {
        let _ = self.send(CLOSE, true, &1000u16.to_be_bytes());
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Reads until `buf` holds `n` bytes; false at EOF. A read timeout keeps what came.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        while self.buf.len() < n {
            let got = self.stream.read(&mut chunk)?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
        Ok(true)
    }

    /// The next frame; `None` at EOF. A timeout is an error and loses nothing.
    pub fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        if !self.fill(2)? {
            return Ok(None);
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let (mut len, mut at) = ((b1 & 0x7f) as usize, 2);
        if len == 126 {
            if !self.fill(4)? {
                return Ok(None);
            }
            (len, at) = (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4);
        } else if len == 127 {
            if !self.fill(10)? {
                return Ok(None);
            }
            (len, at) = (
                u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                10,
            );
        }
        if len > MAX_SERVER_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "server frame too large",
            ));
        }
        let masked = b1 & 0x80 != 0;
        let key_at = at;
        if masked {
            at += 4;
        }
        if !self.fill(at + len)? {
            return Ok(None);
        }
        let mut payload = self.buf[at..at + len].to_vec();
        if masked {
            let key: [u8; 4] = self.buf[key_at..key_at + 4].try_into().unwrap();
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
        }
        self.buf.drain(..at + len);
        Ok(Some(Frame {
            opcode: b0 & 0x0f,
            payload,
        }))
    }

    /// The next text message, close or end, answering pings (as a browser does) and
    /// skipping pongs. A reset is an end; a read timeout is an error.
    pub fn next(&mut self) -> io::Result<Heard> {
        loop {
            let frame = match self.read_frame() {
                Ok(f) => f,
                Err(e) if ended(&e) => return Ok(Heard::Ended),
                Err(e) => return Err(e),
            };
            match frame {
                None => return Ok(Heard::Ended),
                Some(f) if f.opcode == TEXT => {
                    return Ok(Heard::Text(String::from_utf8_lossy(&f.payload).into_owned()));
                }
                Some(f) if f.opcode == CLOSE => {
                    let code =
                        (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                    return Ok(Heard::Close(code));
                }
                // As a browser does: a ping is answered (the server closes a client
                // that stays silent through one).
                Some(f) if f.opcode == PING => {
                    self.send(PONG, true, &f.payload)?;
                    continue;
                }
                Some(_) => continue,
            }
        }
    }
}
