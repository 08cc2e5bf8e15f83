//! The files of one directory, kept compactly: every name in one byte
//! arena, and one fixed-size entry (arena span and [`FileState`]) per file in a
//! vector sorted by name. A file costs its name's bytes plus 40, where a map of
//! owned names cost about 200 (a hash-table slot, a heap block per name, spare
//! capacity); lookups are binary searches and two directories diff in one merge.
//!
//! Limits: names (any bytes) are at most `u32::MAX` bytes in all per directory
//! (at 255 bytes a name, over 16 million files); a name that would not fit is not
//! recorded (see `docs/watching.md`). Adding or removing a file moves the entries
//! after it: fine for directories of up to some hundred thousand files, where it
//! is a memmove of a few MiB at most.

use crate::snapshot::FileState;
use std::cmp::Ordering;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// One file: its name's span in the arena, and its state.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u32,
    len: u32,
    state: FileState,
}

/// The files of one directory, by name (any bytes), in byte order of their names.
#[derive(Debug, Clone, Default)]
pub(crate) struct Files {
    names: Vec<u8>,
    entries: Vec<Entry>,
    /// Bytes of `names` no entry refers to any more (removed files).
    dead: usize,
}

impl Files {
    /// An empty set.
    #[cfg(test)]
    pub fn new() -> Files {
        Files::default()
    }

    /// How many files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn name(&self, e: &Entry) -> &[u8] {
        &self.names[e.start as usize..(e.start + e.len) as usize]
    }

    fn find(&self, name: &[u8]) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| self.name(e).cmp(name))
    }

    /// The state of `name`.
    pub fn get(&self, name: &OsStr) -> Option<&FileState> {
        let i = self.find(name.as_bytes()).ok()?;
        Some(&self.entries[i].state)
    }

    /// The state of `name`, to change in place.
    pub fn get_mut(&mut self, name: &OsStr) -> Option<&mut FileState> {
        let i = self.find(name.as_bytes()).ok()?;
        Some(&mut self.entries[i].state)
    }

    /// Appends `name` to the arena; its span, or `None` past the arena's limit.
    fn intern(&mut self, name: &[u8]) -> Option<(u32, u32)> {
        if self.names.len() + name.len() > u32::MAX as usize && self.dead > 0 {
            self.compact();
        }
        let start = u32::try_from(self.names.len()).ok()?;
        let len = u32::try_from(name.len()).ok()?;
        start.checked_add(len)?;
        self.names.extend_from_slice(name);
        Some((start, len))
    }

    /// Records the state of `name`; `false` when it cannot be recorded (the arena's limit).
    pub fn insert(&mut self, name: &OsStr, state: FileState) -> bool {
        let name = name.as_bytes();
        match self.find(name) {
            Ok(i) => {
                self.entries[i].state = state;
                true
            }
            Err(i) => match self.intern(name) {
                Some((start, len)) => {
                    // Interning may have compacted the arena: entry spans moved, positions did not.
                    self.entries.insert(i, Entry { start, len, state });
                    true
                }
                None => false,
            },
        }
    }

    /// Forgets `name`; returns its state.
    pub fn remove(&mut self, name: &OsStr) -> Option<FileState> {
        let i = self.find(name.as_bytes()).ok()?;
        let e = self.entries.remove(i);
        self.dead += e.len as usize;
        if self.dead > 4096 && self.dead * 2 > self.names.len() {
            self.compact();
        }
        Some(e.state)
    }

    /// Rewrites the arena with the live names only.
    fn compact(&mut self) {
        let mut names = Vec::with_capacity(self.names.len() - self.dead);
        for e in &mut self.entries {
            let start = names.len() as u32;
            names.extend_from_slice(&self.names[e.start as usize..(e.start + e.len) as usize]);
            e.start = start;
        }
        self.names = names;
        self.dead = 0;
    }

    /// Releases spare capacity (after a directory is read, its size rarely changes).
    pub fn shrink_to_fit(&mut self) {
        if self.dead > 0 {
            self.compact();
        }
        self.names.shrink_to_fit();
        self.entries.shrink_to_fit();
    }

    /// Bytes held on the heap: (entries, name arena), capacities included.
    pub fn heap_bytes(&self) -> (usize, usize) {
        (
            self.entries.capacity() * size_of::<Entry>(),
            self.names.capacity(),
        )
    }

    /// The files in byte order of their names.
    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, &FileState)> {
        self.entries
            .iter()
            .map(|e| (OsStr::from_bytes(self.name(e)), &e.state))
    }

    /// The states, in byte order of their names.
    pub fn states(&self) -> impl Iterator<Item = &FileState> {
        self.entries.iter().map(|e| &e.state)
    }

    /// Walks `self` (before) and `after` together in name order, calling `each` with
    /// every name and its states (`None` on the side that lacks it).
    pub fn merge<'a>(
        &'a self,
        after: &'a Files,
        mut each: impl FnMut(&'a OsStr, Option<&'a FileState>, Option<&'a FileState>),
    ) {
        let (mut a, mut b) = (self.entries.iter().peekable(), after.entries.iter().peekable());
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => return,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(x), Some(y)) => self.name(x).cmp(after.name(y)),
            };
            match order {
                Ordering::Less => {
                    let x = a.next().expect("peeked");
                    each(OsStr::from_bytes(self.name(x)), Some(&x.state), None);
                }
                Ordering::Greater => {
                    let y = b.next().expect("peeked");
                    each(OsStr::from_bytes(after.name(y)), None, Some(&y.state));
                }
                Ordering::Equal => {
                    let (x, y) = (a.next().expect("peeked"), b.next().expect("peeked"));
                    each(OsStr::from_bytes(self.name(x)), Some(&x.state), Some(&y.state));
                }
            }
        }
    }
}

