//! The exposition's shape: names, labels, types, and what moves what.

use super::labels::{CLASSES, class_index};
use super::*;
use crate::events::EventKind;
use crate::protocol::observe::RunOutcome;

fn gauges() -> Gauges {
    Gauges {
        listeners: vec![ListenerGauges {
            name: "docs".into(),
            watches: 12,
            polled: 1,
            queued: 3,
            running: 2,
        }],
        max_user_watches: Some(8192),
        livereload_clients: None,
    }
}

#[test]
fn counters_histogram_and_gauges_are_exposed_with_config_names_as_labels() {
    let m = Metrics::default();
    let events = m.events("docs");
    events.count(EventKind::Modify);
    events.count(EventKind::Modify);
    events.count(EventKind::Delete);
    m.run_started("docs", "pages");
    m.run_finished("docs", "pages", &RunOutcome::Timeout, 0.3);
    m.watcher("docs", 2, 1);
    m.http_responses().count(404);
    m.reloads_sent().inc();
    m.control_request("status", "ok");
    let text = m.encode(&gauges());
    for line in [
        "execlib_events_total{listener=\"docs\",kind=\"modify\"} 2",
        "execlib_events_total{listener=\"docs\",kind=\"delete\"} 1",
        "execlib_events_total{listener=\"docs\",kind=\"create\"} 0",
        "execlib_runs_started_total{listener=\"docs\",route=\"pages\"} 1",
        "execlib_runs_finished_total{listener=\"docs\",route=\"pages\",outcome=\"timed_out\"} 1",
        "execlib_run_duration_seconds_bucket{le=\"0.25\",listener=\"docs\",route=\"pages\"} 0",
        "execlib_run_duration_seconds_bucket{le=\"0.5\",listener=\"docs\",route=\"pages\"} 1",
        "execlib_run_duration_seconds_count{listener=\"docs\",route=\"pages\"} 1",
        "execlib_overflows_total{listener=\"docs\"} 2",
        "execlib_rescans_total{listener=\"docs\"} 1",
        "execlib_http_responses_total{class=\"4xx\"} 1",
        "execlib_http_responses_total{class=\"2xx\"} 0",
        "execlib_livereload_reloads_sent_total 1",
        "execlib_control_requests_total{command=\"status\",result=\"ok\"} 1",
        "execlib_watches{listener=\"docs\"} 12",
        "execlib_polled_directories{listener=\"docs\"} 1",
        "execlib_runs_queued{listener=\"docs\"} 3",
        "execlib_runs_running{listener=\"docs\"} 2",
        "execlib_inotify_max_user_watches 8192",
        "# TYPE execlib_run_duration_seconds histogram",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    assert!(
        !text.contains("livereload_clients"),
        "no LiveReload, no gauge: {text}"
    );
}

#[test]
fn an_unreadable_limit_is_left_out_rather_than_made_up() {
    let text = Metrics::default().encode(&Gauges {
        max_user_watches: None,
        livereload_clients: Some(0),
        ..gauges()
    });
    assert!(!text.contains("max_user_watches"), "{text}");
    assert!(text.contains("\nexeclib_livereload_clients 0\n"), "{text}");
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::default();
    m.run_started("do\"cs", "a\\b\nc");
    let text = m.encode(&Gauges::default());
    let line = "execlib_runs_started_total{listener=\"do\\\"cs\",route=\"a\\\\b\\nc\"} 1";
    assert!(text.lines().any(|l| l == line), "{text}");
}

#[test]
fn outcome_labels_tell_timeouts_and_stops_from_failures() {
    let label = |o: RunOutcome| o.label();
    assert_eq!(label(RunOutcome::Exited { code: 0 }), "succeeded");
    assert_eq!(label(RunOutcome::Exited { code: 2 }), "failed");
    assert_eq!(label(RunOutcome::Signaled { signal: 15 }), "failed");
    assert_eq!(label(RunOutcome::Timeout), "timed_out");
    assert_eq!(label(RunOutcome::Cancelled), "cancelled");
    let reason = "x".to_owned();
    assert_eq!(label(RunOutcome::NotStarted { reason }), "failed");
}

#[test]
fn http_statuses_fall_in_their_class() {
    assert_eq!(
        [101, 200, 304, 431, 503, 999].map(|s| CLASSES[class_index(s)]),
        ["1xx", "2xx", "3xx", "4xx", "5xx", "5xx"]
    );
}
