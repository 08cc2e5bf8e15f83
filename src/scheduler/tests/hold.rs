//! Holds on paused time: due runs wait while a hold path exists, go once it has been
//! gone and the tree quiet for the settle time, and never wait past the maximum. The
//! disk is a fake: a set of existing paths, with a count of the looks.

use super::*;
use crate::scheduler::hold::{POLL, SETTLE};
use std::collections::HashMap;

const LOCK: &str = "/repo/.git/index.lock";

/// The fake disk: the paths that exist (each with its file's identity), how many
/// looks were taken, and the files made so far.
#[derive(Clone, Default)]
struct Disk(Arc<Mutex<DiskState>>);

/// The paths that exist, with their files' identities; looks taken; files made.
type DiskState = (HashMap<PathBuf, u128>, usize, u128);

impl Disk {
    /// Makes a new file at `path` (another identity each time).
    fn create(&self, path: &str) {
        let mut disk = self.0.lock().unwrap();
        disk.2 += 1;
        let id = disk.2;
        disk.0.insert(path.into(), id);
    }

    fn remove(&self, path: &str) {
        self.0.lock().unwrap().0.remove(Path::new(path));
    }

    fn looks(&self) -> usize {
        self.0.lock().unwrap().1
    }

    /// A scheduler whose route 0 waits while [`LOCK`] exists (at most `max_ms`); its
    /// other routes are never held.
    fn scheduler(&self, max_ms: u64) -> Scheduler {
        self.holding(Scheduler::default(), max_ms)
    }

    /// `sched` with [`Disk::scheduler`]'s hold.
    fn holding(&self, sched: Scheduler, max_ms: u64) -> Scheduler {
        let disk = self.clone();
        let spec = HoldSpec {
            label: "git work tree /repo (route 0)".into(),
            paths: vec![LOCK.into()],
            max: MS * max_ms as u32,
        };
        sched.with_holds(Holds {
            gates: vec![(spec, vec![0])],
            probe: Box::new(move |path| {
                let mut disk = disk.0.lock().unwrap();
                disk.1 += 1;
                disk.0.get(path).copied()
            }),
        })
    }
}

/// A change of `file` for `route`; a batch route's key is its route alone.
fn change(route: usize, file: &str, batch: bool) -> Input {
    let key = if batch {
        PathBuf::new()
    } else {
        PathBuf::from(file)
    };
    Input::Submit(Submission {
        key: (route, key),
        ..submission(file, EventKind::Modify, timing(50, 10))
    })
}

