//! The control client behind `execlibctl`: finds the daemon's socket, sends
//! one request and renders the typed reply for people ([`render`]), or passes the
//! JSON through.

mod follow;
mod keeping_up;
mod observe;
mod render;

use crate::paths::Environment;
use crate::protocol::{Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Exit code: the daemon answered with an error.
pub const EXIT_DAEMON_ERROR: u8 = 1;
/// Exit code: no daemon could be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: the output could not be written (a full disk, an I/O error). A reader
/// that went away (a closed pipe) is not an error: see [`failed_output`].
pub const EXIT_OUTPUT: u8 = 4;

/// Writes `text` to standard output and flushes it.
fn write_out(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// The exit code for output that could not be written: `None` when the reader went
/// away (EPIPE, `execlibctl events | head -1`), as nothing more can be shown and
/// the command's own code stands; else [`EXIT_OUTPUT`], said on standard error.
fn failed_output(e: &std::io::Error) -> Option<u8> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return None;
    }
    say(format_args!("cannot write output: {e}"));
    Some(EXIT_OUTPUT)
}

/// Says `message` on standard error, after `execlibctl: `; a failure to do so is
/// ignored (there is nowhere left to say it).
fn say(message: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr(), "execlibctl: {message}");
}

/// Says a daemon's error reply: `execlibctl: CODE: MESSAGE`.
fn say_refused(error: &crate::protocol::ErrorBody) {
    let code = serde_json::to_value(error.code).unwrap_or_default();
    say(format_args!(
        "{}: {}",
        code.as_str().unwrap_or("error"),
        error.message
    ));
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("no daemon reachable on {}: {source}", crate::names::escaped(path))]
    Unreachable {
        /// The socket tried.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No instance socket exists under the runtime base.
    #[error(
        "no running instance found (no */control.sock under {}); use --instance or --socket",
        crate::names::escaped(base)
    )]
    NoInstance {
        /// Where it looked.
        base: PathBuf,
    },
    /// Several instance sockets exist.
    #[error("several instances found, choose one with --instance: {}", names.join(", "))]
    SeveralInstances {
        /// The instance names found.
        names: Vec<String>,
    },
    /// A per-user socket is answered by a daemon of another user.
    #[error(
        "refusing {}: the daemon answering there runs as uid {theirs}, not as you (uid {ours}); \
         pass --socket to use it anyway",
        crate::names::escaped(path)
    )]
    NotYours {
        /// The socket.
        path: PathBuf,
        /// The daemon's uid.
        theirs: u32,
        /// This process's uid.
        ours: u32,
    },
    /// The daemon's reply was not understood.
    #[error("bad reply from {}: {reason}", crate::names::escaped(path))]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Instance `name`'s socket: the unit's own (`RUNTIME_DIRECTORY`, as in its
/// `ExecReload=`), the caller's runtime base, or the system's (`/run/execlib`, for
/// a non-root member of the socket's group); the first that exists.
fn instance_socket(name: &str, env: &Environment) -> PathBuf {
    let unit = env
        .runtime_directory
        .as_ref()
        .filter(|dir| dir.file_name().is_some_and(|n| n == name))
        .map(|dir| dir.join("control.sock"));
    let system = std::path::Path::new(SYSTEM_RUNTIME_BASE)
        .join(name)
        .join("control.sock");
    let mine = env.instance_socket(name);
    unit.into_iter()
        .chain([mine.clone(), system])
        .find(|p| p.exists())
        .unwrap_or(mine)
}

/// Where system instances keep their runtime directories.
const SYSTEM_RUNTIME_BASE: &str = "/run/execlib";

/// A control socket to talk to, and whether its daemon must run as this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The socket's path.
    pub path: PathBuf,
    /// `Some(uid)`: the socket was found in a per-user location (`$XDG_RUNTIME_DIR`,
    /// `$TMPDIR/execlib-UID`), where only a daemon of this user may answer; `None`
    /// for `--socket` and the system location (`/run/execlib`, not writable by users).
    pub same_user: Option<u32>,
}

impl Target {
    fn found(path: PathBuf) -> Self {
        let system = path.starts_with(SYSTEM_RUNTIME_BASE);
        Target {
            same_user: (!system).then(crate::sys::euid),
            path,
        }
    }
}

