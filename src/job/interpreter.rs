//! What else `execve` opens to run a program: the interpreter named on a script's
//! `#!` line, or an ELF program's dynamic loader (`PT_INTERP`). A job whose program
//! is on a local disk but whose interpreter is on a network or FUSE mount waits on
//! that mount inside `execve`, while the daemon's thread that starts it is
//! suspended (see [`super::start`]); [`reaches`] walks what such a start opens.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How many interpreters deep [`reaches`] looks: the kernel gives up on scripts run
/// by scripts past a few levels (`ELOOP`).
const MAX_DEPTH: usize = 5;

/// What the kernel reads of a script to find its `#!` line (`BINPRM_BUF_SIZE`).
const HEAD: usize = 256;

/// `PT_INTERP`, the program header naming the dynamic loader.
const PT_INTERP: u32 = 3;

/// What `remote` says of the first of the interpreters `execve` of `program` opens
/// that it says something of: a script's, that one's if it is a script too, and the
/// last one's dynamic loader. Relative names are taken under `workdir`, as the
/// kernel takes them once the job has entered it. An interpreter is read (to see
/// whether it is a script) only once `remote` has said nothing of it; the walk
/// stops at what cannot be read.
pub fn reaches<T>(program: &Path, workdir: &Path, remote: impl Fn(&Path) -> Option<T>) -> Option<T> {
    let mut next = workdir.join(program);
    for _ in 0..MAX_DEPTH {
        match interpreter(&next)? {
            Found::Script(path) => next = workdir.join(path),
            Found::Loader(path) => return remote(&workdir.join(path)),
        }
        if let Some(found) = remote(&next) {
            return Some(found);
        }
    }
    None
}

/// What a program names to run it.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// The interpreter on its `#!` line.
    Script(PathBuf),
    /// Its ELF dynamic loader.
    Loader(PathBuf),
}

fn interpreter(program: &Path) -> Option<Found> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, and only a regular file is read: a FIFO would wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(program)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut head = [0u8; HEAD];
    let n = file.read_at(&mut head, 0).ok()?;
    let head = &head[..n];
    if let Some(line) = head.strip_prefix(b"#!") {
        return shebang(line).map(Found::Script);
    }
    loader(&file, head).map(Found::Loader)
}

/// The interpreter on a `#!` line (what follows `#!`): blanks skipped, then up to
/// the next blank, newline or NUL.
fn shebang(line: &[u8]) -> Option<PathBuf> {
    let line = &line[line.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()..];
    let end = line
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\0'))
        .unwrap_or(line.len());
    (end > 0).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&line[..end])))
}

/// The `PT_INTERP` path of an ELF file whose first bytes are `head`.
fn loader(file: &File, head: &[u8]) -> Option<PathBuf> {
    if head.get(..4)? != b"\x7fELF" {
        return None;
    }
    let wide = match head.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = *head.get(5)? == 2;
    let int = |at, len| number(head, at, len, big);
    let (phoff, phentsize, phnum) = match wide {
        true => (int(32, 8)?, int(54, 2)?, int(56, 2)?),
        false => (int(28, 4)?, int(42, 2)?, int(44, 2)?),
    };
    // The whole header table in one read (the kernel refuses tables over 64 KiB).
    let size = usize::try_from(phentsize.checked_mul(phnum)?)
        .ok()
        .filter(|&n| n <= 65536)?;
    let entry_size = usize::try_from(phentsize)
        .ok()
        .filter(|&n| n >= if wide { 56 } else { 32 })?;
    let mut table = vec![0u8; size];
    file.read_exact_at(&mut table, phoff).ok()?;
    for entry in table.chunks_exact(entry_size) {
        let field = |at, len| number(entry, at, len, big);
        if field(0, 4)? != u64::from(PT_INTERP) {
            continue;
        }
        let (offset, size) = match wide {
            true => (field(8, 8)?, field(32, 8)?),
            false => (field(4, 4)?, field(16, 4)?),
        };
        let mut path = vec![0u8; usize::try_from(size).ok().filter(|&s| s <= 4096)?];
        file.read_exact_at(&mut path, offset).ok()?;
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        path.truncate(end);
        return Some(PathBuf::from(std::ffi::OsStr::from_bytes(&path)));
    }
    None
}

/// The `len`-byte unsigned number at `at` in `bytes`, big-endian when `big`.
fn number(bytes: &[u8], at: usize, len: usize, big: bool) -> Option<u64> {
    let bytes = bytes.get(at..at.checked_add(len)?)?;
    let fold = |n: u64, b: &u8| (n << 8) | u64::from(*b);
    Some(match big {
        true => bytes.iter().fold(0, fold),
        false => bytes.iter().rev().fold(0, fold),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_lines_name_their_interpreter_as_the_kernel_reads_them() {
        let path = |s: &str| Some(PathBuf::from(s));
        assert_eq!(shebang(b"/bin/sh\necho"), path("/bin/sh"));
        assert_eq!(shebang(b" \t/usr/bin/env python3\n"), path("/usr/bin/env"));
        assert_eq!(
            shebang(b"/nfs/tool"),
            path("/nfs/tool"),
            "no newline within the head"
        );
        assert_eq!(shebang(b"rel/tool -x"), path("rel/tool"));
        assert_eq!(shebang(b"\n"), None);
        assert_eq!(shebang(b"   "), None);
    }

    #[test]
    fn the_walk_follows_scripts_to_the_dynamic_loader_and_reads_nothing_remote() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write("outer", "#! inner -flag\n");
        write("inner", "#!/nfs/never/mounted/python\n");
        let asked = std::cell::RefCell::new(Vec::new());
        let remote = |p: &Path| {
            asked.borrow_mut().push(p.to_owned());
            p.starts_with("/nfs").then_some(())
        };
        assert!(reaches(Path::new("outer"), dir.path(), remote).is_some());
        assert_eq!(
            *asked.borrow(),
            [
                dir.path().join("inner"),
                PathBuf::from("/nfs/never/mounted/python")
            ],
            "each interpreter asked about in turn, the remote one not read"
        );
        // A local script run by /bin/sh: its loader is asked about (when sh is not static).
        write("local", "#!/bin/sh\n");
        let asked = std::cell::RefCell::new(Vec::new());
        let remote = |p: &Path| {
            asked.borrow_mut().push(p.to_owned());
            None::<()>
        };
        assert!(reaches(Path::new("local"), dir.path(), remote).is_none());
        let asked = asked.into_inner();
        assert_eq!(asked[0], PathBuf::from("/bin/sh"));
        assert!(
            asked.len() <= 2 && asked.iter().all(|p| p.is_absolute()),
            "{asked:?}"
        );
        write("loop", "#!loop\n");
        let count = std::cell::Cell::new(0);
        let never = |_: &Path| {
            count.set(count.get() + 1);
            None::<()>
        };
        assert!(reaches(Path::new("loop"), dir.path(), never).is_none());
        assert_eq!(count.get(), MAX_DEPTH, "a loop ends");
        assert!(reaches(Path::new("missing"), dir.path(), |_| Some(())).is_none());
    }
}
