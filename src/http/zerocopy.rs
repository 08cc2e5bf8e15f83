//! Large files sent with `sendfile(2)` on the connections hyper serves: the file's
//! bytes go from the page cache to the socket without passing through user space.
//!
//! hyper writes what a response body yields through the connection's I/O object.
//! A large file's body ([`body`]) yields placeholders: slices of one buffer that is
//! never read or sent, each standing for the next region of the file, which the
//! body queues on its connection ([`Regions`]) as it yields it. The connection's
//! I/O ([`Io`]) recognises a placeholder by its address when hyper writes it and
//! sends that region with `sendfile` instead. hyper keeps everything else: the
//! head, keep-alive, pipelining (regions are sent in the order they were yielded,
//! which is the order hyper writes them), timeouts and upgrades; ranges and HEAD
//! are decided before the body is made. Where the kernel cannot `sendfile` from a
//! file (`EINVAL`, `ENOSYS`), its region is read and written instead.
//!
//! This relies on hyper writing body chunks as they are given (its queueing write
//! strategy, which [`Io`] selects by being vectored and the connection asks for with
//! `writev(true)`) rather than copying them into a buffer of its own; the tests
//! compare served bytes with random file contents, so a hyper that copied (and sent
//! the placeholder's zeros) would fail them. A sent region is checked against the
//! queue's front (same length), and a mismatch ends the connection rather than
//! send wrong bytes.
//!
//! A client that takes none of what is written to it for the connection's send
//! timeout ends its connection ([`Io`]'s writes fail with `TimedOut`), whatever is
//! being sent: a head, a body, a WebSocket frame.
//!
//! A slow client holds no memory for its download (only the open file), and the
//! reads from disk happen in `sendfile` on the runtime's thread, as nginx does
//! without its thread pool: files on a file system that may stop answering are
//! sent by [`super::blocking`] instead.

use super::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The most one placeholder stands for: one region, one body frame.
const CHUNK: usize = 1 << 20;
/// How much a region is read at a time where `sendfile` is refused.
const COPY_CHUNK: usize = 64 * 1024;

/// The placeholder's bytes: zeros from the allocator, never touched, so they take
/// address space but no memory.
static PLACEHOLDER: LazyLock<Box<[u8]>> = LazyLock::new(|| vec![0; CHUNK].into_boxed_slice());

/// Whether `buf` is (the rest of) a placeholder.
fn is_placeholder(buf: &[u8]) -> bool {
    let range = PLACEHOLDER.as_ptr_range();
    !buf.is_empty() && range.contains(&buf.as_ptr())
}

/// The regions of files a connection's bodies have yielded and not yet sent, in
/// order. Cloned into each large-file body of the connection.
#[derive(Clone, Default)]
pub struct Regions(Arc<Mutex<VecDeque<Region>>>);

impl Regions {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Region>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `left` bytes of `file` from `offset`, still to send.
struct Region {
    file: Arc<File>,
    offset: u64,
    left: usize,
}

/// The body of `count` bytes of `file` from `start`, sent by the connection's [`Io`]
/// with `sendfile`.
pub fn body(file: File, start: u64, count: u64, regions: Regions) -> Body {
    let file = Arc::new(file);
    let (mut offset, mut left) = (start, count);
    let chunks = std::iter::from_fn(move || {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
        if n == 0 {
            return None;
        }
        let file = file.clone();
        regions.lock().push_back(Region {
            file,
            offset,
            left: n,
        });
        (offset, left) = (offset + n as u64, left - n as u64);
        Some(Ok(Frame::data(Bytes::from_static(&PLACEHOLDER[..n]))))
    });
    StreamBody::new(futures::stream::iter(chunks)).boxed_unsync()
}

/// A connection's socket as hyper reads and writes it, sending placeholders'
/// regions with `sendfile`, and failing a write that waits longer than the send
/// timeout for the client to take anything.
pub struct Io {
    stream: TokioIo<TcpStream>,
    regions: Regions,
    /// Set once `sendfile` is refused: regions are then read and written.
    copy: Option<Box<[u8]>>,
    /// How long a write may wait for room in the socket.
    send_timeout: Duration,
    /// While writes wait for room: what the socket held unread when they began to
    /// (see [`Io::deadline`]).
    stalled: Option<usize>,
    /// The send timeout's clock, made at the first wait and set again at each.
    clock: Option<Pin<Box<Sleep>>>,
    /// The connection's place in its client's count, held as long as the socket.
    _place: Option<super::peers::Place>,
}

impl Io {
    /// Wraps an accepted connection; `regions` is what its bodies queue. A write that
    /// finds no room for `send_timeout` fails.
    pub fn new(stream: TcpStream, regions: Regions, send_timeout: Duration) -> Self {
        Io {
            stream: TokioIo::new(stream),
            regions,
            copy: None,
            send_timeout,
            stalled: None,
            clock: None,
            _place: None,
        }
    }

    /// Holds `place` (its client's count) until the socket is closed, whoever has
    /// it then (a LiveReload session, after the upgrade).
    pub fn holding(mut self, place: super::peers::Place) -> Self {
        self._place = Some(place);
        self
    }

