//! The files of one directory, kept compactly: every name in one byte
//! arena, and one fixed-size entry (arena span and [`FileState`]) per file in one
//! vector. A file costs its name's bytes plus 40, where a map of owned names cost
//! about 200 (a hash-table slot, a heap block per name, spare capacity); lookups
//! are binary searches and two directories diff in one merge.
//!
//! The vector holds two runs, each sorted by name: the files as of the last merge,
//! and behind them the files added since, at most about the square root of the
//! first run's length ([`tail_limit`]). A new file goes into the short second run,
//! a file removed from the first is only marked gone, and the runs are merged
//! (dropping the gone) when the second outgrows its limit or half the first is
//! gone. So one change moves about √n entries, plus an amortized √n for the merges,
//! where a single sorted vector moved n/2: a new file in a directory of a million
//! randomly named ones (a drop folder, hashed names) moved 20 MB.
//!
//! A removed file's entry and name stay until that merge: after mass deletions a
//! directory holds up to twice what its files need, never more.
//!
//! Limits: names (any bytes) are at most `u32::MAX` bytes in all per directory (at
//! 255 bytes a name, over 16 million files), one name is shorter than 2 GiB, and a
//! directory holds fewer than `u32::MAX` entries (files, and files removed since the
//! last merge); a name that would not fit is not recorded (see `docs/watching.md`).

use crate::snapshot::FileState;
use std::cmp::Ordering;
use std::ffi::OsStr;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;

/// The bit of [`Entry::len`] that marks a file removed from the first run.
const GONE: u32 = 1 << 31;

/// The smallest limit of the second run (smaller in tests, so that they merge often).
const TAIL_MIN: usize = if cfg!(test) { 2 } else { 64 };

/// How many files the second run holds before it is merged into a first run of `sorted`.
fn tail_limit(sorted: usize) -> usize {
    TAIL_MIN.max(sorted.isqrt())
}

#[cfg(test)]
thread_local! {
    /// Entries moved by changes on this thread: what a change costs, for the tests.
    static MOVED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts `n` entries moved (in tests; nothing otherwise).
fn moved(n: usize) {
    #[cfg(test)]
    MOVED.with(|m| m.set(m.get() + n));
    let _ = n;
}

/// One file: its name's span in the arena (with [`GONE`] in `len`), and its state.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u32,
    len: u32,
    state: FileState,
}

impl Entry {
    fn is_gone(&self) -> bool {
        self.len & GONE != 0
    }

    fn span(&self) -> Range<usize> {
        let start = self.start as usize;
        start..start + (self.len & !GONE) as usize
    }
}

/// Where a name is.
enum Found {
    /// A file at this index.
    Live(usize),
    /// A file marked gone in the first run, at this index.
    Gone(usize),
    /// No file; the index in the second run where it would go.
    Absent(usize),
}

