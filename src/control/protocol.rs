//! The control protocol: one JSON object per line each way over a stream Unix
//! socket. Requests are a serde enum tagged by `cmd`; every reply carries `ok`,
//! and errors carry a machine-readable code. Lines are capped at [`MAX_LINE`].

use crate::listener::ListenerInfo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// The longest request line accepted, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// List the listeners with their state and counters.
    Listeners,
    /// Start a listener.
    Start {
        /// Its name.
        listener: String,
    },
    /// Stop a listener and its jobs.
    Stop {
        /// Its name.
        listener: String,
    },
    /// The daemon's summary.
    Status,
    /// Re-read the config.
    Reload,
    /// List the jobs not finished: running and queued.
    Jobs,
    /// Submit a synthetic `modify` event for a file.
    Trigger {
        /// The listener.
        listener: String,
        /// The file: absolute, or relative to the config directory or a route's path
        /// (see [`crate::names::wire`] for names that are not UTF-8).
        #[serde(with = "crate::names::wire")]
        path: std::path::PathBuf,
    },
    /// Stop the daemon (answered first).
    Shutdown,
}

/// Every `cmd` the daemon knows.
pub const COMMANDS: [&str; 8] = [
    "listeners",
    "start",
    "stop",
    "status",
    "reload",
    "shutdown",
    "jobs",
    "trigger",
];

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

/// The daemon's summary, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The instance name.
    pub instance: String,
    /// The daemon's version.
    pub version: String,
    /// The daemon's pid.
    pub pid: u32,
    /// Time since start.
    pub uptime_ms: u64,
    /// Listener counts.
    pub listeners: ListenerCounts,
    /// The HTTP server, when there is one.
    pub server: Option<Value>,
    /// The systemd unit it runs in (from its cgroup), when it runs under systemd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// How many listeners run, of how many.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerCounts {
    /// Running (or degraded) listeners.
    pub running: usize,
    /// All listeners.
    pub total: usize,
}

/// A reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `listeners`.
    Listeners(Vec<ListenerInfo>),
    /// `start` / `stop`: whether the state changed.
    Changed(bool),
    /// `status`.
    Status(StatusInfo),
    /// `trigger`: how many routes matched.
    Triggered(usize),
    /// `jobs`.
    Jobs(Vec<crate::listener::JobView>),
    /// `reload`: what changed.
    Reloaded(crate::daemon::Reloaded),
    /// Success with nothing to say.
    Done,
    /// Failure.
    Error(ErrorBody),
}

impl Response {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error(ErrorBody::new(code, message))
    }

    /// The reply as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        let mut value = match self {
            Response::Listeners(l) => json!({ "listeners": l }),
            Response::Changed(changed) => json!({ "changed": changed }),
            Response::Status(s) => serde_json::to_value(s).expect("status serializes"),
            Response::Triggered(matched) => json!({ "matched": matched }),
            Response::Jobs(jobs) => json!({ "jobs": jobs }),
            Response::Reloaded(r) => serde_json::to_value(r).expect("reload report serializes"),
            Response::Done => json!({}),
            Response::Error(e) => json!({ "error": e }),
        };
        value["ok"] = Value::Bool(!matches!(self, Response::Error(_)));
        let mut line = value.to_string();
        line.push('\n');
        line
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
        Some(Value::String(cmd)) if !COMMANDS.contains(&cmd.as_str()) => {
            return Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("unknown command {cmd:?}; known: {}", COMMANDS.join(", ")),
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
    fn replies_carry_ok() {
        let v: Value = serde_json::from_str(&Response::Changed(false).to_line()).unwrap();
        assert_eq!(v, json!({"ok": true, "changed": false}));
        let v: Value = serde_json::from_str(&Response::error(ErrorCode::TooLarge, "big").to_line()).unwrap();
        assert_eq!(
            v,
            json!({"ok": false, "error": {"code": "too_large", "message": "big"}})
        );
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
            let cmd = prop_oneof![
                proptest::sample::select(COMMANDS.to_vec()).prop_map(str::to_owned),
                ".{0,8}",
            ];
            let value = prop_oneof![
                ".{0,12}".prop_map(Value::String),
                any::<i64>().prop_map(Value::from),
                Just(Value::Null),
                Just(json!([1, "x"])),
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