/// The socket to use: `--socket`, else `--instance`'s, else the only instance found.
pub fn resolve_socket(
    socket: Option<PathBuf>,
    instance: Option<&str>,
    env: &Environment,
) -> Result<Target, ClientError> {
    if let Some(path) = socket {
        return Ok(Target {
            path,
            same_user: None,
        });
    }
    if let Some(name) = instance {
        return Ok(Target::found(instance_socket(name, env)));
    }
    let base = env.runtime_base();
    let mut found: Vec<String> = std::fs::read_dir(&base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("control.sock").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    match found.len() {
        0 => Err(ClientError::NoInstance { base }),
        1 => Ok(Target::found(base.join(&found[0]).join("control.sock"))),
        _ => Err(ClientError::SeveralInstances { names: found }),
    }
}

/// Connects to the daemon at `target`, checking who answers when it must be this user.
fn connect(target: &Target) -> Result<UnixStream, ClientError> {
    let socket = &target.path;
    let unreachable = |source| ClientError::Unreachable {
        path: socket.to_owned(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(unreachable)?;
    if let Some(ours) = target.same_user {
        let theirs = crate::sys::peer_credentials(std::os::fd::AsFd::as_fd(&stream))
            .map_err(unreachable)?
            .uid;
        if theirs != ours {
            return Err(ClientError::NotYours {
                path: socket.to_owned(),
                theirs,
                ours,
            });
        }
    }
    Ok(stream)
}

/// Sends one request and returns the daemon's reply line, as sent, and as read.
pub fn request(
    target: &Target,
    request: &Request,
    timeout: Duration,
) -> Result<(String, Response), ClientError> {
    let socket = &target.path;
    let unreachable = |source| ClientError::Unreachable {
        path: socket.to_owned(),
        source,
    };
    let bad = |reason: String| ClientError::BadReply {
        path: socket.to_owned(),
        reason,
    };
    let mut stream = connect(target)?;
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    // A daemon that turns the connection away (busy) may answer and close before the
    // request is written: the write fails, but its reply is there to read.
    let written = stream.write_all(line.as_bytes());
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    if reply.is_empty() {
        written.map_err(unreachable)?;
        read.map_err(|e| bad(e.to_string()))?;
        return Err(bad("the daemon closed the connection without answering".into()));
    }
    let response = Response::from_line(request, &reply).map_err(|e| bad(format!("{e}: {reply:?}")))?;
    Ok((reply, response))
}

/// How long the client waits for a reply (a `stop` may wait out a job's grace).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs one `execlibctl` command: prints the reply (or the error) and returns the exit code.
pub fn main(cli: crate::cli::CtlCli) -> u8 {
    let crate::cli::CtlCli {
        socket,
        instance,
        json,
        command,
    } = cli;
    let req = &follow::normalize(command);
    let env = Environment::from_process();
    let target = resolve_socket(socket, instance.as_deref(), &env);
    if let (Request::Events { follow: true, .. }, Ok(target)) = (req, &target) {
        return follow::follow(target, req, json);
    }
    let reply = target.and_then(|target| request(&target, req, REPLY_TIMEOUT));
    let (line, response) = match reply {
        Ok(reply) => reply,
        Err(e) => {
            say(format_args!("{e}"));
            return EXIT_UNREACHABLE;
        }
    };
    let rendered = render::render(req, &response);
    let text = match (&rendered, json) {
        (_, true) => line,
        (Ok(text), false) => format!("{text}\n"),
        (Err(error), false) => {
            say_refused(error);
            String::new()
        }
    };
    if let Some(code) = write_out(&mut std::io::stdout().lock(), &text)
        .err()
        .and_then(|e| failed_output(&e))
    {
        return code;
    }
    match rendered {
        Ok(_) => 0,
        Err(_) => EXIT_DAEMON_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_socket_prefers_the_units_runtime_directory() {
        let dir = tempfile::tempdir().unwrap();
        let unit_dir = dir.path().join("site");
        std::fs::create_dir(&unit_dir).unwrap();
        std::fs::write(unit_dir.join("control.sock"), "").unwrap();
        let env = Environment {
            runtime_directory: Some(unit_dir.clone()),
            xdg_runtime_dir: Some(dir.path().join("elsewhere")),
            ..Environment::default()
        };
        assert_eq!(instance_socket("site", &env), unit_dir.join("control.sock"));
        assert_eq!(
            instance_socket("other", &env),
            dir.path().join("elsewhere/execlib/other/control.sock"),
            "another instance's name does not use this unit's directory"
        );
    }

    #[test]
    fn finds_the_only_instance_or_says_what_it_found() {
        let dir = tempfile::tempdir().unwrap();
        let env = Environment {
            xdg_runtime_dir: Some(dir.path().to_owned()),
            ..Environment::default()
        };
        let err = resolve_socket(None, None, &env).unwrap_err();
        assert!(err.to_string().contains("no running instance"), "{err}");
        let site = dir.path().join("execlib/site");
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(site.join("control.sock"), "").unwrap();
        std::fs::create_dir_all(dir.path().join("execlib/empty")).unwrap();
        assert_eq!(
            resolve_socket(None, None, &env).unwrap(),
            Target {
                path: site.join("control.sock"),
                same_user: Some(crate::sys::euid()),
            },
            "a socket under the user's runtime directory must be answered by the user"
        );
        let other = dir.path().join("execlib/other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("control.sock"), "").unwrap();
        let err = resolve_socket(None, None, &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "several instances found, choose one with --instance: other, site"
        );
        assert_eq!(
            resolve_socket(None, Some("x"), &env).unwrap().path,
            dir.path().join("execlib/x/control.sock")
        );
        assert_eq!(
            resolve_socket(Some("/s".into()), Some("x"), &env).unwrap(),
            Target {
                path: "/s".into(),
                same_user: None,
            },
            "--socket is taken as given"
        );
        let system = Target::found("/run/execlib/site/control.sock".into());
        assert_eq!(system.same_user, None, "the system location is trusted as it is");
    }
}
