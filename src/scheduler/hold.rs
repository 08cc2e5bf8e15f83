//! Holds: the due runs of a route wait while a version-control operation (or a tool
//! named in `hold_while`) is at work on its tree.
//!
//! A gate guards the routes that share one list of hold paths. When a run of such a
//! route becomes due, the gate looks at its paths through an injected [`Probe`] (so
//! this stays pure, and testable on paused time): while one exists, the gate holds the
//! due runs of its routes (they stay pending, still gathering changes) and looks again
//! every [`POLL`]. It opens once none of its paths has been seen, and no change has
//! come in for its routes, for [`SETTLE`]; the held runs are then due again under
//! their own timing. A hold lasts at most its `max`: then the runs go ahead, and the
//! paths still there are ignored ("stale": a stopped merge, a lock a crashed tool left)
//! until they are seen gone, or replaced by another file (a new lock of a new
//! operation, told apart by its identity: device, inode and change time). A gate looks at its paths only when a run of its routes is
//! due, or while it holds: a listener without holds does no I/O here at all.

use super::Key;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// How often a holding gate looks at its paths.
pub const POLL: Duration = Duration::from_millis(50);

/// How long the paths must have been gone, and the routes' trees quiet, before a
/// hold ends: it bridges the gaps between the steps of an operation (a `git stash` is
/// several git commands) and lets the listener read the operation's last events.
pub const SETTLE: Duration = Duration::from_millis(100);

/// What is at a path now: an identity (device, inode and change time, folded) that
/// tells one file from a later one at the same path; `None` when nothing is.
pub type Probe = Box<dyn Fn(&Path) -> Option<u128> + Send + Sync>;

/// What one gate watches.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldSpec {
    /// Whose paths they are, for the log ("git work tree /srv/site (routes pages)").
    pub label: String,
    /// While one of these exists, the due runs of the gate's routes wait.
    pub paths: Vec<PathBuf>,
    /// The longest a hold lasts.
    pub max: Duration,
}

/// A listener's holds: each gate and the routes (indexes) it guards, and how to
/// look at a path.
pub struct Holds {
    /// One per distinct [`HoldSpec`].
    pub gates: Vec<(HoldSpec, Vec<usize>)>,
    /// Whether a path exists.
    pub probe: Probe,
}

/// What a gate did, for the log.
#[derive(Debug, Clone, PartialEq)]
pub enum HoldNotice {
    /// A hold began: these paths exist.
    Started {
        /// The gate's label.
        label: String,
        /// The paths found.
        present: Vec<PathBuf>,
    },
    /// The paths are gone: the held runs are due again.
    Ended {
        /// The gate's label.
        label: String,
        /// How long the hold lasted.
        held: Duration,
        /// How many runs it held.
        runs: usize,
    },
    /// The hold reached its maximum: the runs go ahead, and `stale` (still there) is
    /// ignored until it is gone.
    Expired {
        /// The gate's label.
        label: String,
        /// How long the hold lasted.
        held: Duration,
        /// How many runs it held.
        runs: usize,
        /// The paths still there.
        stale: Vec<PathBuf>,
    },
}

#[derive(Debug)]
struct Hold {
    since: Instant,
    keys: HashSet<Key>,
    /// Since when the paths have not been seen.
    clear_since: Option<Instant>,
    next_look: Instant,
}

#[derive(Debug)]
struct Gate {
    spec: HoldSpec,
    /// Per path: the file found still there when a hold expired; ignored until it is
    /// gone or another file takes its place.
    stale: Vec<Option<u128>>,
    /// The last change submitted for one of its routes.
    last_change: Option<Instant>,
    /// The last look: when, and the live paths (not stale) found, with their identity.
    looked: Option<(Instant, Vec<(PathBuf, u128)>)>,
    hold: Option<Hold>,
}

/// The gates of one listener.
pub(super) struct Gates {
    gates: Vec<Gate>,
    /// By route index: its gate.
    by_route: Vec<Option<usize>>,
    probe: Probe,
    notices: Vec<HoldNotice>,
}

impl std::fmt::Debug for Gates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gates")
            .field("gates", &self.gates)
            .field("by_route", &self.by_route)
            .finish_non_exhaustive()
    }
}

impl Gates {
    pub fn new(holds: Holds) -> Self {
        let mut by_route = Vec::new();
        let mut gates = Vec::new();
        for (index, (spec, routes)) in holds.gates.into_iter().enumerate() {
            for route in routes {
                if by_route.len() <= route {
                    by_route.resize(route + 1, None);
                }
                by_route[route] = Some(index);
            }
            gates.push(Gate {
                stale: vec![None; spec.paths.len()],
                spec,
                last_change: None,
                looked: None,
                hold: None,
            });
        }
        Gates {
            gates,
            by_route,
            probe: holds.probe,
            notices: Vec::new(),
        }
    }

