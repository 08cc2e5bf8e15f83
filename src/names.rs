//! File names are any bytes but `/` and NUL: a hostile name can hold newlines,
//! escape sequences, or bytes that are not UTF-8. This module shows them
//! losslessly and unambiguously, and carries them through the control protocol.
//!
//! - [`escaped`] prints a name for people and logs: UTF-8 as is, except `\` as
//!   `\\`, `\n`, `\r`, `\t`, other control characters as `\u{…}`, and each byte
//!   that is not UTF-8 as `\xNN`. Two different names never print the same, and a
//!   name never breaks a log line.
//! - [`wire`] is the protocol's encoding: a JSON string when the name is UTF-8,
//!   else `{"hex":"…"}` with its bytes in hex (lower case, two digits a byte).

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
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                    c => f.write_char(c)?,
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
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.into()
}

/// The protocol's encoding of a path, for `#[serde(with = "crate::names::wire")]`.
pub mod wire {
    use serde::de::Error as _;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    /// A string when UTF-8, else `{"hex": "…"}`.
    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        match path.to_str() {
            Some(text) => s.serialize_str(text),
            None => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("hex", &hex(path.as_os_str().as_bytes()))?;
                map.end()
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Text(String),
        Hex { hex: String },
    }

    /// A string, or `{"hex": "…"}`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        match Wire::deserialize(d) {
            Ok(Wire::Text(text)) => Ok(PathBuf::from(text)),
            Ok(Wire::Hex { hex }) => unhex(&hex)
                .map(|bytes| PathBuf::from(OsString::from_vec(bytes)))
                .ok_or_else(|| D::Error::custom("`hex` must be pairs of hex digits")),
            Err(_) => Err(D::Error::custom(
                "a path is a string, or {\"hex\": \"…\"} for a name that is not UTF-8",
            )),
        }
    }

    /// A list of paths, each in the encoding above.
    pub mod list {
        use serde::ser::SerializeSeq;
        use serde::{Deserialize, Deserializer, Serializer};
        use std::path::PathBuf;

        #[derive(serde::Serialize, Deserialize)]
        #[serde(transparent)]
        struct One(#[serde(with = "super")] PathBuf);

        /// Each path as [`super::serialize`] writes it.
        pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(paths.len()))?;
            for path in paths {
                seq.serialize_element(&One(path.clone()))?;
            }
            seq.end()
        }

        /// Each path as [`super::deserialize`] reads it.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
            Ok(Vec::<One>::deserialize(d)?.into_iter().map(|o| o.0).collect())
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Option<Vec<u8>> {
        if text.len() % 2 != 0 {
            return None;
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect()
    }

    /// A path from a reply read as untyped JSON (what the client renders).
    pub fn from_value(value: &serde_json::Value) -> Option<PathBuf> {
        deserialize(value).ok()
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

    #[test]
    fn the_wire_form_is_a_string_or_hex() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct P(#[serde(with = "wire")] PathBuf);
        assert_eq!(serde_json::to_string(&P(path(b"/a b"))).unwrap(), "\"/a b\"");
        assert_eq!(
            serde_json::to_string(&P(path(b"/bad\xff"))).unwrap(),
            r#"{"hex":"2f626164ff"}"#
        );
        assert!(serde_json::from_str::<P>(r#"{"hex":"2f6"}"#).is_err());
        assert!(serde_json::from_str::<P>("3").is_err());
    }

    proptest! {
        /// Any two different names print differently, on one line, and any name
        /// survives the protocol's encoding.
        #[test]
        fn escaping_is_injective_and_the_wire_form_lossless(
            a in proptest::collection::vec(any::<u8>(), 0..24),
            b in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let (pa, pb) = (path(&a), path(&b));
            let (ea, eb) = (escaped(&pa).to_string(), escaped(&pb).to_string());
            prop_assert_eq!(a == b, ea == eb);
            prop_assert!(!ea.chars().any(char::is_control));
            #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
            struct P(#[serde(with = "wire")] PathBuf);
            let back: P = serde_json::from_str(&serde_json::to_string(&P(pa.clone())).unwrap()).unwrap();
            prop_assert_eq!(back.0, pa);
        }
    }
}
