//! Replies for people: tables and lines from the protocol's typed replies. Paths
//! are shown escaped ([`crate::names::escaped`]), so two names never look the same
//! and none breaks a table.

use super::keeping_up;
use crate::names::escaped;
use crate::protocol::replies::{JobView, ListenerInfo, ListenerState, Reloaded, ServerInfo, Status};
use crate::protocol::{ErrorBody, Request, Response};

/// The text for a successful reply, or the error the daemon answered with. A
/// success of another kind than `request` expects cannot happen:
/// [`Response::from_line`] reads the reply as that request's.
pub fn render(request: &Request, response: &Response) -> Result<String, ErrorBody> {
    Ok(match (request, response) {
        (_, Response::Error(failed)) => return Err(failed.error.clone()),
        (_, Response::Listeners(l)) => {
            let mut text = listeners(&l.listeners);
            text.push_str(&keeping_up::listeners(l));
            text
        }
        (Request::Start { listener }, Response::Changed(c)) => match c.changed {
            true => format!("started {listener}"),
            false => format!("{listener} was already running"),
        },
        (Request::Stop { listener }, Response::Changed(c)) => match c.changed {
            true => format!("stopped {listener}"),
            false => format!("{listener} was already stopped"),
        },
        (_, Response::Changed(c)) => format!("changed: {}", c.changed),
        (_, Response::Status(s)) => status(s) + &keeping_up::status(s),
        (_, Response::Reloaded(r)) => reloaded(r),
        (_, Response::Jobs(j)) => jobs(&j.jobs),
        (_, Response::Triggered(t)) => match t.matched {
            1 => "1 route matched".to_owned(),
            n => format!("{n} routes matched"),
        },
        (_, Response::Done(_)) => "shutting down".to_owned(),
        (_, Response::Metrics(m)) => m.text.trim_end().to_owned(),
        (_, Response::History(h)) => super::observe::history(&h.runs),
        (_, Response::HistoryRun(r)) => super::observe::run(&r.run),
        (_, Response::Explained(e)) => super::observe::explained(e),
        (_, Response::Events(e)) => super::observe::events(&e.events, e.following),
    })
}

fn reloaded(r: &Reloaded) -> String {
    let mut lines = vec!["reloaded".to_owned()];
    let applied = &r.listeners;
    for (what, list) in [
        ("changed", &applied.changed),
        ("added", &applied.added),
        ("removed", &applied.removed),
    ] {
        if !list.is_empty() {
            lines.push(format!("  {what}: {}", list.join(", ")));
        }
    }
    lines.push(format!("  unchanged: {} listener(s)", applied.unchanged.len()));
    lines.push(format!("  server: {}", r.server));
    for section in &r.restart_needed {
        lines.push(format!("  {section} changed: applies at the next start"));
    }
    lines.join("\n")
}

fn state_name(state: ListenerState) -> &'static str {
    match state {
        ListenerState::Running => "running",
        ListenerState::Stopped => "stopped",
        ListenerState::Starting => "starting",
        ListenerState::Degraded => "degraded",
        ListenerState::Failed => "failed",
    }
}

fn listeners(listeners: &[ListenerInfo]) -> String {
    let mut rows = vec![
        [
            "NAME", "STATE", "WATCHES", "EVENTS", "JOBS", "FAILED", "RUNNING", "PATHS",
        ]
        .map(String::from),
    ];
    let mut errors = Vec::new();
    for l in listeners {
        let paths: Vec<String> = l.paths.iter().map(|p| escaped(p).to_string()).collect();
        rows.push([
            l.name.clone(),
            state_name(l.state).to_owned(),
            l.watches.to_string(),
            l.events.to_string(),
            l.jobs_started.to_string(),
            l.jobs_failed.to_string(),
            l.jobs_running.to_string(),
            paths.join(" "),
        ]);
        if let Some(e) = &l.error {
            errors.push(format!("{}: {e}", l.name));
        }
        for link in &l.links {
            errors.push(format!(
                "{}: {} -> {}",
                l.name,
                escaped(&link.path),
                escaped(&link.target)
            ));
        }
    }
    let mut out = vec![table(&rows)];
    out.extend(errors);
    out.join("\n")
}

fn jobs(jobs: &[JobView]) -> String {
    if jobs.is_empty() {
        return "no jobs".to_owned();
    }
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let mut rows = vec![["LISTENER", "ROUTE", "STATE", "PID", "RUNNING_MS", "FILE"].map(String::from)];
    for j in jobs {
        rows.push([
            j.listener.clone(),
            j.route.clone(),
            j.state.clone(),
            or_dash(j.pid.map(|p| p.to_string())),
            or_dash(j.running_ms.map(|ms| ms.to_string())),
            escaped(&j.file).to_string(),
        ]);
    }
    table(&rows)
}

/// Rows as left-aligned columns, two spaces apart.
pub(super) fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect();
    lines.join("\n")
}

fn server(server: Option<&ServerInfo>) -> String {
    let Some(s) = server else {
        return "none".to_owned();
    };
    let activated = if s.socket_activated {
        " (socket from systemd)"
    } else {
        ""
    };
    let livereload = if s.livereload {
        format!("on, {} client(s)", s.livereload_clients)
    } else {
        "off".to_owned()
    };
    format!("{}{activated}, LiveReload {livereload}", s.listen)
}

fn status(s: &Status) -> String {
    let uptime = s.uptime_ms / 1000;
    let mut out = format!("instance {} (pid {}, version {})\n", s.instance, s.pid, s.version);
    if let Some(unit) = &s.unit {
        out.push_str(&format!("unit     {unit}\n"));
    }
    if let Some(containment) = &s.containment {
        out.push_str(&format!("jobs     {containment}\n"));
    }
    if let Some(build) = &s.last_build {
        let what = format!("{}/{} {}", build.listener, build.route, escaped(&build.file));
        match &build.reason {
            None => out.push_str(&format!("build    ok: {what}\n")),
            Some(reason) => {
                out.push_str(&format!("build    FAILED: {what}: {reason}\n"));
                if let Some(last) = build.output.last() {
                    out.push_str(&format!(
                        "         last output: {}\n",
                        crate::names::one_line(last)
                    ));
                }
            }
        }
    }
    out.push_str(&format!(
        "uptime   {}h{:02}m{:02}s\nlisteners {}/{} running\nserver   {}",
        uptime / 3600,
        uptime / 60 % 60,
        uptime % 60,
        s.listeners.running,
        s.listeners.total,
        server(s.server.as_ref()),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::replies;

    #[test]
    fn tables_escape_hostile_names_and_errors_come_back() {
        let job = JobView {
            listener: "docs".into(),
            route: "pages".into(),
            file: <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(b"/a\n\xff".to_vec())
                .into(),
            state: "waiting".into(),
            pid: None,
            running_ms: None,
        };
        let text = render(&Request::Jobs, &Response::Jobs(replies::Jobs { jobs: vec![job] })).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with("waiting  -    -           /a\\n\\xff"), "{text}");
        let busy = Response::error(crate::protocol::ErrorCode::Busy, "try again");
        assert_eq!(render(&Request::Status, &busy).unwrap_err().message, "try again");
    }
}
