//! The control protocol: one JSON object per line each way over a stream Unix
//! socket. This module owns every request and reply type, for the daemon and
//! `execlibctl` alike, and imports nothing else from the crate.
//!
//! Requests are [`Request`], a serde enum tagged by `cmd`; its variants are also
//! `execlibctl`'s subcommands (clap derives them), so the two cannot drift. Every
//! reply carries `ok`; a success's body is one of [`replies`]' types, chosen by the
//! request ([`Response::from_line`]); an error is [`ErrorBody`] with a
//! machine-readable [`ErrorCode`]. Lines are capped at [`MAX_LINE`]. Paths are
//! carried losslessly ([`wire`]).

pub mod observe;
pub mod replies;
pub mod wire;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// `at` in milliseconds since the Unix epoch, the unit of every `*_ms` time in the
/// protocol and the history (0 before the epoch).
pub fn epoch_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The longest request line accepted, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;

/// A request from a client; also `execlibctl`'s subcommands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// List the listeners with their state and counters.
    Listeners,
    /// Start a listener.
    Start {
        /// The listener's name.
        listener: String,
    },
    /// Stop a listener and its jobs.
    Stop {
        /// The listener's name.
        listener: String,
    },
    /// Show the daemon's status.
    Status,
    /// Re-read the configuration and apply what changed.
    Reload,
    /// List the jobs running and queued.
    Jobs,
    /// Run the routes that match PATH as if it had been modified.
    Trigger {
        /// The listener's name.
        listener: String,
        /// The file: absolute, or relative to the config's directory or a route's path
        /// (any bytes).
        #[serde(with = "wire")]
        path: PathBuf,
    },
    /// Stop the daemon.
    Shutdown,
    /// Print the metrics in the Prometheus (OpenMetrics) text format.
    Metrics,
    /// List finished runs, newest first (`history show ID`: one, with its output).
    History(observe::HistoryQuery),
    /// Say, for every listener and route, whether a change to PATH would run it, and
    /// if not why; and when it last ran for it.
    Explain(observe::ExplainArgs),
    /// Print the events listeners received (the last 256), each with the routes it
    /// matched; with --follow, then every new one as it comes, until the daemon stops.
    Events {
        /// Only this listener's events.
        #[serde(default)]
        listener: Option<String>,
        /// Keep the connection open and print events as they come.
        #[arg(long)]
        #[serde(default)]
        follow: bool,
    },
}

/// Every `cmd` the daemon knows: [`Request`]'s variants, as clap names them
/// (worked out once: every request line is checked against it).
pub fn commands() -> &'static [String] {
    use clap::Subcommand;
    static COMMANDS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        Request::augment_subcommands(clap::Command::new("execlibctl"))
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect()
    });
    &COMMANDS
}

/// An error's machine-readable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a JSON object, or a field is missing or wrong.
    BadRequest,
    /// `cmd` names no command.
    UnknownCommand,
    /// No listener has that name.
    UnknownListener,
    /// The request line is longer than [`MAX_LINE`].
    TooLarge,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The command is not supported (yet).
    Unsupported,
    /// A listener could not start.
    StartFailed,
    /// The client sent no complete request in time.
    Timeout,
    /// Too many clients are connected.
    Busy,
    /// The listener is not running.
    NotRunning,
    /// `reload`: the new config is invalid; the running one is kept.
    InvalidConfig,
    /// `history`: no run has that id.
    UnknownRun,
    /// `explain`: the file system did not answer in time (a hung mount).
    Unreachable,
}

/// An error reply's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of error.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// For `invalid_config`: the 1-based line of the error in the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// For `invalid_config`: the 1-based column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl ErrorBody {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

/// A reply: a success's body (which one depends on the request) or an error.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    /// `listeners`.
    Listeners(replies::Listeners),
    /// `start` / `stop`.
    Changed(replies::Changed),
    /// `status` (boxed: by far the largest reply).
    Status(Box<replies::Status>),
    /// `trigger`.
    Triggered(replies::Triggered),
    /// `jobs`.
    Jobs(replies::Jobs),
    /// `reload`.
    Reloaded(replies::Reloaded),
    /// `shutdown`.
    Done(replies::Done),
    /// `history`.
    History(observe::History),
    /// `history` with an `id`.
    HistoryRun(observe::HistoryRun),
    /// `explain`.
    Explained(observe::Explained),
    /// `events` (with `follow`, the first line of the stream).
    Events(observe::Events),
    /// Any request that failed.
    Error(replies::Failed),
    /// `metrics`.
    Metrics(replies::Metrics),
}

