//! Who holds the control socket's connection slots. At most `max` connections are
//! served; when all are taken, a newcomer gets the slot of an idle one (a
//! connection waiting for its next request): first from the user holding the most
//! connections, then the one idle the longest. A connection whose request has
//! arrived (a whole line waits in its socket, or the rest of a line its task has
//! begun reading) is not idle, even before its task has read it; nor is one whose
//! task has read a line it has not yet handled. A line that has only begun to
//! arrive, its newline not yet sent, is no request: its connection may be evicted. Reads go
//! through [`Guarded`], under the same lock as admission, so no newcomer can take a
//! slot between a request leaving the socket and its connection marking itself busy.
//! So silent connections, however many, cannot lock anyone out; only connections
//! with requests can fill the slots, and then the newcomer is told `busy`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The slots of one control socket.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    slots: HashMap<u64, Slot>,
}

#[derive(Debug)]
struct Slot {
    uid: u32,
    /// Since when it waits for a request; `None` while one is being answered.
    idle_since: Option<Instant>,
    /// A whole line has left the socket for the connection's buffer, not yet handled.
    line_read: bool,
    /// The start of a line, not blank, has left the socket without its newline: a
    /// newline waiting in the socket completes a request.
    begun: bool,
    evict: CancellationToken,
    /// A duplicate of the connection's socket, to see whether a request waits in it.
    socket: Option<OwnedFd>,
}

/// A connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    admission: Arc<Admission>,
    /// Fired when the slot was given to a newcomer: the connection should say so and close.
    pub evicted: CancellationToken,
}

impl Admission {
    /// Slots for at most `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Admission {
            max,
            inner: Mutex::default(),
        })
    }

    /// A slot for a connection from `uid` on `socket` (a duplicate of its descriptor,
    /// kept while it holds the slot), evicting an idle one if all are taken; `None`
    /// (busy) when every slot has a request.
    pub fn admit(self: &Arc<Self>, uid: u32, socket: Option<OwnedFd>, now: Instant) -> Option<Ticket> {
        let mut inner = self.inner.lock().expect("admission lock");
        if inner.slots.len() >= self.max {
            let victim = victim(&inner.slots)?;
            let slot = inner.slots.remove(&victim).expect("the victim has a slot");
            slot.evict.cancel();
        }
        let id = inner.next;
        inner.next += 1;
        let evict = CancellationToken::new();
        let slot = Slot {
            uid,
            idle_since: Some(now),
            line_read: false,
            begun: false,
            evict: evict.clone(),
            socket,
        };
        inner.slots.insert(id, slot);
        Some(Ticket {
            id,
            admission: self.clone(),
            evicted: evict,
        })
    }

    /// How many slots are taken.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("admission lock").slots.len()
    }
}

/// The idle slot to give up: of the user with the most slots, the longest idle.
fn victim(slots: &HashMap<u64, Slot>) -> Option<u64> {
    let mut per_uid: HashMap<u32, usize> = HashMap::new();
    for slot in slots.values() {
        *per_uid.entry(slot.uid).or_default() += 1;
    }
    let mut candidates: Vec<_> = slots
        .iter()
        .filter(|(_, s)| !s.line_read)
        .filter_map(|(id, s)| {
            let since = s.idle_since?;
            Some(((per_uid[&s.uid], std::cmp::Reverse(since), *id), s))
        })
        .collect();
    candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
    // In the order they would give way; the first without a request waiting goes (so
    // usually one socket is looked into).
    let mut peeked = vec![0u8; crate::protocol::MAX_LINE + 1];
    candidates
        .into_iter()
        .find(|(_, s)| {
            !s.socket
                .as_ref()
                .is_some_and(|socket| request_waits(socket, s.begun, &mut peeked))
        })
        .map(|((_, _, id), _)| id)
}

/// Whether a request waits unread in `socket`: a whole line, not blank, or, when a
/// line has `begun` (read from it already), the newline that ends it. Looks as far as
/// the longest line allowed (into `peeked`).
fn request_waits(socket: &OwnedFd, begun: bool, peeked: &mut [u8]) -> bool {
    let Ok(n) = crate::sys::peek(socket.as_fd(), peeked) else {
        return false;
    };
    let lines = peeked[..n].split(|&b| b == b'\n');
    let whole = lines.clone().count() - 1; // the part after the last newline is not
    (begun && whole > 0)
        || lines
            .take(whole)
            .any(|line| !line.iter().all(u8::is_ascii_whitespace))
}

