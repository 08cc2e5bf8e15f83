//! The daemon's end of a job's stdout or stderr pipe, registered with the reactor
//! only when a read would block. A short job has usually exited, and written all its
//! output and closed its end, by the time its output is first read (see
//! [`super::OUTPUT_LATER`]): its pipe is read to the end without being registered
//! and deregistered, two `epoll_ctl` calls and a wakeup saved per pipe.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::pipe;

/// A pipe's read end (non-blocking), read directly until a read would block, then
/// through the reactor.
pub struct OutputPipe(State);

enum State {
    /// Not registered: read with plain `read` calls.
    Direct(std::fs::File),
    /// Registered with the reactor.
    Registered(pipe::Receiver),
    /// The registration failed (reported once).
    Broken,
}

impl OutputPipe {
    /// Takes the read end of a pipe opened with `O_NONBLOCK` ([`crate::sys::pipe`]).
    pub fn new(fd: OwnedFd) -> Self {
        OutputPipe(State::Direct(fd.into()))
    }

    /// Whether it has been registered with the reactor.
    #[cfg(test)]
    fn registered(&self) -> bool {
        matches!(self.0, State::Registered(_))
    }
}

impl AsyncRead for OutputPipe {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Direct(file) = &mut this.0 {
            // A read takes from the task's budget, as the reactor's reads do: a job that
            // writes faster than its lines are logged never leaves the pipe empty, and
            // without this the task reading it (the listener's jobs, their timeouts and
            // stops) would never yield.
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            loop {
                match file.read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        coop.made_progress();
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            let State::Direct(file) = std::mem::replace(&mut this.0, State::Broken) else {
                unreachable!("matched above")
            };
            // The descriptor was made non-blocking by `pipe2`: nothing to check.
            match pipe::Receiver::from_owned_fd_unchecked(file.into()) {
                Ok(receiver) => this.0 = State::Registered(receiver),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        match &mut this.0 {
            State::Registered(receiver) => Pin::new(receiver).poll_read(cx, buf),
            State::Direct(_) | State::Broken => Poll::Ready(Err(io::Error::other(
                "the job's output pipe could not be watched",
            ))),
        }
    }
}

/// A reader whose reads are numbered from a counter its job's streams share. A line
/// takes the number of the read that completed it ([`Stamped::last`]), so the lines
/// of stdout and stderr merge in the order they were read, however the logging of
/// one read's many lines interleaves with the other stream's.
pub struct Stamped<'a, R> {
    inner: R,
    counter: &'a AtomicU64,
    last: u64,
}

impl<'a, R> Stamped<'a, R> {
    /// Reads `inner`, numbering its reads from `counter`.
    pub fn new(inner: R, counter: &'a AtomicU64) -> Self {
        Stamped {
            inner,
            counter,
            last: 0,
        }
    }

    /// The number of the last read that returned bytes.
    pub fn last(&self) -> u64 {
        self.last
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Stamped<'_, R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.last = this.counter.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn output_already_written_and_closed_is_read_without_registering() {
        let (read, write) = crate::sys::pipe().unwrap();
        let mut writer = std::fs::File::from(write);
        writer.write_all(b"all of it\n").unwrap();
        drop(writer);
        let mut pipe = OutputPipe::new(read);
        let mut got = String::new();
        pipe.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "all of it\n");
        assert!(!pipe.registered());
    }

    #[tokio::test]
    async fn a_read_that_would_block_registers_and_waits_for_the_writer() {
        let (read, write) = crate::sys::pipe().unwrap();
        let mut writer = std::fs::File::from(write);
        writer.write_all(b"first ").unwrap();
        let mut pipe = OutputPipe::new(read);
        let mut buf = [0u8; 6];
        pipe.read_exact(&mut buf).await.unwrap();
        assert!(!pipe.registered());
        let mut more = [0u8; 16];
        let pending = std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut more);
            Poll::Ready(Pin::new(&mut pipe).poll_read(cx, &mut buf).is_pending())
        })
        .await;
        assert!(pending, "nothing to read yet: the read waits");
        assert!(pipe.registered());
        writer.write_all(b"second\n").unwrap();
        drop(writer);
        let mut rest = String::new();
        pipe.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "second\n");
        assert!(pipe.registered());
    }
}
