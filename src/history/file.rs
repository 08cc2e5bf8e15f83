//! The history on disk: `STATE_DIR/history/LISTENER.jsonl`, one JSON record a line,
//! appended by the [`Writer`] task (in batches: [`WRITE_WINDOW`]) and compacted (the last
//! [`RUNS_PER_LISTENER`] records written to a temporary file, synced, renamed over
//! it) once it holds twice that many. Reading back trusts nothing: at most
//! [`MAX_FILE_BYTES`] of a file (its end) and [`MAX_TOTAL_BYTES`] of all files are
//! read, a line over [`MAX_RECORD`] bytes
//! or that is not a record of that listener is dropped, and every record is held to
//! the history's bounds; each such loss is logged as a warning.

use super::{RUNS_PER_LISTENER, bound};
use crate::config::MAX_LISTENER_NAME;
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
pub const MAX_FILES: usize = 1024;
/// The most bytes read back from all history files together (the files written
/// last are read first).
pub const MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;

/// How long the writer gathers records after the first before writing them: in a
/// burst of runs, one write (and one trip to the blocking pool) per window rather
/// than per run. Records still queued at shutdown are written then.
pub const WRITE_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

/// The history's directory under the state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("history")
}

fn file(dir: &Path, listener: &str) -> PathBuf {
    dir.join(format!("{listener}.jsonl"))
}

/// Whether `name` could be a listener's (the config allows letters, digits, `.`,
/// `_` and `-`, at most [`MAX_LISTENER_NAME`] bytes).
fn listener_name(name: &str) -> bool {
    (1..=MAX_LISTENER_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Every listener's runs found under `dir`, oldest first; what cannot be used is
/// dropped with a warning. A missing directory is an empty history. At most
/// [`MAX_FILES`] files and [`MAX_TOTAL_BYTES`] in all are read, the most recently
/// written files first.
pub fn load_all(dir: &Path) -> HashMap<String, Vec<RunRecord>> {
    load_within(dir, MAX_TOTAL_BYTES)
}

fn load_within(dir: &Path, mut budget: u64) -> HashMap<String, Vec<RunRecord>> {
    let mut all = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return all;
    };
    let mut files: Vec<(std::time::SystemTime, String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let listener = name.to_str()?.strip_suffix(".jsonl")?;
            let modified = entry.metadata().and_then(|m| m.modified()).ok()?;
            listener_name(listener).then(|| (modified, listener.to_owned(), entry.path()))
        })
        .take(MAX_FILES)
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut skipped = 0;
    for (_, listener, path) in files {
        if budget == 0 {
            skipped += 1;
            continue;
        }
        match read_end(&path, budget.min(MAX_FILE_BYTES)) {
            Ok((data, cut)) => {
                budget -= data.len() as u64;
                let (runs, dropped) = parse(&listener, &data, cut);
                if dropped > 0 || cut {
                    warn!(
                        file = %crate::names::escaped(&path),
                        dropped,
                        "history file partly unusable: {dropped} line(s) dropped{}",
                        if cut { format!(", only its last {} bytes read", data.len()) } else { String::new() }
                    );
                }
                all.insert(listener, runs);
            }
            Err(e) => warn!(file = %crate::names::escaped(&path), "cannot read the history file: {e}"),
        }
    }
    if skipped > 0 {
        warn!(
            skipped,
            "{skipped} history file(s) not read: the history read back is held to {MAX_TOTAL_BYTES} bytes"
        );
    }
    all
}

/// The last `max` bytes of `path` (not following a symlink), and whether that is
/// not all of it.
fn read_end(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let cut = meta.len() > max;
    if cut {
        f.seek(std::io::SeekFrom::End(-(max as i64)))?;
    }
    let mut data = Vec::new();
    f.take(max).read_to_end(&mut data)?;
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
            .filter(|r| r.listener == listener && r.id <= super::MAX_ID);
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
    /// The lengths of the last lines this writer appended to each file (at most
    /// [`RUNS_PER_LISTENER`]): once it holds that many, compaction copies the file's
    /// last bytes as they are instead of parsing and writing every record again.
    tails: HashMap<String, std::collections::VecDeque<usize>>,
    /// The listeners whose file could not be written last time.
    failing: std::collections::HashSet<String>,
}

