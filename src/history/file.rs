//! The history on disk: `STATE_DIR/history/LISTENER.jsonl`, one JSON record a line,
//! appended by the [`Writer`] task and compacted (the last
//! [`RUNS_PER_LISTENER`] records written to a temporary file, synced, renamed over
//! it) once it holds twice that many. Reading back trusts nothing: at most
//! [`MAX_FILE_BYTES`] of a file (its end) are read, a line over [`MAX_RECORD`] bytes
//! or that is not a record of that listener is dropped, and every record is held to
//! the history's bounds; each such loss is logged as a warning.

use super::{RUNS_PER_LISTENER, bound};
use crate::protocol::observe::RunRecord;
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The most of a history file read back (its last bytes).
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// The longest record line read back.
pub const MAX_RECORD: usize = 256 * 1024;
/// The most history files read back.
const MAX_FILES: usize = 1024;

/// The history's directory under the state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("history")
}

fn file(dir: &Path, listener: &str) -> PathBuf {
    dir.join(format!("{listener}.jsonl"))
}

/// Whether `name` could be a listener's (the config allows letters, digits, `.`,
/// `_` and `-`, at most 64 bytes).
fn listener_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Every listener's runs found under `dir`, oldest first; what cannot be used is
/// dropped with a warning. A missing directory is an empty history.
pub fn load_all(dir: &Path) -> HashMap<String, Vec<RunRecord>> {
    let mut all = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return all;
    };
    for entry in entries.flatten().take(MAX_FILES) {
        let name = entry.file_name();
        let Some(listener) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
            continue;
        };
        if !listener_name(listener) {
            continue;
        }
        let path = entry.path();
        match read_end(&path) {
            Ok((data, cut)) => {
                let (runs, dropped) = parse(listener, &data, cut);
                if dropped > 0 || cut {
                    warn!(
                        file = %crate::names::escaped(&path),
                        dropped,
                        "history file partly unusable: {dropped} line(s) dropped{}",
                        if cut { ", only its last 8 MiB read" } else { "" }
                    );
                }
                all.insert(listener.to_owned(), runs);
            }
            Err(e) => warn!(file = %crate::names::escaped(&path), "cannot read the history file: {e}"),
        }
    }
    all
}

/// The last [`MAX_FILE_BYTES`] of `path` (not following a symlink), and whether
/// that is not all of it.
fn read_end(path: &Path) -> std::io::Result<(Vec<u8>, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let cut = meta.len() > MAX_FILE_BYTES;
    if cut {
        f.seek(std::io::SeekFrom::End(-(MAX_FILE_BYTES as i64)))?;
    }
    let mut data = Vec::new();
    f.take(MAX_FILE_BYTES).read_to_end(&mut data)?;
    Ok((data, cut))
}

/// The records of `listener` in `data` (the last [`RUNS_PER_LISTENER`]), and how many
/// lines were dropped. `cut`: `data` starts mid-file, so its first line is partial.
pub fn parse(listener: &str, data: &[u8], cut: bool) -> (Vec<RunRecord>, usize) {
    let mut lines = data.split(|&b| b == b'\n');
    if cut {
        lines.next();
    }
    let mut dropped = 0;
    let mut runs = std::collections::VecDeque::new();
    for line in lines.filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
        let record = (line.len() <= MAX_RECORD)
            .then(|| serde_json::from_slice::<RunRecord>(line).ok())
            .flatten()
            .filter(|r| r.listener == listener);
        let Some(mut record) = record else {
            dropped += 1;
            continue;
        };
        bound(&mut record);
        if runs.len() == RUNS_PER_LISTENER {
            runs.pop_front();
        }
        runs.push_back(record);
    }
    (runs.into(), dropped)
}

/// The task that appends records to the history files; the daemon runs it until its
/// listeners have stopped, then stops it: it writes what is queued and returns.
#[derive(Debug)]
pub struct Writer {
    rx: mpsc::Receiver<Arc<RunRecord>>,
    files: Files,
}

/// The files written, and how many lines each holds.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    lines: HashMap<String, usize>,
    failing: bool,
}

impl Writer {
    pub(super) fn new(dir: PathBuf, rx: mpsc::Receiver<Arc<RunRecord>>) -> Self {
        Writer {
            rx,
            files: Files {
                dir,
                lines: HashMap::new(),
                failing: false,
            },
        }
    }

    /// Appends records as they come until `stop`; then appends what is queued.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::new();
        loop {
            let stopping = tokio::select! {
                n = self.rx.recv_many(&mut batch, 256) => n == 0,
                _ = stop.cancelled() => true,
            };
            if stopping {
                while let Ok(record) = self.rx.try_recv() {
                    batch.push(record);
                }
            }
            let mut files = self.files;
            let records = std::mem::take(&mut batch);
            self.files = match tokio::task::spawn_blocking(move || {
                files.append(&records);
                files
            })
            .await
            {
                Ok(files) => files,
                Err(e) => {
                    warn!("the history writer failed: {e}");
                    return;
                }
            };
            if stopping {
                return;
            }
        }
    }
}

impl Files {
    fn append(&mut self, records: &[Arc<RunRecord>]) {
        let mut by_listener: HashMap<&str, Vec<u8>> = HashMap::new();
        for r in records {
            let out = by_listener.entry(&r.listener).or_default();
            serde_json::to_writer(&mut *out, &**r).expect("records serialize");
            out.push(b'\n');
        }
        for (listener, data) in by_listener {
            let n = data.iter().filter(|&&b| b == b'\n').count();
            let result = self.append_to(listener, &data, n);
            match (result, self.failing) {
                (Ok(()), true) => {
                    tracing::info!("history saved again");
                    self.failing = false;
                }
                (Err(e), false) => {
                    warn!(listener, "cannot save the history (runs stay in memory): {e}");
                    self.failing = true;
                }
                _ => {}
            }
        }
    }

    fn append_to(&mut self, listener: &str, data: &[u8], n: usize) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = file(&self.dir, listener);
        if !self.lines.contains_key(listener) {
            match std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
            {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            let known = match read_end(&path) {
                Ok((data, false)) => data.iter().filter(|&&b| b == b'\n').count(),
                Ok((_, true)) => usize::MAX, // too big: compact now
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(e),
            };
            self.lines.insert(listener.to_owned(), known);
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        f.write_all(data)?;
        let lines = self.lines.get_mut(listener).expect("counted above");
        *lines = lines.saturating_add(n);
        if *lines > 2 * RUNS_PER_LISTENER {
            *lines = compact(&path, listener)?;
        }
        Ok(())
    }
}

/// Rewrites `path` with its last [`RUNS_PER_LISTENER`] usable records (temporary
/// file, fsync, rename); returns how many.
fn compact(path: &Path, listener: &str) -> std::io::Result<usize> {
    use std::os::unix::fs::OpenOptionsExt;
    let (data, cut) = read_end(path)?;
    let (runs, _) = parse(listener, &data, cut);
    let mut out = Vec::new();
    for r in &runs {
        serde_json::to_writer(&mut out, r).expect("records serialize");
        out.push(b'\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&out)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(runs.len())
}
