//! Benchmark floor for watch setup: walks a tree and adds one inotify watch per
//! directory (the same mask as execlibd), nothing else. Prints the directories
//! watched, the elapsed milliseconds and the peak RSS in KiB.
//!
//! Usage: `cargo run --release --example watch_floor -- DIR`

use inotify::{Inotify, WatchMask};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).expect("usage: watch_floor DIR"));
    let start = Instant::now();
    let inotify = Inotify::init()?;
    let mut watches = inotify.watches();
    let mask = WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK;
    let mut stack = vec![root];
    let mut count = 0;
    while let Some(dir) = stack.pop() {
        watches.add(&dir, mask)?;
        count += 1;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: 0 kB");
    println!(
        "{count} {elapsed:.1} {}",
        rss.split_whitespace().nth(1).unwrap_or("0")
    );
    Ok(())
}
