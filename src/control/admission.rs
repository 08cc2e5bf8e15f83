//! Who holds the control socket's connection slots. At most `max` connections are
//! served; when all are taken, a newcomer gets the slot of an idle one (a
//! connection waiting for its next request): first from the user holding the most
//! connections, then the one idle the longest. So silent connections, however
//! many, cannot lock anyone out; only connections whose requests are being
//! answered can fill the slots, and then the newcomer is told `busy`.

use std::collections::HashMap;
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

    /// A slot for a connection from `uid`, evicting an idle one if all are taken;
    /// `None` (busy) when every slot's request is being answered.
    pub fn admit(self: &Arc<Self>, uid: u32, now: Instant) -> Option<Ticket> {
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
        };
        inner.slots.insert(id, slot);
        Some(Ticket {
            id,
            admission: self.clone(),
            evicted: evict,
        })
    }

    /// How many slots are taken.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("admission lock").slots.len()
    }

    /// Whether no slot is taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        .filter_map(|(id, s)| {
            s.idle_since
                .map(|since| (per_uid[&s.uid], std::cmp::Reverse(since), *id))
        })
        .max()
        .map(|(_, _, id)| id)
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
        let first = a.admit(1000, s(0)).unwrap();
        let second = a.admit(1000, s(1)).unwrap();
        let third = a.admit(1000, s(2)).unwrap();
        let newcomer = a.admit(1000, s(3)).expect("an idle slot is given up");
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
        let operator = a.admit(0, t0).unwrap();
        let attacker1 = a.admit(1001, t0 + Duration::from_secs(1)).unwrap();
        let attacker2 = a.admit(1001, t0 + Duration::from_secs(2)).unwrap();
        let _new = a.admit(1001, t0 + Duration::from_secs(3)).unwrap();
        assert!(
            !operator.evicted.is_cancelled(),
            "the older but lone user keeps its slot"
        );
        assert!(attacker1.evicted.is_cancelled());
        assert!(!attacker2.evicted.is_cancelled());
        let b = Admission::new(2);
        let x = b.admit(1, t0).unwrap();
        let y = b.admit(1, t0).unwrap();
        x.busy();
        y.busy();
        assert!(b.admit(2, t0).is_none(), "every request being answered: busy");
        y.idle(t0);
        assert!(b.admit(2, t0).is_some());
        assert!(y.evicted.is_cancelled());
    }
}
