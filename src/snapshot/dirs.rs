//! A snapshot by directory: each directory's path once, and its files in the
//! compact form the watcher keeps ([`Files`]: names in one arena, 40 bytes an
//! entry). A catch-up listener holds its saved baseline in this form, and
//! compares it with the tree one directory at a time (one merge of names per
//! directory), so no map by full path is ever built: on 1,000,000 files such a
//! map cost about 120 bytes a file, this form about 45.

use super::FileState;
#[cfg(test)]
use super::Snapshot;
use super::files::{Builder, Files, sort_keeping_last};
use crate::events::EventKind;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Files by directory, directories in path order (each once).
#[derive(Debug, Clone, Default)]
pub struct Dirs {
    dirs: Vec<(PathBuf, Files)>,
}

impl Dirs {
    /// From directories already in path order, each once (checked in debug builds).
    pub(crate) fn from_sorted(dirs: Vec<(PathBuf, Files)>) -> Dirs {
        debug_assert!(dirs.windows(2).all(|w| w[0].0 < w[1].0));
        Dirs { dirs }
    }

    /// The directories and their files, in path order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Path, &Files)> {
        self.dirs.iter().map(|(p, f)| (p.as_path(), f))
    }

    /// How many files.
    #[cfg(test)]
    pub fn file_count(&self) -> usize {
        self.dirs.iter().map(|(_, f)| f.len()).sum()
    }

    fn find(&self, dir: &Path) -> Result<usize, usize> {
        self.dirs.binary_search_by(|(p, _)| p.as_path().cmp(dir))
    }

    /// The state of the file at `path`.
    pub fn get(&self, path: &Path) -> Option<FileState> {
        let (dir, name) = (path.parent()?, path.file_name()?);
        let i = self.find(dir).ok()?;
        self.dirs[i].1.get(name).copied()
    }

    /// Records each file's state, or forgets the file (`None`); of a path given twice
    /// the last wins. One pass over each directory touched, and one over the directory
    /// list if directories are added, however many files change: a file at a time, a
    /// deleted subtree's files (unsettled, so kept at their saved state) would each move
    /// a directory's entries, or the whole directory list.
    pub fn patch(&mut self, changes: impl IntoIterator<Item = (PathBuf, Option<FileState>)>) {
        let mut by_dir: BTreeMap<PathBuf, Vec<(OsString, Option<FileState>)>> = BTreeMap::new();
        for (path, state) in changes {
            if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                by_dir
                    .entry(dir.to_owned())
                    .or_default()
                    .push((name.to_owned(), state));
            }
        }
        let mut added = Vec::new();
        for (dir, edits) in by_dir {
            match self.find(&dir) {
                Ok(i) => self.dirs[i].1 = edited(&self.dirs[i].1, edits),
                Err(_) => {
                    let files = edited(&Files::default(), edits);
                    if files.len() > 0 {
                        added.push((dir, files));
                    }
                }
            }
        }
        if !added.is_empty() {
            // Both in path order, no directory in both: one merge.
            let mut dirs = Vec::with_capacity(self.dirs.len() + added.len());
            let (mut a, mut b) = (
                std::mem::take(&mut self.dirs).into_iter().peekable(),
                added.into_iter().peekable(),
            );
            while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
                let next = if x.0 < y.0 { a.next() } else { b.next() };
                dirs.extend(next);
            }
            dirs.extend(a.chain(b));
            self.dirs = dirs;
        }
    }

    /// The same files by directory (for tests: production never builds the flat form).
    #[cfg(test)]
    pub(crate) fn from_flat(flat: &Snapshot) -> Dirs {
        let mut dirs = std::collections::BTreeMap::<PathBuf, super::files::Builder>::new();
        for (path, state) in flat {
            if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                dirs.entry(dir.to_owned()).or_default().push(name, *state);
            }
        }
        Dirs::from_sorted(dirs.into_iter().map(|(d, b)| (d, b.finish())).collect())
    }

    /// The same files by full path.
    #[cfg(test)]
    pub fn to_flat(&self) -> Snapshot {
        let mut flat = Vec::with_capacity(self.file_count());
        for (dir, files) in self.iter() {
            flat.extend(files.iter().map(|(name, state)| (dir.join(name), *state)));
        }
        flat.into_iter().collect()
    }
}

