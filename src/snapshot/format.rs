//! The saved snapshot's format. Version 3, written now, is by directory, the
//! form the watcher keeps in memory: a directory's path once, then each file's
//! name and state, and a CRC-32 at the end. Version 2, written before, had one
//! record per file with its full path and 128-bit times, and a byte-wise FNV-1a
//! checksum; it is still read (and grouped by directory as it loads), so
//! snapshots saved by earlier versions load on upgrade.
//!
//! Version 3, all integers little-endian:
//! `EXECLIBSNAP3`, directory count (u64), then per directory its path length
//! (u32), path bytes, file count (u32), and per file its name length (u32), name
//! bytes, inode, size (u64), mtime and ctime (i64 nanoseconds); then the CRC-32 of
//! everything before it (u32).

use super::files::{Builder, Files};
use super::{Dirs, FileState, UNKNOWN};
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const MAGIC_V2: &[u8; 12] = b"EXECLIBSNAP2";
const MAGIC_V3: &[u8; 12] = b"EXECLIBSNAP3";

/// A writer that keeps the CRC-32 of what went through it.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `dirs` in version 3 to `out` (buffered here), directories without files left out.
pub(super) fn write(dirs: &Dirs, out: impl Write) -> io::Result<()> {
    let mut w = io::BufWriter::with_capacity(
        1 << 20,
        Summing {
            inner: out,
            crc: crc32fast::Hasher::new(),
        },
    );
    w.write_all(MAGIC_V3)?;
    let count = dirs.iter().filter(|(_, f)| f.len() > 0).count();
    w.write_all(&(count as u64).to_le_bytes())?;
    for (dir, files) in dirs.iter().filter(|(_, f)| f.len() > 0) {
        let path = dir.as_os_str().as_bytes();
        w.write_all(&len32(path.len())?.to_le_bytes())?;
        w.write_all(path)?;
        w.write_all(&len32(files.len())?.to_le_bytes())?;
        for (name, state) in files.iter() {
            let name = name.as_bytes();
            w.write_all(&(name.len() as u32).to_le_bytes())?;
            w.write_all(name)?;
            w.write_all(&state.ino.to_le_bytes())?;
            w.write_all(&state.size.to_le_bytes())?;
            w.write_all(&state.mtime_ns.to_le_bytes())?;
            w.write_all(&state.ctime_ns.to_le_bytes())?;
        }
    }
    let mut summing = w.into_inner().map_err(|e| e.into_error())?;
    let crc = summing.crc.clone().finalize();
    summing.inner.write_all(&crc.to_le_bytes())?;
    summing.inner.flush()
}

fn len32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("a path or directory too large for the snapshot format"))
}

/// Decodes a saved snapshot of either version; `None` for anything malformed.
pub(super) fn decode(data: &[u8]) -> Option<Dirs> {
    if data.starts_with(MAGIC_V3) {
        decode_v3(data)
    } else {
        decode_v2(data)
    }
}

/// Takes fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A count of records of at least `least` bytes each, refused when the data left
    /// cannot hold that many (so a damaged count reserves nothing).
    fn count(&mut self, least: usize) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n <= self.0.len() / least).then_some(n)
    }
}

fn decode_v3(data: &[u8]) -> Option<Dirs> {
    let (body, sum) = data.split_at_checked(data.len().checked_sub(4)?)?;
    if crc32fast::hash(body) != u32::from_le_bytes(sum.try_into().ok()?) {
        return None;
    }
    let mut r = Reader(&body[MAGIC_V3.len()..]);
    let count = r.count(8)?;
    let mut dirs = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u32()? as usize;
        let dir = PathBuf::from(OsStr::from_bytes(r.take(len)?));
        let files = r.u32()? as usize;
        if files > r.0.len() / 37 {
            return None;
        }
        let mut builder = Builder::with_capacity(files);
        for _ in 0..files {
            let len = r.u32()? as usize;
            let name = r.take(len)?;
            if !is_name(name) {
                return None;
            }
            let ino = r.u64()?;
            let size = r.u64()?;
            let mtime_ns = r.u64()? as i64;
            let ctime_ns = r.u64()? as i64;
            let state = FileState {
                ino,
                size,
                mtime_ns,
                ctime_ns,
            };
            builder.push(OsStr::from_bytes(name), state);
        }
        dirs.push((dir, builder.finish()));
    }
    if !r.0.is_empty() {
        return None;
    }
    // Written in path order; anything else is sorted, and a directory given twice is damage.
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    if dirs.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(Dirs::from_sorted(dirs))
}

