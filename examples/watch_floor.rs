//! Benchmark floor for watch setup: walks a tree and adds one inotify watch per
//! directory (the same mask as execlibd), nothing else. Prints the directories
//! watched, the elapsed milliseconds and the peak RSS in KiB.
//!
//! With `--stat`, it also `lstat`s every file (the floor of a start that must know
//! every file's state, such as a `catch_up` listener's). With `--events N`, after
//! that line it reads events until N files were deleted, then prints the CPU
//! time (user + system, ms) it spent from its first line on: the floor of what
//! reading those events costs.
//!
//! With `--no-watch` it adds no watch: with `--stat`, the floor of a rescan.
//!
//! Usage: `cargo run --release --example watch_floor -- DIR [--stat] [--no-watch] [--events N]`

use inotify::{EventMask, Inotify, WatchMask};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    ticks as f64 * 10.0 // USER_HZ is 100 on Linux
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(
        args.first()
            .expect("usage: watch_floor DIR [--stat] [--events N]"),
    );
    let stat = args.iter().any(|a| a == "--stat");
    let watch = !args.iter().any(|a| a == "--no-watch");
    let events: u64 = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(0);
    let start = Instant::now();
    let mut inotify = Inotify::init()?;
    let mut watches = inotify.watches();
    let mask = WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK;
    let mut stack = vec![root];
    let mut count = 0;
    while let Some(dir) = stack.pop() {
        if watch {
            watches.add(&dir, mask)?;
        }
        count += 1;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else if stat {
                std::hint::black_box(entry.metadata()?);
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
    std::io::stdout().flush()?;
    if events > 0 {
        let before = cpu_ms();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut deleted = 0;
        while deleted < events {
            for event in inotify.read_events_blocking(&mut buffer)? {
                if event.mask.contains(EventMask::DELETE) {
                    deleted += 1;
                }
            }
        }
        println!("{:.1}", cpu_ms() - before);
    }
    Ok(())
}
