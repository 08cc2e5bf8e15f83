//! The gauges: what is read from the daemon's state at each scrape
//! ([`crate::exposition`]), put in a registry of their own.

use super::labels::ListenerLabels;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One listener's gauges at a scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerGauges {
    /// The listener's name.
    pub name: String,
    /// Directories watched with inotify.
    pub watches: u64,
    /// Directories polled.
    pub polled: u64,
    /// Files whose changes wait for a run.
    pub queued: u64,
    /// Runs going on.
    pub running: u64,
}

/// What is read from the daemon's state at each scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Every listener.
    pub listeners: Vec<ListenerGauges>,
    /// `fs.inotify.max_user_watches`, when readable.
    pub max_user_watches: Option<u64>,
    /// LiveReload clients connected, when LiveReload is on.
    pub livereload_clients: Option<u64>,
}

impl Gauges {
    /// The gauges in a registry of their own (made at each scrape).
    pub(super) fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("execlib");
        let family = |pick: fn(&ListenerGauges) -> u64| {
            let family = Family::<ListenerLabels, Gauge>::default();
            for l in &self.listeners {
                let labels = ListenerLabels {
                    listener: l.name.clone(),
                };
                family.get_or_create(&labels).set(pick(l) as i64);
            }
            family
        };
        let r = &mut registry;
        r.register(
            "watches",
            "Directories a listener watches with inotify",
            family(|l| l.watches),
        );
        r.register(
            "polled_directories",
            "Directories a listener polls (inotify cannot see them or has no watch)",
            family(|l| l.polled),
        );
        r.register(
            "runs_queued",
            "Files whose changes wait for a run",
            family(|l| l.queued),
        );
        r.register("runs_running", "Runs going on", family(|l| l.running));
        if let Some(limit) = self.max_user_watches {
            r.register(
                "inotify_max_user_watches",
                "fs.inotify.max_user_watches: the watches a user may hold (absent when unreadable)",
                gauge(limit),
            );
        }
        if let Some(clients) = self.livereload_clients {
            r.register(
                "livereload_clients",
                "LiveReload clients connected",
                gauge(clients),
            );
        }
        registry
    }
}

fn gauge(value: u64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value as i64);
    gauge
}