/// A file name as a directory holds it: not empty, no `/`, not `.` or `..`.
fn is_name(name: &[u8]) -> bool {
    !name.is_empty() && !name.contains(&b'/') && name != b"." && name != b".."
}

fn decode_v2(data: &[u8]) -> Option<Dirs> {
    let (body, sum) = data.split_at_checked(data.len().checked_sub(8)?)?;
    if fnv(body) != u64::from_le_bytes(sum.try_into().ok()?) {
        return None;
    }
    let mut r = Reader(body.strip_prefix(MAGIC_V2.as_slice())?);
    let count = r.count(44)?;
    // Grouped by directory as they come: entries are in path order, where a
    // directory's files are interleaved with its subdirectories' (`d/a`, `d/b/x`,
    // `d/c`), so the directory being filled is looked up only when it changes.
    let mut dirs: std::collections::BTreeMap<PathBuf, Builder> = Default::default();
    let mut current: Option<(PathBuf, Builder)> = None;
    for _ in 0..count {
        let len = r.u32()? as usize;
        let path = Path::new(OsStr::from_bytes(r.take(len)?));
        let ino = r.u64()?;
        let size = r.u64()?;
        let mtime_ns = time(r.take(16)?)?;
        let ctime_ns = time(r.take(16)?)?;
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            continue; // `/` or a path ending in `..`: never a file the watcher records
        };
        if current.as_ref().is_none_or(|(d, _)| d != dir) {
            if let Some((d, b)) = current.take() {
                dirs.insert(d, b);
            }
            let builder = dirs.remove(dir).unwrap_or_default();
            current = Some((dir.to_owned(), builder));
        }
        let state = FileState {
            ino,
            size,
            mtime_ns,
            ctime_ns,
        };
        current.as_mut().expect("set above").1.push(name, state);
    }
    if !r.0.is_empty() {
        return None;
    }
    if let Some((d, b)) = current {
        dirs.insert(d, b);
    }
    let dirs: Vec<(PathBuf, Files)> = dirs.into_iter().map(|(d, b)| (d, b.finish())).collect();
    Some(Dirs::from_sorted(dirs))
}

/// A saved 128-bit time, clamped to 64 bits (the unknown mark, `i128::MIN` in files
/// saved before times were 64 bits, stays the unknown mark).
fn time(bytes: &[u8]) -> Option<i64> {
    let t = i128::from_le_bytes(bytes.try_into().ok()?);
    Some(match i64::try_from(t) {
        Ok(t) => t,
        Err(_) if t < 0 && t != i128::MIN => UNKNOWN + 1,
        Err(_) if t < 0 => UNKNOWN,
        Err(_) => i64::MAX,
    })
}