/// A reply on the wire: `ok`, then the body's fields.
#[derive(Serialize)]
struct Envelope<'a> {
    ok: bool,
    #[serde(flatten)]
    body: &'a Response,
}

impl Response {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error(replies::Failed {
            error: ErrorBody::new(code, message),
        })
    }

    /// The reply as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        let ok = !matches!(self, Response::Error(_));
        let mut line = serde_json::to_string(&Envelope { ok, body: self }).expect("replies serialize");
        line.push('\n');
        line
    }

    /// Reads the reply to `request` from `line`: an error, or the body that request
    /// answers with.
    pub fn from_line(request: &Request, line: &str) -> Result<Response, serde_json::Error> {
        let value: Value = serde_json::from_str(line)?;
        if value.get("ok") == Some(&Value::Bool(false)) {
            return serde_json::from_value(value).map(Response::Error);
        }
        let body = match request {
            Request::Listeners => Response::Listeners(serde_json::from_value(value)?),
            Request::Start { .. } | Request::Stop { .. } => Response::Changed(serde_json::from_value(value)?),
            Request::Status => Response::Status(serde_json::from_value(value)?),
            Request::Reload => Response::Reloaded(serde_json::from_value(value)?),
            Request::Jobs => Response::Jobs(serde_json::from_value(value)?),
            Request::Trigger { .. } => Response::Triggered(serde_json::from_value(value)?),
            Request::Shutdown => Response::Done(serde_json::from_value(value)?),
            Request::Metrics => Response::Metrics(serde_json::from_value(value)?),
            Request::History(q) if q.id.is_some() => Response::HistoryRun(serde_json::from_value(value)?),
            Request::History(_) => Response::History(serde_json::from_value(value)?),
            Request::Explain(_) => Response::Explained(serde_json::from_value(value)?),
            Request::Events { .. } => Response::Events(serde_json::from_value(value)?),
        };
        Ok(body)
    }
}

/// Parses one request line, telling an unknown command from a malformed request.
pub fn parse_request(line: &[u8]) -> Result<Request, ErrorBody> {
    let bad = |m: String| ErrorBody::new(ErrorCode::BadRequest, m);
    let value: Value = serde_json::from_slice(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(bad("a request is a JSON object like {\"cmd\":\"status\"}".into()));
    };
    match object.get("cmd") {
        None => return Err(bad("missing field `cmd`".into())),
        Some(Value::String(cmd)) if !commands().iter().any(|c| c == cmd) => {
            return Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("unknown command {cmd:?}; known: {}", commands().join(", ")),
            ));
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err(bad("`cmd` must be a string".into())),
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// One framed read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A line is in the buffer (without its newline).
    Line,
    /// The peer closed the connection.
    Eof,
    /// The line exceeded [`MAX_LINE`]; the connection cannot be resynchronised.
    TooLarge,
}

