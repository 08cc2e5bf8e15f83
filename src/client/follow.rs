//! `execlibctl events --follow`: reads the daemon's stream line by line, printing
//! each event as it comes (never a keepalive line), until the daemon says it is
//! stopping or closes the connection (exit 0 either way, with a line saying so).
//! Ctrl-C ends the client; the daemon sees the connection close and frees the
//! follower's slot. Also the one rewrite of a command line into its request:
//! `history show ID` is `history` with `id`, and `explain`'s and `history
//! --file`'s relative paths are made absolute against the client's current
//! directory.

use super::{ClientError, EXIT_DAEMON_ERROR, EXIT_UNREACHABLE, Target, observe};
use crate::protocol::observe::{HistoryShow, Streamed};
use crate::protocol::{Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::path::{Component, Path, PathBuf};

/// The request a command line means: `history show ID` becomes `history` with `id`;
/// `explain PATH` and `history --file PATH` with a relative PATH name the file
/// relative to the current directory, as a shell user means it (the daemon would
/// take it relative to its config's directory).
pub fn normalize(command: Request) -> Request {
    match command {
        Request::History(mut query) => {
            if let Some(HistoryShow::Show { id }) = query.show.take() {
                query.id = Some(id);
            }
            query.file = query.file.map(|f| from_here(&f));
            Request::History(query)
        }
        Request::Explain(mut args) => {
            args.path = from_here(&args.path);
            Request::Explain(args)
        }
        other => other,
    }
}

/// `path` made absolute against the current directory, lexically (its bytes kept,
/// symlinks not followed). Leading `..` go up from the current directory, which the
/// kernel reports resolved, so that is exact; a `..` further in is kept, for the
/// daemon to refuse. An empty path, or one without a current directory, is kept as
/// given: the daemon's rule then applies.
fn from_here(path: &Path) -> PathBuf {
    if path.is_absolute() || path.as_os_str().is_empty() {
        return path.to_owned();
    }
    let Ok(mut base) = std::env::current_dir() else {
        return path.to_owned();
    };
    let mut rest = path.components();
    loop {
        let before = rest.clone();
        match rest.next() {
            Some(Component::CurDir) => {}
            Some(Component::ParentDir) => {
                base.pop();
            }
            _ => return base.join(before.as_path()),
        }
    }
}

/// Follows the event stream; returns the exit code.
pub fn follow(target: &Target, request: &Request, json: bool) -> u8 {
    match stream(target, request, json) {
        Ok(code) => code,
        Err(e) => {
            super::say(format_args!("{e}"));
            EXIT_UNREACHABLE
        }
    }
}

fn stream(target: &Target, request: &Request, json: bool) -> Result<u8, ClientError> {
    let bad = |reason: String| ClientError::BadReply {
        path: target.path.clone(),
        reason,
    };
    let mut socket = super::connect(target)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    let written = socket.write_all(line.as_bytes());
    let mut reader = BufReader::new(socket);
    let mut reply = String::new();
    let read = reader.read_line(&mut reply);
    if reply.is_empty() {
        written.map_err(|source| ClientError::Unreachable {
            path: target.path.clone(),
            source,
        })?;
        read.map_err(|e| bad(e.to_string()))?;
        return Err(bad("the daemon closed the connection without answering".into()));
    }
    let out = &mut std::io::stdout().lock();
    match Response::from_line(request, &reply).map_err(|e| bad(format!("{e}: {reply:?}")))? {
        Response::Events(first) => {
            let text = if json {
                reply.trim_end().to_owned()
            } else {
                observe::events(&first.events, true)
            };
            if !text.is_empty()
                && let Err(e) = super::write_out(out, &format!("{text}\n"))
            {
                return Ok(super::failed_output(&e).unwrap_or(0));
            }
        }
        Response::Error(failed) => {
            if !json {
                super::say_refused(&failed.error);
            } else if let Err(e) = super::write_out(out, &reply) {
                return Ok(super::failed_output(&e).unwrap_or(EXIT_DAEMON_ERROR));
            }
            return Ok(EXIT_DAEMON_ERROR);
        }
        other => return Err(bad(format!("not an events reply: {other:?}"))),
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => {
                let closed = super::write_out(out, "the daemon closed the connection (it stopped)\n");
                return Ok(closed.err().and_then(|e| super::failed_output(&e)).unwrap_or(0));
            }
            Ok(_) => {}
        }
        let streamed: Streamed = serde_json::from_str(&line).map_err(|e| bad(format!("{e}: {line:?}")))?;
        let text = match (&streamed, json) {
            // Only there to tell a follower that stopped reading: not shown, even with --json.
            (Streamed::Keepalive(_), _) => continue,
            (_, true) => line.trim_end().to_owned(),
            (Streamed::Event(e), false) => observe::event(e),
            (Streamed::Lagged(n), false) => format!("lagged: {n} events not shown (this client fell behind)"),
            (Streamed::End(why), false) => format!("the daemon stopped: {why}"),
        };
        if let Err(e) = super::write_out(out, &format!("{text}\n")) {
            return Ok(super::failed_output(&e).unwrap_or(0));
        }
        if matches!(streamed, Streamed::End(_)) {
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn explain_and_history_file_relative_paths_are_taken_from_the_current_directory() {
        let here = std::env::current_dir().unwrap();
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"src/x\xff\n.md"));
        assert_eq!(from_here(odd), here.join(odd), "bytes kept");
        assert_eq!(from_here(Path::new("./a.md")), here.join("a.md"));
        assert_eq!(
            from_here(Path::new("../a.md")),
            here.parent().unwrap().join("a.md")
        );
        assert_eq!(
            from_here(Path::new("a/../b")),
            here.join("a/../b"),
            "left to the daemon to refuse"
        );
        assert_eq!(from_here(Path::new("/abs/a.md")), Path::new("/abs/a.md"));
        assert_eq!(
            from_here(Path::new("")),
            Path::new(""),
            "the daemon says it is empty"
        );
        let explain = crate::protocol::observe::ExplainArgs {
            path: "a.md".into(),
            event: "modify".into(),
        };
        let Request::Explain(args) = normalize(Request::Explain(explain)) else {
            panic!("still explain")
        };
        assert_eq!(args.path, here.join("a.md"));
        let query = crate::protocol::observe::HistoryQuery {
            file: Some("a.md".into()),
            ..Default::default()
        };
        let Request::History(query) = normalize(Request::History(query)) else {
            panic!("still history")
        };
        assert_eq!(query.file, Some(here.join("a.md")));
        let trigger = Request::Trigger {
            listener: "docs".into(),
            path: "a.md".into(),
        };
        assert_eq!(
            normalize(trigger.clone()),
            trigger,
            "trigger keeps the daemon's rule"
        );
    }
}