    fn gate_of(&self, route: usize) -> Option<usize> {
        self.by_route.get(route).copied().flatten()
    }

    /// A change for `route` was submitted at `now`.
    pub fn changed(&mut self, route: usize, now: Instant) {
        if let Some(g) = self.gate_of(route) {
            self.gates[g].last_change = Some(now);
        }
    }

    /// When a holding gate looks next.
    pub fn next_look(&self) -> Option<Instant> {
        self.gates
            .iter()
            .filter_map(|g| g.hold.as_ref())
            .map(|h| h.next_look)
            .min()
    }

    /// `key` is due at `now`: whether its gate holds it (it is then kept, and handed
    /// back by [`Gates::poll`] when the hold ends).
    pub fn hold(&mut self, key: &Key, now: Instant) -> bool {
        let Some(g) = self.gate_of(key.0) else {
            return false;
        };
        if let Some(hold) = &mut self.gates[g].hold {
            hold.keys.insert(key.clone());
            return true;
        }
        let present = self.look(g, now);
        if present.is_empty() {
            return false;
        }
        let gate = &mut self.gates[g];
        gate.hold = Some(Hold {
            since: now,
            keys: [key.clone()].into(),
            clear_since: None,
            next_look: (now + POLL).min(now + gate.spec.max),
        });
        self.notices.push(HoldNotice::Started {
            label: gate.spec.label.clone(),
            present,
        });
        true
    }

    /// Looks again where a hold's time to look has come; returns the keys of the holds
    /// that ended (due again at `now`).
    pub fn poll(&mut self, now: Instant) -> Vec<Key> {
        let mut released = Vec::new();
        for g in 0..self.gates.len() {
            if self.gates[g].hold.as_ref().is_none_or(|h| h.next_look > now) {
                continue;
            }
            let present = self.look(g, now);
            let gate = &mut self.gates[g];
            let hold = gate.hold.as_mut().expect("checked above");
            if present.is_empty() {
                hold.clear_since.get_or_insert(now);
            } else {
                hold.clear_since = None;
            }
            let quiet_since = |at: Instant| now.duration_since(at) >= SETTLE;
            let gone = hold.clear_since.is_some_and(quiet_since);
            let quiet = gate.last_change.is_none_or(quiet_since);
            let over = now.duration_since(hold.since) >= gate.spec.max;
            if !(gone && quiet || over) {
                hold.next_look = (now + POLL).min(hold.since + gate.spec.max);
                continue;
            }
            let hold = gate.hold.take().expect("checked above");
            let (label, held, runs) = (gate.spec.label.clone(), now - hold.since, hold.keys.len());
            self.notices.push(if present.is_empty() {
                HoldNotice::Ended { label, held, runs }
            } else {
                let found = gate.looked.take().map(|(_, found)| found).unwrap_or_default();
                for (stale, path) in gate.stale.iter_mut().zip(&gate.spec.paths) {
                    if let Some((_, id)) = found.iter().find(|(p, _)| p == path) {
                        *stale = Some(*id);
                    }
                }
                HoldNotice::Expired {
                    label,
                    held,
                    runs,
                    stale: present,
                }
            });
            released.extend(hold.keys);
        }
        released
    }

    /// The live paths (not stale) of gate `g` that exist at `now`; looked at once per
    /// instant. A stale path seen gone is live again; another file there is live.
    fn look(&mut self, g: usize, now: Instant) -> Vec<PathBuf> {
        let gate = &mut self.gates[g];
        if let Some((_, found)) = gate.looked.as_ref().filter(|(at, _)| *at == now) {
            return found.iter().map(|(p, _)| p.clone()).collect();
        }
        let mut found = Vec::new();
        for (path, stale) in gate.spec.paths.iter().zip(gate.stale.iter_mut()) {
            match (self.probe)(path) {
                None => *stale = None,
                Some(id) if *stale == Some(id) => {}
                Some(id) => found.push((path.clone(), id)),
            }
        }
        let present = found.iter().map(|(p, _)| p.clone()).collect();
        gate.looked = Some((now, found));
        present
    }

    /// Whether `key` is held.
    pub fn is_held(&self, key: &Key) -> bool {
        self.gate_of(key.0)
            .and_then(|g| self.gates[g].hold.as_ref())
            .is_some_and(|h| h.keys.contains(key))
    }

    /// The listener is stopping: every hold is dropped (its runs with it).
    pub fn stop(&mut self) {
        for gate in &mut self.gates {
            gate.hold = None;
        }
    }

    /// What the gates did since the last call.
    pub fn take_notices(&mut self) -> Vec<HoldNotice> {
        std::mem::take(&mut self.notices)
    }
}
