//! The daemon's metrics, in the Prometheus (OpenMetrics) text exposition.
//!
//! [`Metrics`] holds the counters and the run-duration histogram, one registry for
//! the daemon's life (a reload keeps them): the places where things happen hold
//! handles into it and increment them (events in the listener task, runs through
//! the listener's metered observer, overflows and rescans after each watcher read,
//! HTTP responses and LiveReload reloads in the HTTP front end, control requests in
//! the control connection loop). Gauges (watches, polled directories, runs queued
//! and running, LiveReload clients, the inotify limit) are read from the daemon's
//! state at each scrape ([`crate::exposition`]) into a registry of their own
//! ([`Gauges`]), so a listener removed by a reload leaves no stale series.
//!
//! Every label value is a config name (listener, route) or one of a fixed set (event
//! kind, outcome, status class, command, result): no path is ever a label, so the
//! number of series is bounded by the config. [`crate::exposition`] serves the text
//! at `/metrics` for `[metrics] listen`.

mod gauges;
mod labels;

pub use gauges::{Gauges, ListenerGauges};
pub use labels::{EventCounters, HttpCounters, RefusedCounters};

use crate::protocol::observe::RunOutcome;
use labels::{
    ClassLabels, ControlLabels, EventLabels, FinishedLabels, KINDS, ListenerLabels, ReasonLabels,
    RouteLabels, route_labels,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The media type of the exposition (OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The upper bounds of the run-duration histogram's buckets, in seconds.
const DURATION_BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The daemon's counters and histogram (see the module's documentation).
pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    runs_started: Family<RouteLabels, Counter>,
    runs_finished: Family<FinishedLabels, Counter>,
    run_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    overflows: Family<ListenerLabels, Counter>,
    rescans: Family<ListenerLabels, Counter>,
    reloads_sent: Counter,
    http_responses: Family<ClassLabels, Counter>,
    http_refused: Family<ReasonLabels, Counter>,
    control_requests: Family<ControlLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("execlib");
        let metrics = Metrics {
            events: Family::default(),
            runs_started: Family::default(),
            runs_finished: Family::default(),
            run_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            overflows: Family::default(),
            rescans: Family::default(),
            reloads_sent: Counter::default(),
            http_responses: Family::default(),
            http_refused: Family::default(),
            control_requests: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "events",
            "File events a listener received, by kind",
            metrics.events.clone(),
        );
        r.register(
            "runs_started",
            "Runs (jobs) started, by listener and route (or post command)",
            metrics.runs_started.clone(),
        );
        r.register(
            "runs_finished",
            "Runs ended, by outcome: succeeded, failed, timed_out, cancelled",
            metrics.runs_finished.clone(),
        );
        r.register_with_unit(
            "run_duration",
            "How long runs took, start to end",
            Unit::Seconds,
            metrics.run_duration.clone(),
        );
        r.register(
            "overflows",
            "inotify queue overflows (events dropped by the kernel)",
            metrics.overflows.clone(),
        );
        r.register(
            "rescans",
            "Rescans of a listener's tree after an overflow",
            metrics.rescans.clone(),
        );
        r.register(
            "livereload_reloads_sent",
            "LiveReload reload messages sent to browsers",
            metrics.reloads_sent.clone(),
        );
        r.register(
            "http_responses",
            "HTTP responses of the site's server, by status class",
            metrics.http_responses.clone(),
        );
        r.register(
            "http_connections_refused",
            "HTTP connections closed as soon as accepted, by reason: all_slots (every \
             connection slot taken), per_address (its client had max_connections_per_address open)",
            metrics.http_refused.clone(),
        );
        r.register(
            "control_requests",
            "Control socket requests, by command and result (ok or the error code)",
            metrics.control_requests.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// Listener `listener`'s event counters (for its task, as it starts). Its overflow
    /// and rescan counters are shown from then on too, at 0 until one happens.
    pub fn events(&self, listener: &str) -> EventCounters {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        drop(self.overflows.get_or_create(&labels));
        drop(self.rescans.get_or_create(&labels));
        EventCounters(KINDS.map(|kind| {
            let labels = EventLabels {
                listener: listener.to_owned(),
                kind: kind.as_str(),
            };
            self.events.get_or_create_owned(&labels)
        }))
    }

    /// A run of `route` (a route's or a post command's name) started.
    pub fn run_started(&self, listener: &str, route: &str) {
        self.runs_started
            .get_or_create(&route_labels(listener, route))
            .inc();
    }

    /// A run of `route` ended with `outcome` after `seconds`.
    pub fn run_finished(&self, listener: &str, route: &str, outcome: &RunOutcome, seconds: f64) {
        let labels = FinishedLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
            outcome: outcome.label(),
        };
        self.runs_finished.get_or_create(&labels).inc();
        self.run_duration
            .get_or_create(&route_labels(listener, route))
            .observe(seconds);
    }

    /// Listener `listener`'s watcher had `overflows` more overflows and `rescans` more
    /// rescans.
    pub fn watcher(&self, listener: &str, overflows: u64, rescans: u64) {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        if overflows > 0 {
            self.overflows.get_or_create(&labels).inc_by(overflows);
        }
        if rescans > 0 {
            self.rescans.get_or_create(&labels).inc_by(rescans);
        }
    }

    /// The counter of LiveReload reload messages sent.
    pub fn reloads_sent(&self) -> Counter {
        self.reloads_sent.clone()
    }

    /// The HTTP response counters, by class; [`HttpCounters::count`] picks one.
    pub fn http_responses(&self) -> HttpCounters {
        HttpCounters(
            labels::CLASSES.map(|class| self.http_responses.get_or_create_owned(&ClassLabels { class })),
        )
    }

    /// The counters of refused HTTP connections, by reason.
    pub fn http_refused(&self) -> RefusedCounters {
        let reason = |reason| self.http_refused.get_or_create_owned(&ReasonLabels { reason });
        RefusedCounters {
            all_slots: reason("all_slots"),
            per_address: reason("per_address"),
        }
    }

    /// A control request for `command` (a known command, `invalid` when the line was
    /// not one) ended with `result` (`ok` or an error code).
    pub fn control_request(&self, command: &str, result: &str) {
        let labels = ControlLabels {
            command: command.to_owned(),
            result: result.to_owned(),
        };
        self.control_requests.get_or_create(&labels).inc();
    }

    /// The exposition of the counters and of `gauges`, `# EOF` included.
    pub fn encode(&self, gauges: &Gauges) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::new();
        let now = gauges.registry();
        text::encode_registry(&mut out, &self.registry).expect("writing to a String cannot fail");
        text::encode_registry(&mut out, &now).expect("writing to a String cannot fail");
        text::encode_eof(&mut out).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests;