fn starts(log: &Arc<Mutex<Vec<Run>>>) -> Vec<(String, u64)> {
    let runs = log.lock().unwrap();
    runs.iter()
        .map(|r| (r.file.display().to_string(), r.start))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_due_run_waits_for_the_lock_to_be_gone_and_settled() {
    let disk = Disk::default();
    disk.create(LOCK);
    let (tx, log, task) = harness_on(disk.scheduler(60_000), 10, 10);
    let t0 = Instant::now();
    tx.try_send(change(0, "a", false)).unwrap();
    at(t0, 290).await;
    assert!(log.lock().unwrap().is_empty(), "due at 50, held");
    disk.remove(LOCK);
    finish(tx, task, t0 + MS * 1000).await;
    // Looks every 50 ms: gone at 300, gone for SETTLE (100 ms) at 400.
    assert_eq!(POLL + SETTLE, MS * 150);
    assert_eq!(starts(&log), [("a".to_owned(), 400)]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_held_through_an_operation_runs_once_with_every_file() {
    let disk = Disk::default();
    disk.create(LOCK);
    let (tx, log, task) = harness_on(disk.scheduler(60_000), 10, 10);
    let t0 = Instant::now();
    // The operation writes a file every 40 ms (more than the 10 ms delay): route 1, not
    // held, runs in the middle of it; route 0 waits for its end.
    for i in 0..10 {
        at(t0, 40 * i).await;
        let file = format!("f{i}");
        tx.try_send(change(0, &file, true)).unwrap();
        tx.try_send(change(1, &file, true)).unwrap();
    }
    at(t0, 380).await;
    disk.remove(LOCK);
    finish(tx, task, t0 + MS * 2000).await;
    let runs = log.lock().unwrap().clone();
    let held: Vec<&Run> = runs.iter().filter(|r| r.files.len() == 10).collect();
    assert!(runs.len() > 2, "route 1 ran during the operation: {runs:?}");
    assert_eq!(held.len(), 1, "{runs:?}");
    // The last change came at 360, the lock was gone at 400: settled at 500.
    assert_eq!(held[0].start, 500);
}

#[tokio::test(start_paused = true)]
async fn changes_after_the_lock_is_gone_keep_the_hold_until_the_tree_is_quiet() {
    let disk = Disk::default();
    disk.create(LOCK);
    let (tx, log, task) = harness_on(disk.scheduler(60_000), 10, 10);
    let t0 = Instant::now();
    tx.try_send(change(0, "f0", true)).unwrap();
    at(t0, 90).await;
    disk.remove(LOCK);
    // The operation's last events, read late: every 60 ms until 390.
    for i in 1..=6 {
        at(t0, 30 + 60 * i).await;
        tx.try_send(change(0, &format!("f{i}"), true)).unwrap();
    }
    finish(tx, task, t0 + MS * 2000).await;
    let runs = log.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].files.len(), 7);
    assert_eq!(
        runs[0].start, 500,
        "the first look 100 ms after the last change (390)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hold_ends_at_its_maximum_and_its_paths_then_hold_nothing_until_gone() {
    let disk = Disk::default();
    disk.create(LOCK);
    let (tx, log, task) = harness_on(disk.scheduler(1000), 10, 10);
    let t0 = Instant::now();
    tx.try_send(change(0, "a", false)).unwrap(); // due at 50, held until 1050
    at(t0, 2000).await;
    tx.try_send(change(0, "b", false)).unwrap(); // the lock is stale: runs at 2050
    at(t0, 2500).await;
    disk.remove(LOCK);
    tx.try_send(change(0, "c", false)).unwrap(); // due at 2550: seen gone, so live again
    at(t0, 2700).await;
    disk.create(LOCK);
    tx.try_send(change(0, "d", false)).unwrap(); // a new operation: held
    at(t0, 2790).await;
    disk.remove(LOCK);
    finish(tx, task, t0 + MS * 4000).await;
    let expected = [("a", 1050), ("b", 2050), ("c", 2550), ("d", 2900)];
    let expected: Vec<(String, u64)> = expected.iter().map(|(f, t)| (f.to_string(), *t)).collect();
    assert_eq!(starts(&log), expected);
}

#[tokio::test(start_paused = true)]
async fn regression_a_new_lock_where_a_stale_one_was_removed_unseen_holds_again() {
    let disk = Disk::default();
    disk.create(LOCK);
    let (tx, log, task) = harness_on(disk.scheduler(1000), 10, 10);
    let t0 = Instant::now();
    tx.try_send(change(0, "a", false)).unwrap(); // due at 50, held until 1050: stale
    at(t0, 1500).await;
    // Removed and made again by a new operation, with no run due to see it gone.
    disk.remove(LOCK);
    disk.create(LOCK);
    tx.try_send(change(0, "b", false)).unwrap(); // due at 1550: a new lock, held
    at(t0, 1790).await;
    disk.remove(LOCK);
    finish(tx, task, t0 + MS * 4000).await;
    let expected = [("a", 1050), ("b", 1900)];
    let expected: Vec<(String, u64)> = expected.iter().map(|(f, t)| (f.to_string(), *t)).collect();
    assert_eq!(starts(&log), expected);
}

#[tokio::test(start_paused = true)]
async fn routes_without_a_hold_never_look_and_held_runs_show_as_held() {
    let disk = Disk::default();
    let (tx, log, task) = harness_on(disk.scheduler(60_000), 10, 1000);
    let t0 = Instant::now();
    for i in 0..100 {
        tx.try_send(change(1, &format!("x{i}"), false)).unwrap();
    }
    at(t0, 100).await;
    assert_eq!(log.lock().unwrap().len(), 100);
    assert_eq!(disk.looks(), 0, "no route with a hold was due");
    // A hundred due runs of the held route at once: one look.
    for i in 0..100 {
        tx.try_send(change(0, &format!("y{i}"), false)).unwrap();
    }
    at(t0, 170).await;
    assert_eq!((log.lock().unwrap().len(), disk.looks()), (200, 1));
    disk.create(LOCK);
    tx.try_send(change(0, "z", false)).unwrap(); // due at 220
    at(t0, 250).await;
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.try_send(Input::Queued(reply)).unwrap();
    let queued = answer.await.unwrap();
    assert_eq!(
        queued,
        [Queued {
            key: (0, PathBuf::from("z")),
            state: "held"
        }]
    );
    disk.remove(LOCK);
    finish(tx, task, t0 + MS * 1000).await;
    assert_eq!(log.lock().unwrap().len(), 201);
}

#[test]
fn notices_say_when_a_hold_starts_and_ends_and_how_long_it_lasted() {
    let disk = Disk::default();
    disk.create(LOCK);
    let mut sched = disk.scheduler(60_000);
    let t0 = Instant::now();
    let Input::Submit(sub) = change(0, "a", false) else {
        unreachable!()
    };
    sched.submit(sub, t0);
    assert!(sched.take_due(t0 + MS * 50, usize::MAX).is_empty());
    let label = "git work tree /repo (route 0)".to_owned();
    let started = HoldNotice::Started {
        label: label.clone(),
        present: vec![LOCK.into()],
    };
    assert_eq!(sched.take_hold_notices(), [started]);
    assert_eq!(sched.next_wakeup(), Some(t0 + MS * 100));
    disk.remove(LOCK);
    for ms in [100, 150] {
        assert!(sched.take_due(t0 + MS * ms, usize::MAX).is_empty());
    }
    assert!(sched.take_hold_notices().is_empty());
    assert_eq!(sched.take_due(t0 + MS * 200, usize::MAX).len(), 1);
    let ended = HoldNotice::Ended {
        label,
        held: MS * 150,
        runs: 1,
    };
    assert_eq!(sched.take_hold_notices(), [ended]);
    assert_eq!(sched.next_wakeup(), None);
}

#[test]
fn stopping_drops_held_runs_and_ends_their_frames_cancelled() {
    let disk = Disk::default();
    disk.create(LOCK);
    let mut sched = disk.holding(Scheduler::with_frames(), 60_000);
    let t0 = Instant::now();
    let Input::Submit(sub) = change(0, "a", false) else {
        unreachable!()
    };
    sched.submit(sub, t0);
    assert!(sched.take_due(t0 + MS * 50, usize::MAX).is_empty());
    assert!(sched.is_held(&(0, PathBuf::from("a"))));
    sched.stop();
    let cancelled = FrameEnd {
        files: vec![PathBuf::from("a")],
        status: FrameStatus::Cancelled,
    };
    assert_eq!(sched.take_frame_ends(), [cancelled]);
    assert!(!sched.is_held(&(0, PathBuf::from("a"))));
    assert_eq!(sched.next_wakeup(), None, "no more looks");
}