    /// A write's outcome, given the send timeout: a write that waits starts the clock
    /// (or lets it run on), and one that goes stops it. When it runs out, the write
    /// fails unless the client has taken some of what the socket holds meanwhile
    /// (`SIOCOUTQ` went down): the socket's room shows only once half its buffer is
    /// free, which a client that reads slowly but steadily may take longer to make.
    /// A connection that fails so is reset when closed (zero linger, as nginx's
    /// `reset_timedout_connection`): what its socket holds is dropped at once.
    fn deadline<T>(&mut self, cx: &mut Context<'_>, write: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if write.is_ready() {
            self.stalled = None;
            return write;
        }
        let timeout = self.send_timeout;
        loop {
            let tcp = self.stream.inner();
            let unread = || crate::sys::unread_by_peer(tcp.as_fd()).unwrap_or(0);
            if self.stalled.is_none() {
                let at = tokio::time::Instant::now() + timeout;
                match &mut self.clock {
                    Some(clock) => clock.as_mut().reset(at),
                    None => self.clock = Some(Box::pin(tokio::time::sleep_until(at))),
                }
                self.stalled = Some(unread());
            }
            let clock = self.clock.as_mut().expect("set when the stall began");
            ready!(clock.as_mut().poll(cx));
            if unread() >= self.stalled.unwrap_or(0) {
                let _ = tcp.set_zero_linger();
                break;
            }
            self.stalled = None; // it took some: the clock starts again from now
        }
        self.stalled = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took nothing for {} ms", timeout.as_millis()),
        )))
    }

    /// Sends from the front region, which must have `len` bytes left (hyper is
    /// writing the rest of its placeholder); returns how many went.
    fn poll_region(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let regions = self.regions.clone();
        let mut queue = regions.lock();
        let Some(region) = queue.front_mut().filter(|r| r.left == len) else {
            return Poll::Ready(Err(io::Error::other("file regions out of step with the body")));
        };
        let sent = match self.copy.is_some() {
            false => ready!(self.poll_sendfile(cx, region)),
            true => ready!(self.poll_copy(cx, region)),
        }?;
        if sent == 0 {
            let e = io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent");
            return Poll::Ready(Err(e));
        }
        region.offset += sent as u64;
        region.left -= sent;
        if region.left == 0 {
            queue.pop_front();
        }
        Poll::Ready(Ok(sent))
    }

    fn poll_sendfile(&mut self, cx: &mut Context<'_>, region: &Region) -> Poll<io::Result<usize>> {
        let tcp = self.stream.inner();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            let sent = tcp.try_io(Interest::WRITABLE, || {
                crate::sys::sendfile(tcp.as_fd(), region.file.as_fd(), region.offset, region.left)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    return self.poll_copy(cx, region);
                }
                result => return Poll::Ready(result),
            }
        }
    }

    /// Reads the region's next bytes and writes them; what the socket does not take
    /// is read again on the next call.
    fn poll_copy(&mut self, cx: &mut Context<'_>, region: &Region) -> Poll<io::Result<usize>> {
        let buf = self
            .copy
            .get_or_insert_with(|| vec![0; COPY_CHUNK].into_boxed_slice());
        let want = region.left.min(buf.len());
        let n = region.file.read_at(&mut buf[..want], region.offset)?;
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        Pin::new(&mut self.stream).poll_write(cx, &buf[..n])
    }
}

impl Read for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl Write for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = match is_placeholder(buf) {
            true => this.poll_region(cx, buf.len()),
            false => Pin::new(&mut this.stream).poll_write(cx, buf),
        };
        this.deadline(cx, write)
    }

    /// Writes the leading plain slices, or sends the placeholder that leads.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let bufs = &bufs[bufs.iter().take_while(|b| b.is_empty()).count()..];
        let write = match bufs.first() {
            Some(first) if is_placeholder(first) => this.poll_region(cx, first.len()),
            _ => {
                let plain = bufs.iter().take_while(|b| !is_placeholder(b)).count();
                Pin::new(&mut this.stream).poll_write_vectored(cx, &bufs[..plain])
            }
        };
        this.deadline(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves every request on one connection with bytes `start..start + count` of
    /// `content` (through [`body`] and [`Io`], copying when `copy`), and returns what
    /// a client reading two such responses gets as bodies.
    async fn two_responses(content: &[u8], start: u64, count: u64, copy: bool) -> Vec<u8> {
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), content).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let file_path = path.path().to_owned();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let regions = Regions::default();
            let mut io = Io::new(stream, regions.clone(), Duration::from_secs(60));
            if copy {
                io.copy = Some(vec![0; 1000].into_boxed_slice());
            }
            let svc = hyper::service::service_fn(move |_req| {
                let file = File::open(&file_path).unwrap();
                let body = body(file, start, count, regions.clone());
                let mut response = http::Response::new(body);
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, count.into());
                async move { Ok::<_, Infallible>(response) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            let _ = builder.writev(true).serve_connection(io, svc).await;
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        client.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        client.read_to_end(&mut raw).await.unwrap();
        server.await.unwrap();
        let mut bodies = Vec::new();
        let mut rest = &raw[..];
        while let Some(split) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..split]).to_lowercase();
            let len: usize = head
                .split("content-length: ")
                .nth(1)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            bodies.extend_from_slice(&rest[split + 4..split + 4 + len]);
            rest = &rest[split + 4 + len..];
        }
        bodies
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn regions_are_sent_whole_and_in_order() {
        let data = content(CHUNK * 2 + 999);
        let got = two_responses(&data, 0, data.len() as u64, false).await;
        assert!(got == [&data[..], &data[..]].concat());
    }

    #[tokio::test]
    async fn the_copy_fallback_sends_the_same_bytes() {
        let data = content(CHUNK + 4321);
        let (start, count) = (1234, CHUNK as u64 + 10);
        let got = two_responses(&data, start, count, true).await;
        let part = &data[start as usize..(start + count) as usize];
        assert!(got == [part, part].concat());
    }
}