/// Reads one newline-terminated line into `buf` (cleared first), reading at most
/// `MAX_LINE + 1` bytes. A final line without a newline counts as a line.
pub async fn read_frame(
    reader: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Frame> {
    buf.clear();
    let n = reader.take(MAX_LINE as u64 + 1).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(Frame::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Frame::Line);
    }
    Ok(if buf.len() > MAX_LINE {
        Frame::TooLarge
    } else {
        Frame::Line
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(line: &str) -> ErrorCode {
        parse_request(line.as_bytes()).unwrap_err().code
    }

    #[test]
    fn requests_parse_and_errors_are_classified() {
        assert_eq!(parse_request(br#"{"cmd":"status"}"#).unwrap(), Request::Status);
        assert_eq!(
            parse_request(br#"{"cmd":"start","listener":"docs"}"#).unwrap(),
            Request::Start {
                listener: "docs".into()
            }
        );
        assert_eq!(code(r#"{"cmd":"fly"}"#), ErrorCode::UnknownCommand);
        assert_eq!(code(r#"{"cmd":"start"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"cmd":"start","listener":"a","x":1}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code("[1]"), ErrorCode::BadRequest);
        assert_eq!(code("{nope"), ErrorCode::BadRequest);
        let missing = parse_request(br#"{"cmd":"stop"}"#).unwrap_err().message;
        assert!(missing.contains("listener"), "{missing}");
    }

    #[test]
    fn replies_carry_ok_and_read_back_as_the_request_expects() {
        let line = Response::Changed(replies::Changed { changed: false }).to_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v, json!({"ok": true, "changed": false}));
        let stop = Request::Stop {
            listener: "docs".into(),
        };
        assert_eq!(
            Response::from_line(&stop, &line).unwrap(),
            Response::Changed(replies::Changed { changed: false })
        );
        let line = Response::error(ErrorCode::TooLarge, "big").to_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({"ok": false, "error": {"code": "too_large", "message": "big"}})
        );
        assert_eq!(
            Response::from_line(&Request::Status, &line).unwrap(),
            Response::error(ErrorCode::TooLarge, "big")
        );
        let done = Response::Done(replies::Done {}).to_line();
        assert_eq!(done, "{\"ok\":true}\n");
        assert!(
            Response::from_line(&Request::Listeners, "{\"ok\":true}").is_err(),
            "a missing field is an error"
        );
    }

    #[test]
    fn every_cli_subcommand_is_a_protocol_command_and_back() {
        // The CLI's subcommands are Request's variants (clap derives them); each name
        // must be the `cmd` serde reads, so the two spellings can never drift apart.
        for name in commands() {
            let error = parse_request(format!("{{\"cmd\":\"{name}\"}}").as_bytes()).err();
            assert!(
                error.as_ref().is_none_or(|e| e.code == ErrorCode::BadRequest && !e.message.contains("unknown variant")),
                "{name}: {error:?}"
            );
        }
        assert_eq!(commands().len(), 12);
    }

    #[tokio::test]
    async fn frames_are_capped() {
        let mut input = b"{\"cmd\":\"status\"}\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE + 10]);
        let mut reader = tokio::io::BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut reader, &mut buf).await.unwrap(), Frame::Line);
        assert_eq!(buf, br#"{"cmd":"status"}"#);
        assert_eq!(read_frame(&mut reader, &mut buf).await.unwrap(), Frame::TooLarge);
        let exact = vec![b'y'; MAX_LINE];
        let mut reader = tokio::io::BufReader::new(&exact[..]);
        assert_eq!(read_frame(&mut reader, &mut buf).await.unwrap(), Frame::Line);
        assert_eq!(read_frame(&mut reader, &mut buf).await.unwrap(), Frame::Eof);
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        /// Lines close to real requests: a known or unknown command with fields of any type.
        fn near_request() -> impl Strategy<Value = Vec<u8>> {
            let cmd = prop_oneof![proptest::sample::select(commands().to_vec()), ".{0,8}",];
            let value = prop_oneof![
                ".{0,12}".prop_map(Value::String),
                any::<i64>().prop_map(Value::from),
                Just(Value::Null),
                Just(serde_json::json!([1, "x"])),
            ];
            let field = proptest::sample::select(vec!["listener", "path", "x", "cmd"]);
            (cmd, proptest::collection::vec((field, value), 0..3)).prop_map(|(cmd, fields)| {
                let mut object = serde_json::Map::new();
                object.insert("cmd".into(), Value::String(cmd));
                for (k, v) in fields {
                    object.insert(k.into(), v);
                }
                Value::Object(object).to_string().into_bytes()
            })
        }

        proptest! {
            /// Any bytes: an error reply with a code, or a request that survives a round trip.
            #[test]
            fn any_line_parses_or_is_refused_and_requests_round_trip(
                line in prop_oneof![proptest::collection::vec(any::<u8>(), 0..256), near_request()]
            ) {
                match parse_request(&line) {
                    Ok(request) => {
                        let again = serde_json::to_vec(&request).unwrap();
                        prop_assert_eq!(parse_request(&again).unwrap(), request);
                    }
                    Err(e) => prop_assert!(!e.message.is_empty()),
                }
            }
        }
    }
}
