//! The metrics' label sets, every value a config name or one of a fixed set, and
//! the handles the daemon's parts hold to count without a lookup: a listener's
//! events by kind, the HTTP responses by status class.

use crate::events::EventKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ListenerLabels {
    pub(super) listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct EventLabels {
    pub(super) listener: String,
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteLabels {
    pub(super) listener: String,
    pub(super) route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FinishedLabels {
    pub(super) listener: String,
    pub(super) route: String,
    /// [`crate::protocol::observe::RunOutcome::label`].
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ClassLabels {
    pub(super) class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabels {
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ControlLabels {
    pub(super) command: String,
    pub(super) result: String,
}

/// Counters of HTTP connections closed as soon as accepted, by why.
#[derive(Clone, Debug, Default)]
pub struct RefusedCounters {
    /// Every connection slot was taken.
    pub all_slots: Counter,
    /// Its client address had `max_connections_per_address` open.
    pub per_address: Counter,
}

/// A listener's event counters, one per kind, taken once when its task starts (so an
/// event costs one atomic increment).
#[derive(Clone, Debug)]
pub struct EventCounters(pub(super) [Counter; 5]);

impl EventCounters {
    /// Counts one event of `kind`.
    pub fn count(&self, kind: EventKind) {
        self.0[kind_index(kind)].inc();
    }
}

pub(super) const KINDS: [EventKind; 5] = [
    EventKind::Create,
    EventKind::Modify,
    EventKind::Delete,
    EventKind::Move,
    EventKind::Attrib,
];

pub(super) fn kind_index(kind: EventKind) -> usize {
    KINDS
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is listed")
}

/// The `class` label's values, in [`HttpCounters`]' order.
pub(super) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index in [`CLASSES`] of an HTTP status code's class (above 599: `5xx`).
pub(super) fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

pub(super) fn route_labels(listener: &str, route: &str) -> RouteLabels {
    RouteLabels {
        listener: listener.to_owned(),
        route: route.to_owned(),
    }
}

/// Counters of HTTP responses by status class, for the HTTP front end.
#[derive(Clone, Debug)]
pub struct HttpCounters(pub(super) [Counter; 5]);

impl HttpCounters {
    /// Counts one response with `status`.
    pub fn count(&self, status: u16) {
        self.0[class_index(status)].inc();
    }
}