/// `files` with `edits` made (in any order; of a name given twice the last wins).
fn edited(files: &Files, mut edits: Vec<(OsString, Option<FileState>)>) -> Files {
    sort_keeping_last(&mut edits, |x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
    let mut out = Builder::default();
    let mut edits = edits.into_iter().peekable();
    for (name, state) in files.iter() {
        while let Some((n, s)) = edits.next_if(|(n, _)| n.as_bytes() < name.as_bytes()) {
            s.into_iter().for_each(|s| out.push(&n, s));
        }
        match edits.next_if(|(n, _)| n.as_bytes() == name.as_bytes()) {
            Some((n, s)) => s.into_iter().for_each(|s| out.push(&n, s)),
            None => out.push(name, *state),
        }
    }
    for (n, s) in edits {
        s.into_iter().for_each(|s| out.push(&n, s));
    }
    out.finish()
}

/// The changes from `old` to `new` (directories in path order, as [`Dirs::iter`]
/// gives them): exactly what [`super::diff`] reports on the same files by full path,
/// in the same order (created and modified files, then deleted ones, each in path
/// order). A directory on one side only (deleted, created, or a file now) is
/// compared with an empty one, so its files are reported deleted or created.
pub(crate) fn diff<'a, 'b>(
    old: impl IntoIterator<Item = (&'a Path, &'a Files)>,
    new: impl IntoIterator<Item = (&'b Path, &'b Files)>,
) -> Vec<(PathBuf, EventKind)> {
    let (mut changes, mut deleted) = (Vec::new(), Vec::new());
    let empty = Files::default();
    let mut each_dir = |dir: &Path, before: &Files, after: &Files| {
        before.merge(after, |name, b, a| match (b, a) {
            (None, Some(_)) => changes.push((dir.join(name), EventKind::Create)),
            (Some(b), Some(a)) if b != a => changes.push((dir.join(name), EventKind::Modify)),
            (Some(_), None) => deleted.push((dir.join(name), EventKind::Delete)),
            _ => {}
        });
    };
    let (mut a, mut b) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((x, _)), Some((y, _))) => x.cmp(y),
        };
        match order {
            Ordering::Less => {
                let (dir, files) = a.next().expect("peeked");
                each_dir(dir, files, &empty);
            }
            Ordering::Greater => {
                let (dir, files) = b.next().expect("peeked");
                each_dir(dir, &empty, files);
            }
            Ordering::Equal => {
                let ((dir, before), (_, after)) = (a.next().expect("peeked"), b.next().expect("peeked"));
                each_dir(dir, before, after);
            }
        }
    }
    // Each directory's changes are in name order and the directories in path order,
    // but a file sorts among its directory's subdirectories (`d/b` between `d/a/x` and
    // `d/c/y`): the runs are merged into path order (a stable sort of sorted runs).
    changes.sort_by(|x, y| x.0.cmp(&y.0));
    deleted.sort_by(|x, y| x.0.cmp(&y.0));
    changes.append(&mut deleted);
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    fn state(ino: u64) -> FileState {
        FileState {
            ino,
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
        }
    }

    fn path(s: &[u8]) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(s))
    }

    fn flat(entries: &[(&[u8], u64)]) -> Snapshot {
        entries.iter().map(|(p, i)| (path(p), state(*i))).collect()
    }

    fn by_dir(old: &Snapshot, new: &Snapshot) -> Vec<(PathBuf, EventKind)> {
        let (old, new) = (Dirs::from_flat(old), Dirs::from_flat(new));
        diff(old.iter(), new.iter())
    }

    /// The cases a comparison by directory could get wrong, each against the flat diff
    /// (which compares full paths) and spelled out.
    #[test]
    fn directory_by_directory_reports_what_the_flat_diff_does() {
        use EventKind::{Create, Delete, Modify};
        type Files<'a> = &'a [(&'a [u8], u64)];
        type Case<'a> = (Files<'a>, Files<'a>, Vec<(&'a [u8], EventKind)>);
        let cases: [Case; 5] = [
            // A directory deleted with its files, and one deeper under it.
            (
                &[(b"/t/d/a", 1), (b"/t/d/e/b", 2), (b"/t/k", 3)],
                &[(b"/t/k", 3)],
                vec![(b"/t/d/a", Delete), (b"/t/d/e/b", Delete)],
            ),
            // A directory that became a file, and a file that became a directory.
            (
                &[(b"/t/d/a", 1), (b"/t/f", 2)],
                &[(b"/t/d", 4), (b"/t/f/a", 5)],
                vec![
                    (b"/t/d", Create),
                    (b"/t/f/a", Create),
                    (b"/t/d/a", Delete),
                    (b"/t/f", Delete),
                ],
            ),
            // Names that sort differently as bytes and as text (`-` and `/`, a byte
            // above 0x7f and a multi-byte character): path order, not string order.
            (
                &[
                    (b"/t/a-b", 1),
                    (b"/t/a/b", 2),
                    (b"/t/\xc3\xa9", 3),
                    (b"/t/\xff", 4),
                ],
                &[
                    (b"/t/a-b", 9),
                    (b"/t/a/b", 9),
                    (b"/t/\xc3\xa9", 9),
                    (b"/t/\xff", 9),
                ],
                vec![
                    (b"/t/a/b", Modify),
                    (b"/t/a-b", Modify),
                    (b"/t/\xc3\xa9", Modify),
                    (b"/t/\xff", Modify),
                ],
            ),
            // Names not UTF-8, in directories not UTF-8.
            (
                &[(b"/t/\xfe/\x80", 1), (b"/t/\xfe/x", 2)],
                &[(b"/t/\xfe/x", 2), (b"/t/\xfe\xfe/\x81", 3)],
                vec![(b"/t/\xfe\xfe/\x81", Create), (b"/t/\xfe/\x80", Delete)],
            ),
            // A file among its directory's subdirectories: path order across directories.
            (
                &[],
                &[(b"/t/a/x", 1), (b"/t/b", 2), (b"/t/c/y", 3), (b"/t/a0", 4)],
                vec![
                    (b"/t/a/x", Create),
                    (b"/t/a0", Create),
                    (b"/t/b", Create),
                    (b"/t/c/y", Create),
                ],
            ),
        ];
        for (old, new, want) in cases {
            let (old, new) = (flat(old), flat(new));
            let want: Vec<(PathBuf, EventKind)> = want.into_iter().map(|(p, k)| (path(p), k)).collect();
            assert_eq!(crate::snapshot::diff(&old, &new), want, "the flat diff");
            assert_eq!(by_dir(&old, &new), want, "by directory");
        }
    }

    /// Paths of few components from a small alphabet (bytes not UTF-8, `-`
    /// that sorts before `/`, `0` after): directories deleted, created, turned
    /// into files and back.
    fn tree() -> impl Strategy<Value = Snapshot> {
        let part = prop::collection::vec(prop_oneof![Just(b'a'), Just(b'-'), Just(0xff), Just(b'0')], 1..3);
        let file = prop::collection::vec(part, 1..4).prop_map(|parts| {
            let mut p = b"/w".to_vec();
            for part in parts {
                p.push(b'/');
                p.extend(part);
            }
            path(&p)
        });
        prop::collection::btree_map(file, (0u64..3).prop_map(state), 0..30)
            .prop_map(|m| m.into_iter().filter(|(p, _)| p.file_name().is_some()).collect())
    }

    proptest! {
        #[test]
        fn diff_by_directory_matches_the_flat_diff(old in tree(), new in tree()) {
            prop_assert_eq!(by_dir(&old, &new), crate::snapshot::diff(&old, &new));
        }

        #[test]
        fn patch_and_get_behave_like_the_flat_map(old in tree(), new in tree(), gone in tree()) {
            let mut dirs = Dirs::from_flat(&old);
            let mut want = old.clone();
            let mut changes = Vec::new();
            // Removals of files there and not there, then states set (some twice: the
            // last wins), in no particular order.
            for p in old.keys().step_by(2).chain(gone.keys()) {
                changes.push((p.clone(), None));
                want.remove(p);
            }
            for (p, st) in new.iter().rev() {
                changes.push((p.clone(), Some(FileState { ino: 99, ..*st })));
                changes.push((p.clone(), Some(*st)));
                want.insert(p.clone(), *st);
            }
            dirs.patch(changes);
            prop_assert_eq!(dirs.to_flat(), want.clone());
            prop_assert!(dirs.dirs.windows(2).all(|w| w[0].0 < w[1].0), "directories in order");
            for (p, st) in &want {
                prop_assert_eq!(dirs.get(p), Some(*st));
            }
        }
    }
}