impl Writer {
    pub(super) fn new(dir: PathBuf, rx: mpsc::Receiver<Arc<RunRecord>>) -> Self {
        Writer {
            rx,
            files: Files {
                dir,
                lines: HashMap::new(),
                tails: HashMap::new(),
                failing: Default::default(),
            },
        }
    }

    /// Appends records as they come until `stop`; then appends what is queued.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::new();
        loop {
            let mut stopping = tokio::select! {
                n = self.rx.recv_many(&mut batch, 256) => n == 0,
                _ = stop.cancelled() => true,
            };
            if !stopping {
                // More runs may be ending: gather them for a while, then write at once.
                tokio::select! {
                    _ = tokio::time::sleep(WRITE_WINDOW) => {}
                    _ = stop.cancelled() => stopping = true,
                }
                while let Ok(record) = self.rx.try_recv() {
                    batch.push(record);
                }
            }
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
        // Each listener's lines, and each line's length.
        let mut by_listener: HashMap<&str, (Vec<u8>, Vec<usize>)> = HashMap::new();
        for r in records {
            let (out, lengths) = by_listener.entry(&r.listener).or_default();
            let before = out.len();
            serde_json::to_writer(&mut *out, &**r).expect("records serialize");
            out.push(b'\n');
            lengths.push(out.len() - before);
        }
        for (listener, (data, lengths)) in by_listener {
            let result = self.append_to(listener, &data, &lengths);
            match result {
                Ok(()) if self.failing.remove(listener) => {
                    tracing::info!(listener, "history saved again");
                }
                Err(e) if self.failing.insert(listener.to_owned()) => {
                    warn!(listener, "cannot save the history (runs stay in memory): {e}");
                }
                _ => {}
            }
        }
    }

    fn append_to(&mut self, listener: &str, data: &[u8], lengths: &[usize]) -> std::io::Result<()> {
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
            let known = match read_end(&path, MAX_FILE_BYTES) {
                Ok((data, false)) => data.iter().filter(|&&b| b == b'\n').count(),
                Ok((_, true)) => usize::MAX, // too big: compact now
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(e),
            };
            self.lines.insert(listener.to_owned(), known);
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        if let Err(e) = f.write_all(data) {
            // What reached the file is unknown: the next compaction parses it.
            self.tails.remove(listener);
            return Err(e);
        }
        let tail = self.tails.entry(listener.to_owned()).or_default();
        for &length in lengths {
            if tail.len() == RUNS_PER_LISTENER {
                tail.pop_front();
            }
            tail.push_back(length);
        }
        let lines = self.lines.get_mut(listener).expect("counted above");
        *lines = lines.saturating_add(lengths.len());
        if *lines > 2 * RUNS_PER_LISTENER {
            let known = self.tails.get(listener).filter(|t| t.len() == RUNS_PER_LISTENER);
            *lines = match known.map(|t| t.iter().sum::<usize>() as u64) {
                Some(bytes) => keep_last_bytes(&f, &path, bytes)?,
                None => compact(&path, listener)?,
            };
        }
        Ok(())
    }
}

/// Rewrites `path` (open as `f`) with its last `bytes`: the last
/// [`RUNS_PER_LISTENER`] lines, which this writer wrote itself (temporary file,
/// fsync, rename); returns how many lines.
fn keep_last_bytes(f: &std::fs::File, path: &Path, bytes: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let keep = bytes.min(len);
    let mut data = vec![0; keep as usize];
    f.read_exact_at(&mut data, len - keep)?;
    write_over(path, &data)?;
    Ok(RUNS_PER_LISTENER)
}

