//! Connections counted by client address, so that one client cannot take every
//! connection slot: a connection from an address that already has
//! `max_connections_per_address` open is closed as soon as it is accepted (as
//! nginx's `limit_conn`). An IPv6 client is counted by its /64 (the least a
//! network is given, which one host can use without limit; a client given a
//! larger range counts as many clients), a link-local one by its address (every
//! host on a link shares fe80::/64); an IPv4-mapped address as the IPv4 one. A
//! [`Place`] lives as long as its socket, through a LiveReload upgrade, so an
//! upgraded client counts too.

use crate::metrics::RefusedCounters;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Refusals are warned of at most this often (each warning says how many since).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Open connections by client (see the module's documentation); at most one entry
/// per open connection, none for an address with none open.
#[derive(Debug)]
pub struct Peers {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place in its client's count; given back on drop.
#[derive(Debug)]
pub struct Place {
    peers: Arc<Peers>,
    client: IpAddr,
}

impl Peers {
    /// Counts with at most `limit` connections per client.
    pub fn new(limit: usize) -> Arc<Peers> {
        Arc::new(Peers {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a connection from `addr`; `None` when its client has `limit` open.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<Place> {
        let client = client_of(addr);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.get(&client).is_some_and(|&n| n >= self.limit) || self.limit == 0 {
            return None; // and no entry made for a client refused
        }
        *open.entry(client).or_insert(0) += 1;
        Some(Place {
            peers: self.clone(),
            client,
        })
    }

    /// The most connections one client may have open.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many connections `addr`'s client has open.
    #[cfg(test)]
    fn open_for(&self, addr: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&client_of(addr)).copied().unwrap_or(0)
    }

    /// How many clients have connections open.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Connections closed as soon as accepted, told to operators: counted in the
/// metrics, and warned of at most once every [`WARN_EVERY`] for each reason (one
/// client refused a thousand times a second would otherwise flood the journal).
#[derive(Debug)]
pub struct Refusals {
    counters: RefusedCounters,
    all_slots: Warned,
    per_address: Warned,
}

/// When a reason was last warned of, and how many refusals since.
#[derive(Debug, Default)]
pub(super) struct Warned {
    at: Option<Instant>,
    since: u64,
}

impl Warned {
    /// Counts one; `Some(refusals since the last warning)` when a warning is due.
    pub(super) fn due(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self.at.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return None;
        }
        self.at = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

impl Refusals {
    /// Counting into `counters`.
    pub fn new(counters: RefusedCounters) -> Refusals {
        Refusals {
            counters,
            all_slots: Warned::default(),
            per_address: Warned::default(),
        }
    }

    /// A connection refused because all `slots` were taken.
    pub fn all_slots(&mut self, slots: usize) {
        self.counters.all_slots.inc();
        debug!("HTTP connection refused: {slots} already open");
        if let Some(more) = self.all_slots.due(Instant::now()) {
            warn!(
                refused_since = more,
                "HTTP connections refused: all {slots} connection slots are taken"
            );
        }
    }

    /// A connection from `addr` refused because its client had `limit` open.
    pub fn per_address(&mut self, addr: IpAddr, limit: usize) {
        self.counters.per_address.inc();
        let client = client_of(addr);
        debug!(%client, "HTTP connection refused: {limit} already open from this client");
        if let Some(more) = self.per_address.due(Instant::now()) {
            warn!(
                %client,
                refused_since = more,
                "HTTP connections refused: {limit} already open from this client's address \
                 (max_connections_per_address; an IPv6 client is its /64)"
            );
        }
    }
}

/// The client `addr` is counted as: itself (IPv4), its IPv4 address (IPv4-mapped
/// IPv6), or its /64 (IPv6).
fn client_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if v6.is_unicast_link_local() => IpAddr::V6(v6),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_client_gets_at_most_its_limit_and_others_are_counted_apart() {
        let peers = Peers::new(2);
        let first = [peers.admit(ip("10.0.0.1")), peers.admit(ip("10.0.0.1"))];
        assert!(first.iter().all(Option::is_some));
        assert!(peers.admit(ip("10.0.0.1")).is_none(), "over the limit");
        assert!(peers.admit(ip("10.0.0.2")).is_some(), "another address");
        assert_eq!(peers.open_for(ip("10.0.0.1")), 2);
        drop(first);
        assert_eq!(peers.open_for(ip("10.0.0.1")), 0);
        assert!(peers.admit(ip("10.0.0.1")).is_some(), "places come back");
    }

    #[test]
    fn an_address_with_nothing_open_leaves_no_entry() {
        let peers = Peers::new(4);
        let places: Vec<_> = (0..100)
            .filter_map(|i| peers.admit(ip(&format!("10.0.1.{i}"))))
            .collect();
        assert_eq!(peers.clients(), 100);
        drop(places);
        assert_eq!(peers.clients(), 0);
    }

    #[test]
    fn refusals_are_all_counted_and_warned_of_once_a_minute_for_each_reason() {
        let counters = RefusedCounters::default();
        let mut refusals = Refusals::new(counters.clone());
        for _ in 0..10 {
            refusals.per_address(ip("10.0.0.1"), 1);
        }
        refusals.all_slots(1);
        assert_eq!((counters.per_address.get(), counters.all_slots.get()), (10, 1));
        // The first of each reason was warned of; the other nine wait for the minute.
        assert_eq!((refusals.per_address.since, refusals.all_slots.since), (9, 0));
        let t0 = Instant::now();
        let mut warned = Warned::default();
        assert_eq!(warned.due(t0), Some(1));
        assert_eq!(warned.due(t0 + WARN_EVERY / 2), None);
        assert_eq!(
            warned.due(t0 + WARN_EVERY),
            Some(2),
            "the next warning counts them all"
        );
    }

    #[test]
    fn a_limit_of_zero_refuses_all_and_keeps_no_entry() {
        let peers = Peers::new(0);
        assert!(peers.admit(ip("10.0.0.1")).is_none());
        assert_eq!(peers.clients(), 0);
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_a_mapped_ipv4_as_itself() {
        let peers = Peers::new(1);
        let _a = peers.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(
            peers.admit(ip("2001:db8:1:2:ffff:ffff:ffff:fffe")).is_none(),
            "the same /64"
        );
        assert!(peers.admit(ip("2001:db8:1:3::1")).is_some(), "the next /64");
        let _b = peers.admit(ip("192.0.2.7")).unwrap();
        assert!(peers.admit(ip("::ffff:192.0.2.7")).is_none(), "mapped IPv4");
        let _c = peers.admit(ip("fe80::1")).unwrap();
        assert!(peers.admit(ip("fe80::2")).is_some(), "link-local hosts apart");
    }
}