/// Builds a [`Files`] from names met in any order (a directory listing): names are
/// appended, then the entries sorted once, which is cheaper than sorted inserts.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    files: Files,
}

impl Builder {
    /// Adds a file (a name given twice keeps its last state).
    pub fn push(&mut self, name: &OsStr, state: FileState) {
        if let Some((start, len)) = self.files.intern(name.as_bytes()) {
            self.files.entries.push(Entry { start, len, state });
        }
    }

    /// A builder with room for `files` entries (a saved directory's count).
    pub fn with_capacity(files: usize) -> Builder {
        let mut builder = Builder::default();
        builder.files.entries.reserve_exact(files);
        builder
    }

    /// The sorted set, with no spare capacity. Names pushed already in order (a saved
    /// directory, or a listing that happens to be) are neither sorted nor copied.
    pub fn finish(self) -> Files {
        let mut files = self.files;
        let names = std::mem::take(&mut files.names);
        let name = |e: &Entry| &names[e.start as usize..(e.start + e.len) as usize];
        if !files.entries.windows(2).all(|w| name(&w[0]) < name(&w[1])) {
            sort_keeping_last(&mut files.entries, |x, y| name(x).cmp(name(y)));
        }
        files.names = names;
        files.dead = 0;
        files.shrink_to_fit();
        files
    }
}

