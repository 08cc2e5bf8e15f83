//! Who holds the control socket's connection slots. At most `max` connections are
//! served; when all are taken, a newcomer gets the slot of an idle one (a
//! connection waiting for its next request): first from the user holding the most
//! connections, then the one idle the longest. A connection whose request has
//! arrived (a whole line waits in its socket) is not idle, even before its task has
//! read it. So silent connections, however many, cannot lock anyone out; only
//! connections with requests can fill the slots, and then the newcomer is told `busy`.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
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
    slots
        .iter()
        .filter(|(_, s)| !s.socket.as_ref().is_some_and(request_waits))
        .filter_map(|(id, s)| {
            s.idle_since
                .map(|since| (per_uid[&s.uid], std::cmp::Reverse(since), *id))
        })
        .max()
        .map(|(_, _, id)| id)
}

/// Whether a whole request line (up to 4 KiB) waits unread in `socket`.
fn request_waits(socket: &OwnedFd) -> bool {
    let mut buf = [0u8; 4096];
    crate::sys::peek(socket.as_fd(), &mut buf).is_ok_and(|n| buf[..n].contains(&b'\n'))
}

impl Ticket {
    /// The connection waits for its next request from `now` on: it may be evicted.
    pub fn idle(&self, now: Instant) {
        self.set(Some(now));
    }

    /// The connection's request is being answered: it keeps its slot.
    pub fn busy(&self) {
        self.set(None);
    }

    fn set(&self, idle_since: Option<Instant>) {
        let mut inner = self.admission.inner.lock().expect("admission lock");
        if let Some(slot) = inner.slots.get_mut(&self.id) {
            slot.idle_since = idle_since;
        }
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
        y.idle(t0);
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
}
