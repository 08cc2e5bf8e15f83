//! The protocol's encoding of a path (`#[serde(with = "wire")]`): a JSON string
//! when the name is UTF-8, else `{"hex":"…"}` with its bytes in hex (two lower-case
//! digits a byte). File names are any bytes; none is lost or confused with another.

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

/// An optional path: absent or `null`, or a path in the encoding above.
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::path::PathBuf;

    #[derive(serde::Serialize, Deserialize)]
    #[serde(transparent)]
    struct One(#[serde(with = "super")] PathBuf);

    /// `None` as `null`, a path as [`super::serialize`] writes it.
    pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match path {
            Some(path) => super::serialize(path, s),
            None => s.serialize_none(),
        }
    }

    /// `null`, or a path as [`super::deserialize`] reads it.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Ok(Option::<One>::deserialize(d)?.map(|o| o.0))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct P(#[serde(with = "super")] PathBuf);

    fn path(bytes: &[u8]) -> PathBuf {
        PathBuf::from(std::ffi::OsString::from_vec(bytes.to_vec()))
    }

    #[test]
    fn the_wire_form_is_a_string_or_hex() {
        assert_eq!(serde_json::to_string(&P(path(b"/a b"))).unwrap(), "\"/a b\"");
        assert_eq!(
            serde_json::to_string(&P(path(b"/bad\xff"))).unwrap(),
            r#"{"hex":"2f626164ff"}"#
        );
        assert!(serde_json::from_str::<P>(r#"{"hex":"2f6"}"#).is_err());
        assert!(serde_json::from_str::<P>("3").is_err());
    }

    proptest! {
        /// Any name survives the protocol's encoding.
        #[test]
        fn the_wire_form_is_lossless(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let p = P(path(&bytes));
            let back: P = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            prop_assert_eq!(back, p);
        }
    }
}
