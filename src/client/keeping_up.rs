//! The lines `status` and `listeners` add for "is it keeping up": watches in use
//! against the limit, polled directories, overflows and the last one's time, runs
//! queued, and how each listener's last run ended.

use crate::names::{escaped, one_line};
use crate::protocol::replies::{LastRun, Listeners, Status, Watches};
use std::time::SystemTime;

/// How long ago `at_ms` (milliseconds since the epoch) was, roughly: "4 s ago".
fn ago(at_ms: u64) -> String {
    let now = crate::protocol::epoch_ms(SystemTime::now());
    let secs = now.saturating_sub(at_ms) / 1000;
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7200 => format!("{} min ago", secs / 60),
        7200..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// "12 of 8192 (fs.inotify.max_user_watches)", or the limit unreadable.
fn watches(w: &Watches) -> String {
    match w.limit {
        Some(limit) => format!("{} in use of {limit} (fs.inotify.max_user_watches)", w.in_use),
        None => format!(
            "{} in use; limit unreadable (/proc/sys hidden, as under ProcSubset=pid)",
            w.in_use
        ),
    }
}

/// "pages /src/a.md: failed (exit code 2) after 120 ms, 4 s ago (run 12)". Its
/// fields come from the history's file: escaped.
fn last_run(run: &LastRun) -> String {
    let reason = match &run.reason {
        Some(reason) if run.outcome != "timed_out" => format!(" ({})", one_line(reason)),
        _ => String::new(),
    };
    format!(
        "{} {}: {}{reason} after {} ms, {} (run {})",
        one_line(&run.route),
        escaped(&run.file),
        one_line(&run.outcome),
        run.duration_ms,
        ago(run.at_ms),
        run.id
    )
}

/// "2, the last 5 min ago", or "0".
fn overflows(count: u64, last_ms: Option<u64>) -> String {
    match last_ms {
        Some(at) if count > 0 => format!("{count}, the last {}", ago(at)),
        _ => count.to_string(),
    }
}

/// The lines after the `listeners` table (each starts with a newline).
pub fn listeners(reply: &Listeners) -> String {
    let mut out = String::new();
    for l in &reply.listeners {
        let run = l.last_run.as_ref().map_or("none".to_owned(), last_run);
        out.push_str(&format!(
            "\n{}: queued {}, open for writing {}, polled {}, overflows {}, last run: {run}",
            l.name,
            l.jobs_queued,
            l.files_open,
            l.polled.len(),
            overflows(l.overflows, l.last_overflow_ms),
        ));
    }
    if let Some(w) = &reply.watches {
        out.push_str(&format!("\nwatches: {}", watches(w)));
    }
    out
}

/// The lines after the rest of `status` (each starts with a newline).
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    if let Some(w) = &s.watches {
        out.push_str(&format!("\nwatches  {}", watches(w)));
    }
    out.push_str(&format!("\npolled   {} directories", s.polled_directories));
    out.push_str(&format!(
        "\noverflows {}",
        overflows(s.overflows, s.last_overflow_ms)
    ));
    out.push_str(&format!(
        "\nqueued   {} runs, {} files held open for writing",
        s.jobs_queued, s.files_open
    ));
    for (listener, run) in &s.last_runs {
        out.push_str(&format!("\nlast run {listener}: {}", last_run(run)));
    }
    if let Some(metrics) = &s.metrics {
        out.push_str(&format!("\nmetrics  http://{metrics}/metrics"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_limit_is_said_and_a_failed_run_gives_its_reason() {
        let w = Watches {
            in_use: 12,
            limit: None,
        };
        assert!(watches(&w).contains("limit unreadable"), "{}", watches(&w));
        let w = Watches {
            in_use: 12,
            limit: Some(8192),
        };
        assert_eq!(watches(&w), "12 in use of 8192 (fs.inotify.max_user_watches)");
        let run = LastRun {
            id: 12,
            route: "pages".into(),
            file: "/src/a\n.md".into(),
            outcome: "failed".into(),
            reason: Some("exit code 2".into()),
            duration_ms: 120,
            at_ms: 0,
        };
        let line = last_run(&run);
        assert!(
            line.starts_with("pages /src/a\\n.md: failed (exit code 2) after 120 ms, "),
            "{line}"
        );
        assert!(line.ends_with(" d ago (run 12)"), "{line}");
    }
}