/// Sorts `items` by `order` and keeps, of items that compare equal, the last one
/// given (the sort is stable, and the last is moved into the place of the first,
/// which `dedup_by` keeps).
pub(crate) fn sort_keeping_last<T>(items: &mut Vec<T>, order: impl Fn(&T, &T) -> Ordering) {
    items.sort_by(&order);
    items.dedup_by(|later, earlier| {
        let same = order(later, earlier) == Ordering::Equal;
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    fn state(n: u64) -> FileState {
        FileState {
            ino: n,
            size: n * 3,
            mtime_ns: n as i64,
            ctime_ns: -(n as i64),
        }
    }

    /// An operation on both a [`Files`] and the map it must behave like.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(Vec<u8>, u64),
        Remove(Vec<u8>),
        Shrink,
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        // Few distinct short names (so operations meet), any bytes but `/` and NUL.
        prop::collection::vec(
            prop_oneof![Just(b'a'), Just(b'b'), Just(0xff), Just(0x80), 1u8..=255],
            1..4,
        )
        .prop_map(|v| v.into_iter().map(|b| if b == b'/' { b'c' } else { b }).collect())
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (name(), 0u64..8).prop_map(|(n, s)| Op::Insert(n, s)),
            3 => name().prop_map(Op::Remove),
            1 => Just(Op::Shrink),
        ]
    }

    fn os(bytes: &[u8]) -> OsString {
        OsString::from_vec(bytes.to_vec())
    }

    proptest! {
        #[test]
        fn files_behave_like_a_sorted_map_of_names(ops in prop::collection::vec(op(), 0..200)) {
            let (mut files, mut model) = (Files::new(), BTreeMap::<Vec<u8>, FileState>::new());
            for op in ops {
                match op {
                    Op::Insert(n, s) => {
                        prop_assert!(files.insert(&os(&n), state(s)));
                        model.insert(n, state(s));
                    }
                    Op::Remove(n) => prop_assert_eq!(files.remove(&os(&n)), model.remove(&n)),
                    Op::Shrink => files.shrink_to_fit(),
                }
                let got: Vec<(Vec<u8>, FileState)> =
                    files.iter().map(|(n, s)| (n.as_bytes().to_vec(), *s)).collect();
                let want: Vec<(Vec<u8>, FileState)> = model.iter().map(|(n, s)| (n.clone(), *s)).collect();
                prop_assert_eq!(got, want);
            }
            for (n, s) in &model {
                prop_assert_eq!(files.get(&os(n)), Some(s));
            }
        }

        #[test]
        fn builder_sorts_and_keeps_the_last_of_a_name(
            pushed in prop::collection::vec((name(), 0u64..8), 0..100)
        ) {
            let mut builder = Builder::default();
            let mut model = BTreeMap::new();
            for (n, s) in &pushed {
                builder.push(&os(n), state(*s));
                model.insert(n.clone(), state(*s));
            }
            let files = builder.finish();
            let got: Vec<(Vec<u8>, FileState)> =
                files.iter().map(|(n, s)| (n.as_bytes().to_vec(), *s)).collect();
            prop_assert_eq!(got, model.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn merge_pairs_every_name_once(
            a in prop::collection::btree_map(name(), 0u64..4, 0..30),
            b in prop::collection::btree_map(name(), 0u64..4, 0..30),
        ) {
            let build = |m: &BTreeMap<Vec<u8>, u64>| {
                let mut f = Builder::default();
                m.iter().for_each(|(n, s)| f.push(&os(n), state(*s)));
                f.finish()
            };
            let (fa, fb) = (build(&a), build(&b));
            let mut seen = Vec::new();
            fa.merge(&fb, |n, x, y| seen.push((n.as_bytes().to_vec(), x.copied(), y.copied())));
            let mut names: Vec<&Vec<u8>> = a.keys().chain(b.keys()).collect();
            names.sort();
            names.dedup();
            let want: Vec<_> = names
                .into_iter()
                .map(|n| (n.clone(), a.get(n).map(|s| state(*s)), b.get(n).map(|s| state(*s))))
                .collect();
            prop_assert_eq!(seen, want);
        }
    }

    #[test]
    fn removed_names_are_reclaimed() {
        let mut files = Files::new();
        for i in 0..10_000u64 {
            files.insert(&os(format!("file-{i:05}").as_bytes()), state(i));
        }
        for i in 0..9_000u64 {
            files.remove(&os(format!("file-{i:05}").as_bytes()));
        }
        assert!(
            files.names.len() < 2 * 1_000 * 10 + 4096,
            "arena {}",
            files.names.len()
        );
        assert_eq!(files.get(&os(b"file-09999")), Some(&state(9_999)));
        assert_eq!(files.len(), 1_000);
    }
}