/// FNV-1a, 64 bits: version 2's checksum.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// What version 2 wrote for `snapshot` (to test that such files still load).
#[cfg(test)]
pub(super) fn encode_v2(snapshot: &super::Snapshot) -> Vec<u8> {
    let mut out = MAGIC_V2.to_vec();
    out.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    for (path, state) in snapshot {
        let bytes = path.as_os_str().as_bytes();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(&state.ino.to_le_bytes());
        out.extend_from_slice(&state.size.to_le_bytes());
        out.extend_from_slice(&i128::from(state.mtime_ns).to_le_bytes());
        out.extend_from_slice(&i128::from(state.ctime_ns).to_le_bytes());
    }
    let sum = fnv(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    fn state(ino: u64, size: u64) -> FileState {
        FileState {
            ino,
            size,
            mtime_ns: 7,
            ctime_ns: -8,
        }
    }

    fn encode(dirs: &Dirs) -> Vec<u8> {
        let mut out = Vec::new();
        write(dirs, &mut out).unwrap();
        out
    }

    /// Files in nested directories, with names not UTF-8, one unknown state.
    fn sample() -> Snapshot {
        let raw = |b: &[u8]| PathBuf::from(OsString::from_vec(b.to_vec()));
        let mut s: Snapshot = [
            ("/a b", state(1, 2)),
            ("/d/x", state(3, 4)),
            ("/d/e/y", state(5, 6)),
        ]
        .into_iter()
        .map(|(p, st)| (PathBuf::from(p), st))
        .collect();
        s.insert(raw(b"/\xff\xfe"), state(7, 8));
        s.insert(raw(b"/d\xff/\x80"), FileState::unknown(9));
        s
    }

    #[test]
    fn encoding_round_trips_and_detects_damage() {
        let s = sample();
        let data = encode(&Dirs::from_flat(&s));
        assert!(data.starts_with(MAGIC_V3));
        assert_eq!(decode(&data).map(|d| d.to_flat()), Some(s));
        for cut in [0, 5, 12, data.len() - 1] {
            assert!(decode(&data[..cut]).is_none(), "truncated at {cut}");
        }
        for at in [3, 20, data.len() / 2, data.len() - 2] {
            let mut flipped = data.clone();
            flipped[at] ^= 1;
            assert!(decode(&flipped).is_none(), "flipped at {at}");
        }
    }

    /// A file's name that no directory can hold (a `/` in it, empty, `..`) is damage,
    /// even with a good checksum: it would be reported under another path.
    #[test]
    fn names_no_directory_can_hold_are_refused() {
        for bad in [&b"a/b"[..], b"", b".."] {
            let mut body = MAGIC_V3.to_vec();
            body.extend_from_slice(&1u64.to_le_bytes());
            body.extend_from_slice(&2u32.to_le_bytes());
            body.extend_from_slice(b"/d");
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(&(bad.len() as u32).to_le_bytes());
            body.extend_from_slice(bad);
            body.extend_from_slice(&[0u8; 32]);
            let crc = crc32fast::hash(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            assert!(decode(&body).is_none(), "{bad:?}");
        }
    }

    /// Snapshots saved by earlier versions (version 2: full paths, 128-bit times,
    /// FNV-1a) load, grouped by directory, and save back as version 3 unchanged.
    #[test]
    fn snapshots_saved_by_version_2_load() {
        let s = sample();
        let old = encode_v2(&s);
        assert!(old.starts_with(MAGIC_V2));
        let dirs = decode(&old).expect("a version 2 snapshot loads");
        assert_eq!(dirs.to_flat(), s);
        assert_eq!(decode(&encode(&dirs)).map(|d| d.to_flat()), Some(s));
        let mut flipped = old.clone();
        flipped[20] ^= 1;
        assert!(decode(&flipped).is_none());
    }

    /// Version 2 files saved when times were held in 128 bits load: the unknown mark
    /// stays unknown, and times beyond 64 bits of nanoseconds are clamped, not refused.
    #[test]
    fn snapshots_saved_with_128_bit_times_load() {
        let mut old = MAGIC_V2.to_vec();
        old.extend_from_slice(&3u64.to_le_bytes());
        for (name, mtime) in [(&b"/a"[..], i128::MIN), (b"/b", 5), (b"/c", i128::MAX)] {
            old.extend_from_slice(&(name.len() as u32).to_le_bytes());
            old.extend_from_slice(name);
            old.extend_from_slice(&1u64.to_le_bytes());
            old.extend_from_slice(&2u64.to_le_bytes());
            old.extend_from_slice(&mtime.to_le_bytes());
            old.extend_from_slice(&mtime.to_le_bytes());
        }
        let sum = fnv(&old);
        old.extend_from_slice(&sum.to_le_bytes());
        let s = decode(&old).expect("an old snapshot loads");
        assert!(!s.get(Path::new("/a")).unwrap().is_known());
        assert_eq!(s.get(Path::new("/b")).unwrap().mtime_ns, 5);
        assert_eq!(s.get(Path::new("/c")).unwrap().mtime_ns, i64::MAX);
        let again = decode(&encode(&s)).expect("and saves back");
        assert_eq!(again.to_flat(), s.to_flat());
    }

    /// Version 2 files list a directory's files among its subdirectories' (path
    /// order): every file lands in its own directory, however they interleave.
    #[test]
    fn version_2_files_interleaved_with_subdirectories_are_grouped() {
        let s: Snapshot = ["/d/a", "/d/b/x", "/d/c", "/d/b/y/z", "/d/e", "/d-x", "/d/b/w"]
            .into_iter()
            .enumerate()
            .map(|(i, p)| (PathBuf::from(p), state(i as u64, 1)))
            .collect();
        let dirs = decode(&encode_v2(&s)).unwrap();
        let by_dir: Vec<(String, usize)> = dirs
            .iter()
            .map(|(d, f)| (d.display().to_string(), f.len()))
            .collect();
        assert_eq!(
            by_dir,
            [
                ("/".into(), 1),
                ("/d".into(), 3),
                ("/d/b".into(), 2),
                ("/d/b/y".into(), 1)
            ]
        );
        assert_eq!(dirs.to_flat(), s);
    }
}
