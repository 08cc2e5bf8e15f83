//! File events as everything downstream of the watcher sees them: a
//! [`FileEvent`] (a path and what happened to it), the [`EventKind`]s and small
//! sets of them.
//!
//! The watcher turns raw inotify masks into [`FileEvent`]s; routes filter on an
//! [`EventSet`]; the scheduler accumulates the kinds seen since a file's last run.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// A change to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEvent {
    /// The file's absolute path.
    pub path: PathBuf,
    /// What happened.
    pub kind: EventKind,
}

/// One kind of change to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The file appeared (created, or found inside a new directory).
    Create,
    /// The file's content was written.
    Modify,
    /// The file was deleted (or moved away from this name).
    Delete,
    /// The file arrived under this name by a rename.
    Move,
    /// The file's metadata (permissions, times, owner) changed.
    Attrib,
}

impl EventKind {
    /// Every kind, in the order they are printed.
    pub const ALL: [EventKind; 5] = [
        EventKind::Create,
        EventKind::Modify,
        EventKind::Delete,
        EventKind::Move,
        EventKind::Attrib,
    ];

    /// The kind's name as used in config files and in `EXECLIB_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Modify => "modify",
            EventKind::Delete => "delete",
            EventKind::Move => "move",
            EventKind::Attrib => "attrib",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`EventKind`]s; displays as a comma-separated list in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct EventSet(u8);

impl EventSet {
    /// The empty set.
    pub const EMPTY: EventSet = EventSet(0);

    /// The default set of a route: everything but `attrib`.
    pub fn default_route() -> Self {
        [
            EventKind::Create,
            EventKind::Modify,
            EventKind::Delete,
            EventKind::Move,
        ]
        .into_iter()
        .collect()
    }

    /// Adds a kind.
    pub fn insert(&mut self, kind: EventKind) {
        self.0 |= kind.bit();
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

impl FromIterator<EventKind> for EventSet {
    fn from_iter<I: IntoIterator<Item = EventKind>>(iter: I) -> Self {
        let mut set = EventSet::EMPTY;
        for kind in iter {
            set.insert(kind);
        }
        set
    }
}

impl fmt::Display for EventSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for kind in EventKind::ALL.into_iter().filter(|k| self.contains(*k)) {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(kind.as_str())?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_displays_in_fixed_order_without_duplicates() {
        let set: EventSet = [EventKind::Move, EventKind::Create, EventKind::Move]
            .into_iter()
            .collect();
        assert_eq!(set.to_string(), "create,move");
        assert!(!set.contains(EventKind::Modify));
        assert_eq!(EventSet::default_route().to_string(), "create,modify,delete,move");
    }
}
