//! `history`, `explain` and `events` for people: a table of runs, one run with its
//! output, one line per route, one line per event. Paths are escaped, and so is a
//! job's output (it may hold anything, terminal escapes included).

use crate::names::{escaped, one_line};
use crate::protocol::observe::{Explained, RouteVerdict, RunOutcome, RunRecord, SeenEvent};

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3600, rest / 60 % 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}")
}

/// How a run ended, on one line (a history file may hold anything).
fn outcome(o: &RunOutcome) -> String {
    one_line(&o.describe()).into_owned()
}

fn files(run: &RunRecord) -> String {
    let first = run
        .files
        .first()
        .map(|f| escaped(f).to_string())
        .unwrap_or_default();
    match run.count {
        0 | 1 => first,
        n => format!("{first} (+{} more)", n - 1),
    }
}

/// The runs as a table, newest first.
pub fn history(runs: &[RunRecord]) -> String {
    if runs.is_empty() {
        return "no runs".to_owned();
    }
    let mut rows = vec![
        [
            "ID",
            "STARTED (UTC)",
            "MS",
            "LISTENER",
            "ROUTE",
            "OUTCOME",
            "FILES",
        ]
        .map(String::from),
    ];
    for r in runs {
        rows.push([
            r.id.to_string(),
            clock(r.started_ms),
            r.duration_ms.to_string(),
            one_line(&r.listener).into_owned(),
            one_line(&r.route).into_owned(),
            outcome(&r.outcome),
            files(r),
        ]);
    }
    super::render::table(&rows)
}

/// One run, with the last lines of its output.
pub fn run(r: &RunRecord) -> String {
    let stage = r
        .stage
        .map_or("post command".to_owned(), |s| format!("stage {s}"));
    let mut out = vec![
        format!(
            "run {}: {}/{} ({stage})",
            r.id,
            one_line(&r.listener),
            one_line(&r.route)
        ),
        format!("  started  {} UTC, ran {} ms", clock(r.started_ms), r.duration_ms),
        format!("  outcome  {}", outcome(&r.outcome)),
    ];
    if let (Some(cpu), Some(peak)) = (r.cpu_usec, r.memory_peak) {
        out.push(format!(
            "  used     {:.1} ms CPU, peak memory {:.1} MiB",
            cpu as f64 / 1000.0,
            peak as f64 / (1024.0 * 1024.0)
        ));
    }
    out.push(format!("  files    {} in all", r.count));
    out.extend(r.files.iter().map(|f| format!("    {}", escaped(f))));
    match r.output.is_empty() {
        true => out.push("  output   none".into()),
        false => {
            out.push(format!("  output (last {} lines)", r.output.len()));
            out.extend(r.output.iter().map(|l| format!("    {}", one_line(l))));
        }
    }
    out.join("\n")
}

/// A route's answer on one line.
fn verdict(v: &RouteVerdict) -> String {
    let answer = match (v.runs, v.reason.as_str()) {
        (true, "runs") => "runs".to_owned(),
        (true, reason) => format!("runs ({reason})"),
        (false, reason) => format!("does not run ({reason})"),
    };
    let last = match &v.last_run {
        Some(run) => format!(
            "last run {} at {} UTC: {}",
            run.id,
            clock(run.started_ms),
            outcome(&run.outcome)
        ),
        None => "no run for it in the history".to_owned(),
    };
    format!("{}/{}: {answer}: {}; {last}", v.listener, v.route, v.detail)
}

/// `explain`: the path, then one line per route.
pub fn explained(e: &Explained) -> String {
    let mut out = vec![format!("a {} of {}:", e.event, escaped(&e.path))];
    out.extend(e.notes.iter().map(|n| format!("  note: {n}")));
    if e.routes.is_empty() {
        out.push("  no listener has a route".into());
    }
    out.extend(e.routes.iter().map(|v| format!("  {}", verdict(v))));
    out.join("\n")
}

/// One event on one line, like `inotifywait -m`: time, listener, kind, path, routes.
pub fn event(e: &SeenEvent) -> String {
    let routes = match e.routes.is_empty() {
        true => "no route".to_owned(),
        false => e.routes.join(","),
    };
    format!(
        "{} {} {} {} -> {routes}",
        clock(e.at_ms),
        e.listener,
        e.kind,
        escaped(&e.path)
    )
}

/// The recent events, oldest first.
pub fn events(events: &[SeenEvent], following: bool) -> String {
    if events.is_empty() && !following {
        return "no events yet".to_owned();
    }
    let lines: Vec<String> = events.iter().map(event).collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_utc_civil_time() {
        assert_eq!(clock(0), "1970-01-01 00:00:00");
        assert_eq!(clock(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(clock(1_796_055_845_000), "2026-11-30 16:24:05");
    }

    #[test]
    fn output_and_paths_cannot_forge_lines() {
        let r = RunRecord {
            id: 3,
            listener: "docs".into(),
            route: "pages".into(),
            stage: Some(0),
            files: vec![
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(b"/a\nb\xff".to_vec())
                    .into(),
            ],
            count: 1,
            started_ms: 0,
            duration_ms: 5,
            outcome: RunOutcome::Exited { code: 2 },
            cpu_usec: None,
            memory_peak: None,
            output: vec!["\u{1b}[2Jboom\rx".into()],
        };
        let text = run(&r);
        assert!(text.contains("    /a\\nb\\xff"), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
        assert_eq!(history(std::slice::from_ref(&r)).lines().count(), 2);
    }

    #[test]
    fn terminal_escapes_in_a_history_files_route_or_reason_are_not_printed_raw() {
        let r = RunRecord {
            id: 3,
            listener: "docs".into(),
            route: "pa\u{1b}]0;x\u{7}ges".into(),
            stage: None,
            files: Vec::new(),
            count: 0,
            started_ms: 0,
            duration_ms: 5,
            outcome: RunOutcome::NotStarted {
                reason: "no\u{1b}[2J\nway".into(),
            },
            cpu_usec: None,
            memory_peak: None,
            output: Vec::new(),
        };
        let text = run(&r);
        assert!(!text.contains(['\u{1b}', '\u{7}']), "{text}");
        assert!(
            text.contains("no\\u{1b}[2J\\nway") && text.contains("pa\\u{1b}]0;x\\u{7}ges"),
            "{text}"
        );
        let table = history(std::slice::from_ref(&r));
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(!table.contains(['\u{1b}', '\u{7}']), "{table}");
        let verdict = verdict(&RouteVerdict {
            listener: "docs".into(),
            route: "pages".into(),
            runs: true,
            reason: "runs".into(),
            detail: "d".into(),
            last_run: Some(crate::protocol::observe::LastRun {
                id: 3,
                started_ms: 0,
                outcome: r.outcome.clone(),
            }),
        });
        assert!(!verdict.contains('\u{1b}'), "{verdict}");
    }
}
