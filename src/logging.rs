//! Logging setup: journald (structured fields, no prefix) when stderr is the
//! journal or when asked, readable text on stderr otherwise. Text lines escape the
//! control characters of every field and message ([`crate::names::one_line`]), so
//! nothing a file name or a job prints can start a line of its own; the journal
//! keeps values as they are (each entry is one record whatever it holds).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Native journal entries with structured fields.
    Journald,
    /// Text lines on stderr.
    Text,
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` ("dev:ino")
/// matches stderr's device and inode.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Formats fields as the default text format does (`name=value`, the message
/// alone), each with its control characters escaped.
fn one_line_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = crate::names::one_line(&text);
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{field}={text}")
        }
    })
    .delimited(" ")
}

/// Installs the global subscriber. The level comes from `RUST_LOG` (default `info`).
/// Falls back to text when the journal cannot be reached.
pub fn init(format: Option<LogFormat>) {
    let format = format.unwrap_or(if stderr_is_journal() {
        LogFormat::Journald
    } else {
        LogFormat::Text
    });
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("execlibd".into());
                tracing_subscriber::registry()
                    .with(layer.with_filter(filter()))
                    .init();
                return;
            }
            Err(e) => eprintln!("execlibd: journald unavailable ({e}); logging to stderr"),
        }
    }
    let text = tracing_subscriber::fmt::layer()
        .fmt_fields(one_line_fields())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    tracing_subscriber::registry()
        .with(text.with_filter(filter()))
        .init();
}
