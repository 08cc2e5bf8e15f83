//! A stand-in for journald: a datagram socket that the daemon, run in a private
//! mount namespace, sees at `/run/systemd/journal/socket`; and a parser for the
//! native journal protocol it receives.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One journal entry: field name to value (the last value wins).
pub type Entry = HashMap<String, String>;

/// Receives on a thread of its own, as journald always drains its socket
/// (a full datagram queue would block the daemon's logging).
pub struct FakeJournal {
    pub dir: PathBuf,
    entries: Arc<Mutex<Vec<Entry>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeJournal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl FakeJournal {
    pub fn new(dir: &Path) -> Self {
        let dir = dir.join("journal");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = UnixDatagram::bind(dir.join("socket")).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let entries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, done) = (entries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    sink.lock().unwrap().push(parse(&buf[..n]));
                }
            }
        });
        FakeJournal { dir, entries, stop }
    }

    /// Every entry received so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }

    /// The command prefix that runs a program with this journal as the system journal.
    pub fn wrapper(&self) -> Vec<String> {
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
             mount --bind {} /run/systemd/journal && exec \"$@\"",
            self.dir.display()
        );
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Waits for an entry matching `pred`.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Entry) -> bool) -> Entry {
        let end = Instant::now() + super::DEADLINE;
        loop {
            if let Some(e) = self.entries.lock().unwrap().iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(
                Instant::now() < end,
                "no journal entry {what}; got {:#?}",
                self.entries()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Parses one native-protocol datagram: `NAME=value\n`, or `NAME\n` + u64 LE length + bytes + `\n`.
pub fn parse(mut data: &[u8]) -> Entry {
    let mut entry = Entry::new();
    while !data.is_empty() {
        let Some(nl) = data.iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let name = String::from_utf8_lossy(&line[..eq]).into_owned();
            entry.insert(name, String::from_utf8_lossy(&line[eq + 1..]).into_owned());
            data = &data[nl + 1..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let rest = &data[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            entry.insert(name, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            data = &rest[8 + len + 1..];
        }
    }
    entry
}