/// The files of one directory, by name (any bytes), in byte order of their names.
#[derive(Debug, Clone, Default)]
pub(crate) struct Files {
    names: Vec<u8>,
    /// `entries[..sorted]`: sorted by name, some marked gone; `entries[sorted..]`:
    /// sorted by name, none gone, no name that is in the first run.
    entries: Vec<Entry>,
    sorted: u32,
    /// How many entries of the first run are marked gone.
    gone: u32,
    /// Bytes of `names` no entry refers to any more (removed files; a gone entry
    /// still refers to its name, which keeps the first run in order).
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
        self.entries.len() - self.gone as usize
    }

    fn name(&self, e: &Entry) -> &[u8] {
        &self.names[e.span()]
    }

    fn find(&self, name: &[u8]) -> Found {
        let sorted = self.sorted as usize;
        let (first, second) = self.entries.split_at(sorted);
        match first.binary_search_by(|e| self.name(e).cmp(name)) {
            Ok(i) if first[i].is_gone() => Found::Gone(i),
            Ok(i) => Found::Live(i),
            Err(_) => match second.binary_search_by(|e| self.name(e).cmp(name)) {
                Ok(i) => Found::Live(sorted + i),
                Err(i) => Found::Absent(sorted + i),
            },
        }
    }

    /// The state of `name`.
    pub fn get(&self, name: &OsStr) -> Option<&FileState> {
        match self.find(name.as_bytes()) {
            Found::Live(i) => Some(&self.entries[i].state),
            Found::Gone(_) | Found::Absent(_) => None,
        }
    }

    /// The state of `name`, to change in place.
    pub fn get_mut(&mut self, name: &OsStr) -> Option<&mut FileState> {
        match self.find(name.as_bytes()) {
            Found::Live(i) => Some(&mut self.entries[i].state),
            Found::Gone(_) | Found::Absent(_) => None,
        }
    }

    /// Appends `name` to the arena; its span, or `None` past the limits.
    fn intern(&mut self, name: &[u8]) -> Option<(u32, u32)> {
        if name.len() >= GONE as usize || self.entries.len() >= u32::MAX as usize {
            return None;
        }
        if self.names.len() + name.len() > u32::MAX as usize && self.dead > 0 {
            self.compact();
        }
        let start = u32::try_from(self.names.len()).ok()?;
        let len = u32::try_from(name.len()).ok()?;
        start.checked_add(len)?;
        self.names.extend_from_slice(name);
        Some((start, len))
    }

    /// Records the state of `name`; `false` when it cannot be recorded (the limits).
    pub fn insert(&mut self, name: &OsStr, state: FileState) -> bool {
        let name = name.as_bytes();
        match self.find(name) {
            Found::Live(i) => self.entries[i].state = state,
            Found::Gone(i) => {
                let e = &mut self.entries[i];
                e.len &= !GONE;
                e.state = state;
                self.gone -= 1;
            }
            Found::Absent(_) if self.names.len() + name.len() > u32::MAX as usize && self.gone > 0 => {
                // The arena is full, and removed files' names are still in it: drop
                // them (which moves entries), then place the name again.
                self.merge_runs();
                return self.insert(OsStr::from_bytes(name), state);
            }
            Found::Absent(i) => {
                // Interning may compact the arena: entry spans move, positions do not.
                let Some((start, len)) = self.intern(name) else {
                    return false;
                };
                moved(self.entries.len() - i);
                self.entries.insert(i, Entry { start, len, state });
                let sorted = self.sorted as usize;
                if self.entries.len() - sorted > tail_limit(sorted) {
                    self.merge_runs();
                }
            }
        }
        true
    }

    /// Forgets `name`; returns its state.
    pub fn remove(&mut self, name: &OsStr) -> Option<FileState> {
        let Found::Live(i) = self.find(name.as_bytes()) else {
            return None;
        };
        if i < self.sorted as usize {
            let e = &mut self.entries[i];
            e.len |= GONE;
            self.gone += 1;
            let state = e.state;
            if self.gone as usize * 2 > self.sorted as usize {
                self.merge_runs();
            }
            return Some(state);
        }
        moved(self.entries.len() - i - 1);
        let e = self.entries.remove(i);
        self.dead += e.span().len();
        self.compact_if_sparse();
        Some(e.state)
    }

    /// Merges the second run into the first and drops the entries marked gone, in
    /// place (a fresh vector of a big directory cost more in page faults than the
    /// copy): the gone are squeezed out, then, from the back, each entry of the second
    /// run is placed by binary search and the first run's entries after it are moved
    /// up in one span.
    fn merge_runs(&mut self) {
        let second = self.entries.split_off(self.sorted as usize);
        if self.gone > 0 {
            let mut freed = 0;
            self.entries.retain(|e| {
                freed += if e.is_gone() { e.span().len() } else { 0 };
                !e.is_gone()
            });
            self.dead += freed;
            moved(self.entries.len());
        }
        let mut rest = self.entries.len();
        self.entries.extend_from_slice(&second); // room, overwritten below
        let (names, entries) = (&self.names, &mut self.entries);
        let name = |e: &Entry| &names[e.span()];
        let mut end = entries.len();
        for e in second.iter().rev() {
            let at = entries[..rest].partition_point(|x| name(x) < name(e));
            entries.copy_within(at..rest, end - (rest - at));
            end -= rest - at + 1;
            entries[end] = *e;
            moved(rest - at + 1);
            rest = at;
        }
        self.sorted = self.entries.len() as u32; // at most u32::MAX: `intern`
        self.gone = 0;
        // Room for the next second run.
        self.entries.reserve(tail_limit(self.entries.len()) + 1);
        self.compact_if_sparse();
    }

    /// Rewrites the arena when most of it is names of removed files.
    fn compact_if_sparse(&mut self) {
        if self.dead > 4096 && self.dead * 2 > self.names.len() {
            self.compact();
        }
    }

    /// Rewrites the arena with the names entries refer to only (positions kept).
    fn compact(&mut self) {
        let mut names = Vec::with_capacity(self.names.len() - self.dead);
        for e in &mut self.entries {
            let start = names.len() as u32;
            names.extend_from_slice(&self.names[e.span()]);
            e.start = start;
        }
        self.names = names;
        self.dead = 0;
    }

    /// Releases spare capacity (after a directory is read, its size rarely changes).
    pub fn shrink_to_fit(&mut self) {
        if self.gone > 0 || self.sorted as usize != self.entries.len() {
            self.merge_runs();
        }
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

    /// The entries in byte order of their names: the two runs merged, the gone skipped.
    fn in_order(&self) -> impl Iterator<Item = &Entry> {
        let (first, second) = self.entries.split_at(self.sorted as usize);
        let mut first = first.iter().filter(|e| !e.is_gone()).peekable();
        let mut second = second.iter().peekable();
        std::iter::from_fn(move || match (first.peek(), second.peek()) {
            (Some(x), Some(y)) if self.name(y) < self.name(x) => second.next(),
            (Some(_), _) => first.next(),
            (None, _) => second.next(),
        })
    }

    /// The files in byte order of their names.
    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, &FileState)> {
        self.in_order()
            .map(|e| (OsStr::from_bytes(self.name(e)), &e.state))
    }

    /// The states, in byte order of their names.
    pub fn states(&self) -> impl Iterator<Item = &FileState> {
        self.in_order().map(|e| &e.state)
    }

    /// Walks `self` (before) and `after` together in name order, calling `each` with
    /// every name and its states (`None` on the side that lacks it).
    pub fn merge<'a>(
        &'a self,
        after: &'a Files,
        mut each: impl FnMut(&'a OsStr, Option<&'a FileState>, Option<&'a FileState>),
    ) {
        let (mut a, mut b) = (self.in_order().peekable(), after.in_order().peekable());
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
        let name = |e: &Entry| &names[e.span()];
        if !files.entries.windows(2).all(|w| name(&w[0]) < name(&w[1])) {
            sort_keeping_last(&mut files.entries, |x, y| name(x).cmp(name(y)));
        }
        // Names given twice: the earlier spans are dead (the set compacts them away).
        files.dead = names.len() - files.entries.iter().map(|e| e.span().len()).sum::<usize>();
        files.names = names;
        files.sorted = files.entries.len() as u32; // at most u32::MAX: `intern`
        files.gone = 0;
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

    /// The two runs' invariants, and the arena's accounting.
    fn check(f: &Files) {
        let sorted = f.sorted as usize;
        let (first, second) = f.entries.split_at(sorted);
        let in_order = |run: &[Entry]| run.windows(2).all(|w| f.name(&w[0]) < f.name(&w[1]));
        assert!(in_order(first) && in_order(second), "a run out of order");
        assert!(second.iter().all(|e| !e.is_gone()), "gone in the second run");
        assert_eq!(first.iter().filter(|e| e.is_gone()).count(), f.gone as usize);
        for e in second {
            let found = first.binary_search_by(|x| f.name(x).cmp(f.name(e)));
            assert!(found.is_err(), "a name in both runs");
        }
        let used: usize = f.entries.iter().map(|e| e.span().len()).sum();
        assert_eq!(f.dead, f.names.len() - used, "dead bytes miscounted");
        assert!(second.len() <= tail_limit(sorted) && f.gone as usize * 2 <= sorted);
    }

    proptest! {
        #[test]
        fn files_behave_like_a_sorted_map_of_names(
            listed in prop::collection::vec((name(), 0u64..8), 0..40),
            ops in prop::collection::vec(op(), 0..200),
        ) {
            // From a listing (the first run), as a watched directory starts.
            let (mut builder, mut model) = (Builder::default(), BTreeMap::<Vec<u8>, FileState>::new());
            for (n, s) in listed {
                builder.push(&os(&n), state(s));
                model.insert(n, state(s));
            }
            let mut files = builder.finish();
            check(&files);
            for op in ops {
                match op {
                    Op::Insert(n, s) => {
                        prop_assert!(files.insert(&os(&n), state(s)));
                        model.insert(n, state(s));
                    }
                    Op::Remove(n) => prop_assert_eq!(files.remove(&os(&n)), model.remove(&n)),
                    Op::Shrink => files.shrink_to_fit(),
                }
                check(&files);
                let got: Vec<(Vec<u8>, FileState)> =
                    files.iter().map(|(n, s)| (n.as_bytes().to_vec(), *s)).collect();
                let want: Vec<(Vec<u8>, FileState)> = model.iter().map(|(n, s)| (n.clone(), *s)).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(files.len(), model.len());
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
            check(&files);
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
            // `after` is reached by changes (both runs, entries marked gone), as in a tree.
            let mut fb = build(&a);
            for n in a.keys().filter(|n| !b.contains_key(*n)) {
                fb.remove(&os(n));
            }
            for (n, s) in &b {
                fb.insert(&os(n), state(*s));
            }
            let fa = build(&a);
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
    fn regression_a_change_in_a_huge_directory_does_not_move_all_its_files() {
        // A drop folder of 250,000 files; 10,000 more come with random names, then
        // 10,000 go. One sorted vector moved half the directory per change (125,000
        // entries, 5 MB); the two runs move about √n per change, merges included.
        let name = |i: u64| os(format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).as_bytes());
        let mut builder = Builder::with_capacity(250_000);
        (0..250_000).for_each(|i| builder.push(&name(i), state(i)));
        let mut files = builder.finish();
        let moved = || MOVED.with(|m| m.get());
        let before = moved();
        (250_000..260_000).for_each(|i| assert!(files.insert(&name(i), state(i))));
        let per_new = (moved() - before) / 10_000;
        let before = moved();
        (0..20_000)
            .step_by(2)
            .for_each(|i| assert!(files.remove(&name(i)).is_some()));
        let per_gone = (moved() - before) / 10_000;
        assert!(
            per_new < 2_000 && per_gone < 2_000,
            "entries moved per file: {per_new} added, {per_gone} removed"
        );
        assert_eq!(files.len(), 250_000);
        let names: Vec<&OsStr> = files.iter().map(|(n, _)| n).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "not in name order");
        assert_eq!(files.get(&name(1)), Some(&state(1)));
        assert_eq!(files.get(&name(2)), None);
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
