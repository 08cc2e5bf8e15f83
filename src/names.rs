//! File names are any bytes but `/` and NUL: a hostile name can hold newlines,
//! escape sequences, or bytes that are not UTF-8. This module shows them
//! losslessly and unambiguously, and carries them through the control protocol.
//!
//! - [`escaped`] prints a name for people and logs: UTF-8 as is, except `\` as
//!   `\\`, `\n`, `\r`, `\t`, other control characters as `\u{…}`, and each byte
//!   that is not UTF-8 as `\xNN`. Two different names never print the same, and a
//!   name never breaks a log line.
//!
//! The protocol carries names losslessly on its own ([`crate::protocol::wire`]).

use std::ffi::OsStr;
use std::fmt::{self, Write};
use std::os::unix::ffi::OsStrExt;

/// A name displayed losslessly; see the module's documentation.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(&'a [u8]);

/// `name` for display.
pub fn escaped(name: &(impl AsRef<OsStr> + ?Sized)) -> Escaped<'_> {
    Escaped(name.as_ref().as_bytes())
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    c => write_char(f, c)?,
                }
            }
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

/// Text with its control characters escaped (`\n`, `\r`, `\t`, `\u{…}`), so it
/// stays on one line; other characters, backslashes included, are kept.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        let _ = write_char(&mut out, c);
    }
    out.into()
}

/// Writes `c`, a control character as `\n`, `\r`, `\t` or `\u{…}`.
fn write_char(w: &mut impl Write, c: char) -> fmt::Result {
    match c {
        '\n' => w.write_str("\\n"),
        '\r' => w.write_str("\\r"),
        '\t' => w.write_str("\\t"),
        c if c.is_control() => write!(w, "\\u{{{:x}}}", c as u32),
        c => w.write_char(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;

    fn path(bytes: &[u8]) -> PathBuf {
        PathBuf::from(std::ffi::OsString::from_vec(bytes.to_vec()))
    }

    #[test]
    fn hostile_names_print_on_one_line_and_apart() {
        assert_eq!(
            escaped(&path(b"bad\xff\xfe.txt")).to_string(),
            "bad\\xff\\xfe.txt"
        );
        assert_eq!(
            escaped(&path("bad\u{fffd}.txt".as_bytes())).to_string(),
            "bad\u{fffd}.txt"
        );
        assert_eq!(
            escaped(&path(b"x\n2026 ERROR forged\r\t\x1b[31m")).to_string(),
            "x\\n2026 ERROR forged\\r\\t\\u{1b}[31m"
        );
        assert_eq!(escaped(&path(b"a\\nb")).to_string(), "a\\\\nb");
        assert_eq!(one_line("a\nb\\c\u{85}"), "a\\nb\\c\\u{85}");
    }

    proptest! {
        /// Any two different names print differently, and on one line.
        #[test]
        fn escaping_is_injective_and_on_one_line(
            a in proptest::collection::vec(any::<u8>(), 0..24),
            b in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let (pa, pb) = (path(&a), path(&b));
            let (ea, eb) = (escaped(&pa).to_string(), escaped(&pb).to_string());
            prop_assert_eq!(a == b, ea == eb);
            prop_assert!(!ea.chars().any(char::is_control));
        }
    }
}
