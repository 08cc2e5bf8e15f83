//! `execlibctl events --follow`: reads the daemon's stream line by line, printing
//! each event as it comes, until the daemon says it is stopping or closes the
//! connection (exit 0 either way, with a line saying so). Ctrl-C ends the client; the
//! daemon sees the connection close and frees the follower's slot. Also the one
//! rewrite of a command line into its request: `history show ID` is `history` with `id`.

use super::{ClientError, EXIT_DAEMON_ERROR, EXIT_UNREACHABLE, Target, observe};
use crate::protocol::observe::{HistoryShow, Streamed};
use crate::protocol::{Request, Response};
use std::io::{BufRead, BufReader, Write};

/// The request a command line means: `history show ID` becomes `history` with `id`.
pub fn normalize(command: Request) -> Request {
    match command {
        Request::History(mut query) => {
            if let Some(HistoryShow::Show { id }) = query.show.take() {
                query.id = Some(id);
            }
            Request::History(query)
        }
        other => other,
    }
}

/// Follows the event stream; returns the exit code.
pub fn follow(target: &Target, request: &Request, json: bool) -> u8 {
    match stream(target, request, json) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("execlibctl: {e}");
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
            if !text.is_empty() && writeln!(out, "{text}").is_err() {
                return Ok(0);
            }
        }
        Response::Error(failed) => {
            if json {
                print!("{reply}");
            } else {
                let code = serde_json::to_value(failed.error.code).unwrap_or_default();
                eprintln!(
                    "execlibctl: {}: {}",
                    code.as_str().unwrap_or("error"),
                    failed.error.message
                );
            }
            return Ok(EXIT_DAEMON_ERROR);
        }
        other => return Err(bad(format!("not an events reply: {other:?}"))),
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => {
                let _ = writeln!(out, "the daemon closed the connection (it stopped)");
                return Ok(0);
            }
            Ok(_) => {}
        }
        let streamed: Streamed = serde_json::from_str(&line).map_err(|e| bad(format!("{e}: {line:?}")))?;
        let text = match (&streamed, json) {
            (_, true) => line.trim_end().to_owned(),
            (Streamed::Event(e), false) => observe::event(e),
            (Streamed::Lagged(n), false) => format!("lagged: {n} events not shown (this client fell behind)"),
            (Streamed::End(why), false) => format!("the daemon stopped: {why}"),
        };
        if writeln!(out, "{text}").is_err() || matches!(streamed, Streamed::End(_)) {
            return Ok(0);
        }
    }
}