/// Replaces `path` with `data`: a temporary file, synced, renamed over it.
fn write_over(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("jsonl.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Rewrites `path` with its last [`RUNS_PER_LISTENER`] usable records (temporary
/// file, fsync, rename); returns how many.
fn compact(path: &Path, listener: &str) -> std::io::Result<usize> {
    let (data, cut) = read_end(path, MAX_FILE_BYTES)?;
    let (runs, _) = parse(listener, &data, cut);
    let mut out = Vec::new();
    for r in &runs {
        serde_json::to_writer(&mut out, r).expect("records serialize");
        out.push(b'\n');
    }
    write_over(path, &out)?;
    Ok(runs.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::observe::RunOutcome;

    fn record(listener: &str, id: u64) -> RunRecord {
        RunRecord {
            id,
            listener: listener.into(),
            route: "pages".into(),
            stage: Some(0),
            files: vec!["/s/a".into()],
            count: 1,
            started_ms: 1,
            duration_ms: 2,
            outcome: RunOutcome::Exited { code: 0 },
            cpu_usec: None,
            memory_peak: None,
            output: vec!["x".repeat(1000)],
        }
    }

    /// What `dir`'s file for `listener` holds, parsed.
    fn ids_in(dir: &Path, listener: &str) -> Vec<u64> {
        let data = std::fs::read(file(dir, listener)).unwrap();
        let (runs, dropped) = parse(listener, &data, false);
        assert_eq!(dropped, 0);
        runs.iter().map(|r| r.id).collect()
    }

    #[test]
    fn compaction_keeps_the_last_records_whole_whether_it_copies_bytes_or_parses() {
        let dir = tempfile::tempdir().unwrap();
        // A file from an earlier daemon: this writer does not know its lines, so its
        // first compaction parses it; later ones copy the last bytes it wrote.
        let mut old = Vec::new();
        for id in 0..150 {
            serde_json::to_writer(&mut old, &record("docs", id)).unwrap();
            old.push(b'\n');
        }
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(file(dir.path(), "docs"), &old).unwrap();
        let (_tx, rx) = mpsc::channel(1);
        let mut writer = Writer::new(dir.path().to_owned(), rx);
        let mut next = 150;
        for batch in [7, 300, 1, 450, 33] {
            let records: Vec<_> = (next..next + batch)
                .map(|id| Arc::new(record("docs", id)))
                .collect();
            writer.files.append(&records);
            next += batch;
            let ids = ids_in(dir.path(), "docs");
            assert!(
                ids.len() <= 2 * RUNS_PER_LISTENER + batch as usize,
                "{}",
                ids.len()
            );
            // Whole records, in order, ending with the last one written.
            assert_eq!(ids.last(), Some(&(next - 1)));
            assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
            assert!(ids.len() >= RUNS_PER_LISTENER.min(next as usize));
        }
    }

    #[test]
    fn the_history_read_back_is_held_to_a_total_budget_newest_files_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut sizes = Vec::new();
        for (i, listener) in ["old", "mid", "new"].into_iter().enumerate() {
            let mut data = Vec::new();
            for id in 0..10 {
                serde_json::to_writer(&mut data, &record(listener, id)).unwrap();
                data.push(b'\n');
            }
            let path = dir.path().join(format!("{listener}.jsonl"));
            std::fs::write(&path, &data).unwrap();
            let at =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 * (i as u64 + 1));
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(at)
                .unwrap();
            sizes.push(data.len() as u64);
        }
        // All of "new", half of "mid", none of "old".
        let all = load_within(dir.path(), sizes[2] + sizes[1] / 2);
        assert_eq!(all["new"].len(), 10);
        assert!((1..10).contains(&all["mid"].len()), "{}", all["mid"].len());
        assert!(!all.contains_key("old"));
        assert_eq!(load_within(dir.path(), MAX_TOTAL_BYTES).len(), 3);
    }

    #[test]
    fn one_listener_failing_to_save_does_not_flip_the_others_state() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where its file should be: every append to it fails.
        std::fs::create_dir(dir.path().join("bad.jsonl")).unwrap();
        let (_tx, rx) = mpsc::channel(1);
        let mut writer = Writer::new(dir.path().to_owned(), rx);
        let batch = [Arc::new(record("bad", 1)), Arc::new(record("good", 2))];
        writer.files.append(&batch);
        writer.files.append(&batch);
        assert_eq!(
            writer.files.failing.iter().collect::<Vec<_>>(),
            ["bad"],
            "only the listener whose file fails is failing"
        );
        let good = std::fs::read_to_string(dir.path().join("good.jsonl")).unwrap();
        assert_eq!(good.lines().count(), 2);
    }
}