/// Whether `buffered` (a connection's read buffer) holds a whole line, and whether it
/// holds the start of one, not blank, without its newline.
fn buffered_lines(buffered: &[u8]) -> (bool, bool) {
    let whole = buffered.contains(&b'\n');
    (whole, !whole && !buffered.iter().all(u8::is_ascii_whitespace))
}

impl Ticket {
    /// The connection waits for its next request from `now` on: it may be evicted,
    /// unless a whole line already waits in its read buffer, `buffered` (sent along
    /// with the last request), or the rest of the line begun there waits in its socket.
    pub fn idle(&self, now: Instant, buffered: &[u8]) {
        let (whole, begun) = buffered_lines(buffered);
        self.set(|slot| {
            slot.idle_since = Some(now);
            slot.line_read = whole;
            slot.begun = begun;
        });
    }

    /// The connection's request is being answered: it keeps its slot.
    pub fn busy(&self) {
        self.set(|slot| {
            slot.idle_since = None;
            slot.line_read = false;
            slot.begun = false;
        });
    }

    /// The line read was blank: the connection is as idle as before it, unless
    /// another line is already in its read buffer, `buffered` (see [`Ticket::idle`]).
    pub fn skipped(&self, buffered: &[u8]) {
        let (whole, begun) = buffered_lines(buffered);
        self.set(|slot| {
            slot.line_read = whole;
            slot.begun = begun;
        });
    }

    /// `inner`, the connection's read half, read only while it holds this slot.
    pub fn guard<R>(&self, inner: R) -> Guarded<R> {
        Guarded {
            inner,
            id: self.id,
            admission: self.admission.clone(),
        }
    }

    fn set(&self, change: impl FnOnce(&mut Slot)) {
        let mut inner = self.admission.inner.lock().expect("admission lock");
        if let Some(slot) = inner.slots.get_mut(&self.id) {
            change(slot);
        }
    }
}

