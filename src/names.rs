//! File names are any bytes but `/` and NUL: a hostile name can hold newlines,
//! escape sequences, or bytes that are not UTF-8. This module shows them
//! losslessly and unambiguously, and carries them through the control protocol.
//!
//! - [`escaped`] prints a name for people and logs: UTF-8 as is, except `\` as
//!   `\\`, `\n`, `\r`, `\t`, other control characters as `\u{…}`, and each byte
//!   that is not UTF-8 as `\xNN`. Two different names never print the same, and a
//!   name never breaks a log line (the line and paragraph separators U+2028 and
//!   U+2029, which some viewers break lines at, are escaped too).
//! - [`list_line`] writes a path as one line of a newline-separated list (a batch
//!   job's stdin, `EXECLIB_PATHS`): as is, or quoted as git quotes paths when it
//!   holds anything a line reader could split at.
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
    if !text.chars().any(breaks_line) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        let _ = write_char(&mut out, c);
    }
    out.into()
}

/// Whether `c` is escaped: a control character, or a line or paragraph separator.
fn breaks_line(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Writes `c`, a control character or separator as `\n`, `\r`, `\t` or `\u{…}`.
fn write_char(w: &mut impl Write, c: char) -> fmt::Result {
    match c {
        '\n' => w.write_str("\\n"),
        '\r' => w.write_str("\\r"),
        '\t' => w.write_str("\\t"),
        c if breaks_line(c) => write!(w, "\\u{{{:x}}}", c as u32),
        c => w.write_char(c),
    }
}

/// `path` as one line of a newline-separated list. As is, unless it holds a byte a
/// line reader may split at (any ASCII control character: `\n`, and `\r`, `\v`,
/// `\f` that Python's `splitlines` splits at too) or the encoding of U+0085, U+2028
/// or U+2029; then as git quotes such paths: in double quotes, with `\"`, `\\`,
/// `\n`, `\t`, and every other control byte and every byte from 0x80 as a
/// three-digit octal escape (`\303\251` for `é`). An absolute path begins with `/`,
/// a quoted one with `"`, so no line can be read as another path.
pub fn list_line(path: &OsStr) -> std::borrow::Cow<'_, [u8]> {
    let bytes = path.as_bytes();
    let separator = |w: &[u8]| matches!(w, [0xc2, 0x85, ..] | [0xe2, 0x80, 0xa8 | 0xa9]);
    let plain = !bytes.iter().any(|b| b.is_ascii_control())
        && !(0..bytes.len()).any(|i| separator(&bytes[i..bytes.len().min(i + 3)]));
    if plain {
        return bytes.into();
    }
    let mut out = Vec::with_capacity(bytes.len() * 2 + 2);
    out.push(b'"');
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b if b.is_ascii_control() || b >= 0x80 => out.extend_from_slice(format!("\\{b:03o}").as_bytes()),
            b => out.push(b),
        }
    }
    out.push(b'"');
    out.into()
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
        assert_eq!(one_line("a\u{2028}b\u{2029}"), "a\\u{2028}b\\u{2029}");
    }

    #[test]
    fn regression_a_name_with_a_newline_cannot_add_a_path_to_a_batch_list() {
        // `src/a\n/etc/passwd` was written as is: a job reading its stdin line by line
        // saw `/srv/src/a` and `/etc/passwd`.
        let forged = path(b"/srv/src/a\n/etc/passwd");
        assert_eq!(&*list_line(forged.as_os_str()), b"\"/srv/src/a\\n/etc/passwd\"");
        let plain = path("/srv/caf\u{e9} \"x\".html".as_bytes());
        assert_eq!(&*list_line(plain.as_os_str()), plain.as_os_str().as_bytes());
        let odd = path(b"/a\r\xe2\x80\xa8\\\"\xff");
        assert_eq!(
            &*list_line(odd.as_os_str()),
            b"\"/a\\015\\342\\200\\250\\\\\\\"\\377\""
        );
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
            prop_assert!(!ea.chars().any(breaks_line));
        }

        /// Any two different absolute paths make different list lines, and none holds
        /// a byte a line reader splits at.
        #[test]
        fn list_lines_are_injective_and_unsplittable(
            a in proptest::collection::vec(any::<u8>(), 0..24),
            b in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let abs = |v: &[u8]| path(&[b"/".as_slice(), v].concat());
            let (pa, pb) = (abs(&a), abs(&b));
            let (la, lb) = (list_line(pa.as_os_str()), list_line(pb.as_os_str()));
            prop_assert_eq!(a == b, la == lb);
            prop_assert!(!la.iter().any(|b| b.is_ascii_control()));
            prop_assert!(String::from_utf8_lossy(&la).lines().count() <= 1);
            let text = String::from_utf8_lossy(&la);
            let separators = ['\u{85}', '\u{2028}', '\u{2029}'];
            prop_assert!(!text.contains(separators));
        }
    }
}