/// A connection's read half whose reads happen under the admission lock: bytes
/// that end a line mark the slot as holding a request in the same step, and a slot
/// given to a newcomer reads nothing more (an error of kind `ConnectionAborted`).
#[derive(Debug)]
pub struct Guarded<R> {
    inner: R,
    id: u64,
    admission: Arc<Admission>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Guarded<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut inner = this.admission.inner.lock().expect("admission lock");
        let Some(slot) = inner.slots.get_mut(&this.id) else {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        };
        // A non-blocking read: the lock is held for one system call at most.
        let start = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = &buf.filled()[start..];
        // End of input ends a last line without a newline: a request too.
        let eof = read.is_empty() && buf.remaining() > 0 && matches!(polled, Poll::Ready(Ok(())));
        slot.line_read |= eof || read.contains(&b'\n');
        slot.begun |= !slot.line_read && !read.iter().all(u8::is_ascii_whitespace);
        polled
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.admission.inner.lock().expect("admission lock");
        inner.slots.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn silent_connections_give_way_longest_idle_first() {
        let t0 = Instant::now();
        let a = Admission::new(3);
        let s = |n: u64| t0 + Duration::from_secs(n);
        let first = a.admit(1000, None, s(0)).unwrap();
        let second = a.admit(1000, None, s(1)).unwrap();
        let third = a.admit(1000, None, s(2)).unwrap();
        let newcomer = a.admit(1000, None, s(3)).expect("an idle slot is given up");
        assert!(first.evicted.is_cancelled(), "the longest idle goes");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert_eq!(a.len(), 3);
        drop(first);
        assert_eq!(a.len(), 3, "dropping an evicted ticket frees nothing twice");
        drop(newcomer);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn the_user_holding_most_slots_gives_way_and_busy_ones_are_kept() {
        let t0 = Instant::now();
        let a = Admission::new(3);
        let operator = a.admit(0, None, t0).unwrap();
        let attacker1 = a.admit(1001, None, t0 + Duration::from_secs(1)).unwrap();
        let attacker2 = a.admit(1001, None, t0 + Duration::from_secs(2)).unwrap();
        let _new = a.admit(1001, None, t0 + Duration::from_secs(3)).unwrap();
        assert!(
            !operator.evicted.is_cancelled(),
            "the older but lone user keeps its slot"
        );
        assert!(attacker1.evicted.is_cancelled());
        assert!(!attacker2.evicted.is_cancelled());
        let b = Admission::new(2);
        let x = b.admit(1, None, t0).unwrap();
        let y = b.admit(1, None, t0).unwrap();
        x.busy();
        y.busy();
        assert!(
            b.admit(2, None, t0).is_none(),
            "every request being answered: busy"
        );
        y.idle(t0, b"");
        assert!(b.admit(2, None, t0).is_some());
        assert!(y.evicted.is_cancelled());
    }

    #[test]
    fn a_connection_whose_request_has_arrived_is_not_idle() {
        use std::io::Write;
        let t0 = Instant::now();
        let a = Admission::new(1);
        let (mut client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let first = a
            .admit(5, Some(server.as_fd().try_clone_to_owned().unwrap()), t0)
            .unwrap();
        client.write_all(b"{\"cmd\":").unwrap();
        assert!(a.admit(5, None, t0).is_some(), "half a line: still idle, evicted");
        assert!(first.evicted.is_cancelled());
        let b = Admission::new(1);
        let _second = b
            .admit(5, Some(server.as_fd().try_clone_to_owned().unwrap()), t0)
            .unwrap();
        client.write_all(b"\"status\"}\n").unwrap();
        assert!(b.admit(5, None, t0).is_none(), "a whole request waits: busy");
    }

    /// The duplicate of its socket `ticket`'s slot keeps.
    fn ticket_socket(a: &Arc<Admission>, ticket: &Ticket) -> OwnedFd {
        let inner = a.inner.lock().unwrap();
        let socket = inner.slots[&ticket.id].socket.as_ref().unwrap();
        socket.try_clone().unwrap()
    }

    /// A connected pair: the client's end and a slot for the server's, in `a`.
    fn connected(a: &Arc<Admission>) -> (std::os::unix::net::UnixStream, tokio::net::UnixStream, Ticket) {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let ticket = a
            .admit(
                5,
                Some(server.as_fd().try_clone_to_owned().unwrap()),
                Instant::now(),
            )
            .unwrap();
        server.set_nonblocking(true).unwrap();
        (client, tokio::net::UnixStream::from_std(server).unwrap(), ticket)
    }

    #[tokio::test]
    async fn regression_a_request_just_read_and_not_yet_marked_busy_was_evicted() {
        use std::io::Write;
        use tokio::io::AsyncBufReadExt;
        let a = Admission::new(1);
        let (mut client, server, ticket) = connected(&a);
        let mut reader = tokio::io::BufReader::new(ticket.guard(server));
        client.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await.unwrap();
        // The request has left the socket; its task has not yet called `busy`.
        assert!(
            a.admit(5, None, Instant::now()).is_none(),
            "a request in hand: busy"
        );
        assert!(!ticket.evicted.is_cancelled());
    }

    #[tokio::test]
    async fn regression_a_long_request_that_had_arrived_was_evicted_as_idle() {
        use std::io::Write;
        use tokio::io::AsyncBufReadExt;
        let a = Admission::new(1);
        let (mut client, server, ticket) = connected(&a);
        let mut reader = tokio::io::BufReader::new(ticket.guard(server));
        // A 20 KB request, whole in the socket; its task has read the first chunk.
        let mut request = format!("{{\"cmd\":\"history\",\"file\":\"/{}\"}}", "a".repeat(20_000));
        request.push('\n');
        client.write_all(request.as_bytes()).unwrap();
        let chunk = reader.fill_buf().await.unwrap().len();
        assert!(chunk < request.len(), "read in part: {chunk} bytes");
        assert!(
            a.admit(5, None, Instant::now()).is_none(),
            "the rest of a begun request waits: busy"
        );
        assert!(!ticket.evicted.is_cancelled());
        // Only begun, its newline not sent: no request yet, the connection gives way.
        let b = Admission::new(1);
        let (mut client, server, ticket) = connected(&b);
        let mut reader = tokio::io::BufReader::new(ticket.guard(server));
        client
            .write_all(&request.as_bytes()[..request.len() - 1])
            .unwrap();
        reader.fill_buf().await.unwrap();
        assert!(
            b.admit(5, None, Instant::now()).is_some(),
            "half a request is idle"
        );
        assert!(ticket.evicted.is_cancelled());
    }

    #[tokio::test]
    async fn a_blank_line_leaves_its_connection_idle_and_an_evicted_one_reads_nothing() {
        use std::io::Write;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let a = Admission::new(1);
        let (mut client, server, ticket) = connected(&a);
        let mut reader = tokio::io::BufReader::new(ticket.guard(server));
        client.write_all(b"\n").unwrap();
        assert!(
            !request_waits(&ticket_socket(&a, &ticket), false, &mut [0; 64]),
            "a blank line is no request"
        );
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await.unwrap();
        ticket.skipped(reader.buffer());
        assert!(
            a.admit(5, None, Instant::now()).is_some(),
            "blank lines hold no slot"
        );
        assert!(ticket.evicted.is_cancelled());
        client.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let read = reader.read(&mut [0u8; 64]).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }
}
