//! Scheduler rules on paused tokio time: the pure state machine and the driver
//! with a fake launcher whose "jobs" sleep for a set time. Holds are in [`hold`].

mod hold;

use super::*;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const MS: Duration = Duration::from_millis(1);

fn timing(debounce: u64, delay: u64) -> Timing {
    Timing {
        debounce: MS * debounce as u32,
        delay: MS * delay as u32,
    }
}

fn submission(file: &str, kind: EventKind, t: Timing) -> Submission {
    Submission {
        key: (0, PathBuf::from(file)),
        file: PathBuf::from(file),
        kind,
        timing: t,
        order: Order::default(),
        gone_only: false,
    }
}

fn sub(file: &str, kind: EventKind, t: Timing) -> Input {
    Input::Submit(submission(file, kind, t))
}

/// A recorded run: when it started and ended (ms since the test began) and its kinds.
#[derive(Debug, Clone)]
struct Run {
    file: PathBuf,
    files: Vec<PathBuf>,
    start: u64,
    end: u64,
    kinds: String,
}

type Harness = (
    mpsc::Sender<Input>,
    Arc<Mutex<Vec<Run>>>,
    tokio::task::JoinHandle<()>,
);

/// Drives a scheduler whose jobs take `job_ms`; returns the sender and the run log.
fn harness(job_ms: u64) -> Harness {
    harness_limited(job_ms, 1000)
}

/// [`harness`] with at most `max_jobs` at once.
fn harness_limited(job_ms: u64, max_jobs: usize) -> Harness {
    harness_on(Scheduler::default(), job_ms, max_jobs)
}

/// [`harness_limited`] driving `sched`.
fn harness_on(sched: Scheduler, job_ms: u64, max_jobs: usize) -> Harness {
    let (tx, rx) = mpsc::channel(1 << 16);
    let log = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let runs = log.clone();
    let task = tokio::spawn(async move {
        drive(
            rx,
            sched,
            max_jobs,
            &CancellationToken::new(),
            move |work: Work| {
                let Work::Run(start) = work else {
                    unreachable!("no posts")
                };
                let runs = runs.clone();
                async move {
                    let begin = t0.elapsed().as_millis() as u64;
                    tokio::time::sleep(MS * job_ms as u32).await;
                    runs.lock().unwrap().push(Run {
                        file: start.key.1,
                        files: start.files,
                        start: begin,
                        end: t0.elapsed().as_millis() as u64,
                        kinds: start.kinds.to_string(),
                    });
                    true
                }
            },
        )
        .await
    });
    (tx, log, task)
}

/// Each run's file and kinds, in order.
fn files_and_kinds(log: &Arc<Mutex<Vec<Run>>>) -> Vec<(String, String)> {
    let runs = log.lock().unwrap();
    runs.iter()
        .map(|r| (r.file.display().to_string(), r.kinds.clone()))
        .collect()
}

async fn at(t0: Instant, ms: u64) {
    tokio::time::sleep_until(t0 + MS * ms as u32).await;
}

async fn finish(tx: mpsc::Sender<Input>, task: tokio::task::JoinHandle<()>, until: Instant) {
    tokio::time::sleep_until(until).await;
    drop(tx);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn burst_within_debounce_gives_one_run_after_the_window() {
    let (tx, log, task) = harness(10);
    let t0 = Instant::now();
    let t = timing(200, 30);
    for ms in [0, 50, 100, 150] {
        at(t0, ms).await;
        tx.try_send(sub("a", EventKind::Modify, t)).unwrap();
    }
    finish(tx, task, t0 + MS * 1000).await;
    let runs = log.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].start, 200);
    assert_eq!(runs[0].kinds, "modify");
}

#[tokio::test(start_paused = true)]
async fn delay_is_waited_after_the_last_change() {
    let (tx, log, task) = harness(10);
    let t0 = Instant::now();
    let t = timing(100, 80);
    for ms in [0, 90] {
        at(t0, ms).await;
        tx.try_send(sub("a", EventKind::Create, t)).unwrap();
    }
    at(t0, 95).await;
    tx.try_send(sub("a", EventKind::Modify, t)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let runs = log.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].start, 175, "last change at 95 + delay 80");
    assert_eq!(runs[0].kinds, "create,modify");
}

#[tokio::test(start_paused = true)]
async fn changes_during_a_run_give_exactly_one_more_run_after_it() {
    let (tx, log, task) = harness(300);
    let t0 = Instant::now();
    let t = timing(50, 10);
    tx.try_send(sub("a", EventKind::Modify, t)).unwrap();
    for ms in [100, 150, 200, 250] {
        at(t0, ms).await;
        tx.try_send(sub("a", EventKind::Modify, t)).unwrap();
    }
    finish(tx, task, t0 + MS * 2000).await;
    let runs = log.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!((runs[0].start, runs[0].end), (50, 350));
    assert_eq!(
        runs[1].start, 350,
        "pending since 100, due at 260; starts when the first ends"
    );
    assert!(runs[1].start >= runs[0].end, "never two runs of one file at once");
}

#[tokio::test(start_paused = true)]
async fn event_arriving_exactly_as_a_run_finishes_is_not_lost() {
    let (tx, log, task) = harness(100);
    let t0 = Instant::now();
    let t = timing(0, 0);
    tx.try_send(sub("a", EventKind::Modify, t)).unwrap();
    at(t0, 100).await; // the run ends at this very instant
    tx.try_send(sub("a", EventKind::Delete, t)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let runs = log.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1].start, 100);
    assert_eq!(runs[1].kinds, "delete");
}

#[tokio::test(start_paused = true)]
async fn different_files_run_concurrently_and_independently() {
    let (tx, log, task) = harness(100);
    let t0 = Instant::now();
    let t = timing(20, 0);
    tx.try_send(sub("a", EventKind::Modify, t)).unwrap();
    tx.try_send(sub("b", EventKind::Modify, t)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let mut runs = log.lock().unwrap().clone();
    runs.sort_by(|x, y| x.file.cmp(&y.file));
    assert_eq!(runs.iter().map(|r| r.start).collect::<Vec<_>>(), [20, 20]);
}

#[tokio::test(start_paused = true)]
async fn closing_the_channel_waits_for_running_jobs_and_drops_pending() {
    let (tx, log, task) = harness(500);
    let t0 = Instant::now();
    tx.try_send(sub("a", EventKind::Modify, timing(0, 0))).unwrap();
    at(t0, 10).await;
    tx.try_send(sub("a", EventKind::Modify, timing(0, 0))).unwrap();
    drop(tx);
    task.await.unwrap();
    assert_eq!(
        t0.elapsed(),
        MS * 500,
        "the driver returned when the running job ended"
    );
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[test]
fn pure_state_machine_tracks_queue_and_stale_timers() {
    let mut s = Scheduler::default();
    let t0 = Instant::now();
    let t = timing(100, 10);
    s.submit(submission("a", EventKind::Modify, t), t0);
    assert_eq!(s.next_wakeup(), Some(t0 + MS * 100));
    s.submit(submission("a", EventKind::Modify, t), t0 + MS * 95);
    assert!(
        s.take_due(t0 + MS * 100, usize::MAX).is_empty(),
        "extended by delay to 105"
    );
    assert_eq!(s.pending().count(), 1);
    let due = s.take_due(t0 + MS * 105, usize::MAX);
    assert_eq!(due.len(), 1);
    assert_eq!(s.pending().count(), 0);
    s.submit(submission("a", EventKind::Create, t), t0 + MS * 106);
    assert!(
        s.take_due(t0 + MS * 1000, usize::MAX).is_empty(),
        "running: no second run"
    );
    s.finished_with(&due[0].key, FrameStatus::Ok);
    let again = s.take_due(t0 + MS * 1000, usize::MAX);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].kinds.to_string(), "create");
    s.finished_with(&again[0].key, FrameStatus::Ok);
    assert_eq!(s.next_wakeup(), None);
}

#[tokio::test(start_paused = true)]
async fn max_jobs_limits_concurrency_and_keeps_arrival_order() {
    let (tx, log, task) = harness_limited(100, 2);
    let t0 = Instant::now();
    for (i, file) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        at(t0, i as u64).await;
        tx.try_send(sub(file, EventKind::Modify, timing(0, 0))).unwrap();
    }
    finish(tx, task, t0 + MS * 2000).await;
    let runs = log.lock().unwrap().clone();
    let order: Vec<_> = runs.iter().map(|r| r.file.to_str().unwrap().to_owned()).collect();
    assert_eq!(order, ["a", "b", "c", "d", "e"]);
    for r in &runs {
        let at_once = runs
            .iter()
            .filter(|o| o.start <= r.start && r.start < o.end)
            .count();
        assert!(at_once <= 2, "more than two running when {r:?} started: {runs:?}");
    }
    assert_eq!(runs[2].start, 100, "c waits for a slot");
}

#[tokio::test(start_paused = true)]
async fn regression_changes_while_a_run_waited_for_a_slot_gave_a_second_run() {
    // One slot, taken by "block" for 300 ms. "f" is due at 10 and waits for the slot;
    // it changes again at 50: one run at 300 takes both changes in, not two.
    let (tx, log, task) = harness_limited(300, 1);
    let t0 = Instant::now();
    tx.try_send(sub("block", EventKind::Modify, timing(0, 0)))
        .unwrap();
    at(t0, 10).await;
    tx.try_send(sub("f", EventKind::Create, timing(0, 0))).unwrap();
    at(t0, 50).await;
    tx.try_send(sub("f", EventKind::Modify, timing(0, 0))).unwrap();
    finish(tx, task, t0 + MS * 2000).await;
    let runs = log.lock().unwrap().clone();
    let f: Vec<_> = runs.iter().filter(|r| r.file == Path::new("f")).collect();
    assert_eq!(f.len(), 1, "{runs:?}");
    assert_eq!((f[0].start, f[0].kinds.as_str()), (300, "create,modify"));
}

#[tokio::test(start_paused = true)]
async fn regression_a_route_taking_no_deletes_ran_for_a_file_deleted_before_its_run() {
    let (tx, log, task) = harness(10);
    let t0 = Instant::now();
    let t = timing(100, 10);
    let gone = |file: &str| {
        Input::Submit(Submission {
            gone_only: true,
            ..submission(file, EventKind::Delete, t)
        })
    };
    // `sed -i`'s temporary, and a file written then removed: the route (create and
    // modify only) hears of each deletion, so neither runs.
    tx.try_send(sub("sedXyZ", EventKind::Create, t)).unwrap();
    tx.try_send(sub("sedXyZ", EventKind::Modify, t)).unwrap();
    tx.try_send(gone("sedXyZ")).unwrap();
    tx.try_send(sub("written", EventKind::Modify, t)).unwrap();
    tx.try_send(gone("written")).unwrap();
    // A deletion of a file with nothing pending starts nothing; one re-created runs.
    tx.try_send(gone("other")).unwrap();
    tx.try_send(sub("back", EventKind::Modify, t)).unwrap();
    tx.try_send(gone("back")).unwrap();
    tx.try_send(sub("back", EventKind::Create, t)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let ran = files_and_kinds(&log);
    assert_eq!(ran, [("back".to_owned(), "create".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn a_file_renamed_over_then_deleted_within_its_window_still_runs_its_delete() {
    let (tx, log, task) = harness(10);
    let t0 = Instant::now();
    let t = timing(100, 10);
    // mv new a.txt (over an a.txt that was there), then rm a.txt: a mirror must delete
    // its copy. A rename gives no sign whether the name existed, so it is no temporary.
    tx.try_send(sub("a.txt", EventKind::Move, t)).unwrap();
    tx.try_send(sub("a.txt", EventKind::Delete, t)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let ran = files_and_kinds(&log);
    assert_eq!(ran, [("a.txt".to_owned(), "delete,move".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn file_created_and_gone_within_its_window_runs_nothing() {
    let (tx, log, task) = harness(10);
    let t0 = Instant::now();
    let t = timing(100, 10);
    // sed -i's temporary: created, written, renamed away.
    for kind in [EventKind::Create, EventKind::Modify, EventKind::Delete] {
        tx.try_send(sub("sedXyZ123", kind, t)).unwrap();
    }
    // A file deleted and re-created (vim's save) does run.
    for kind in [EventKind::Delete, EventKind::Create, EventKind::Modify] {
        tx.try_send(sub("page.md", kind, t)).unwrap();
    }
    // A new file that is deleted after its run starts also runs (for its create).
    tx.try_send(sub("brief", EventKind::Create, t)).unwrap();
    at(t0, 105).await;
    tx.try_send(sub("brief", EventKind::Delete, t)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let mut runs: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.file.display(), r.kinds))
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        ["brief create", "brief delete", "page.md create,modify,delete"]
    );
}

#[tokio::test(start_paused = true)]
async fn unsettled_lists_files_until_their_runs_finish() {
    let (tx, _log, task) = harness_limited(100, 1);
    let t0 = Instant::now();
    let ask = |tx: &mpsc::Sender<Input>| {
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.try_send(Input::Unsettled(reply)).unwrap();
        answer
    };
    tx.try_send(sub("a", EventKind::Modify, timing(0, 0))).unwrap();
    tx.try_send(sub("b", EventKind::Modify, timing(50, 0))).unwrap();
    let names = |set: Unsettled| {
        let mut v: Vec<_> = set.into_keys().map(|p| p.display().to_string()).collect();
        v.sort();
        v
    };
    // Asked right after submitting: the channel is FIFO, so both are counted.
    assert_eq!(names(ask(&tx).await.unwrap()), ["a", "b"]);
    at(t0, 150).await; // a ran 0..100; b waits for the only slot, runs 100..200
    assert_eq!(names(ask(&tx).await.unwrap()), ["b"]);
    at(t0, 250).await;
    assert!(ask(&tx).await.unwrap().is_empty());
    finish(tx, task, t0 + MS * 300).await;
}

#[tokio::test(start_paused = true)]
async fn a_batch_runs_once_for_every_file_and_once_more_for_changes_during_it() {
    let (tx, log, task) = harness(100);
    let t0 = Instant::now();
    let batch = |file: &str, kind| {
        Input::Submit(Submission {
            key: (0, PathBuf::new()),
            file: PathBuf::from(file),
            kind,
            timing: timing(50, 0),
            order: Order::default(),
            gone_only: false,
        })
    };
    for i in 0..300 {
        tx.try_send(batch(&format!("f{i:03}"), EventKind::Modify))
            .unwrap();
    }
    // A temporary created and gone within the window is left out of the batch.
    tx.try_send(batch("sedTmp", EventKind::Create)).unwrap();
    tx.try_send(batch("sedTmp", EventKind::Delete)).unwrap();
    at(t0, 60).await; // the batch runs 50..150
    tx.try_send(batch("late", EventKind::Create)).unwrap();
    tx.try_send(batch("f000", EventKind::Modify)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let runs = log.lock().unwrap().clone();
    assert_eq!(
        runs.len(),
        2,
        "{:?}",
        runs.iter().map(|r| r.files.len()).collect::<Vec<_>>()
    );
    assert_eq!(runs[0].files.len(), 300);
    assert!(!runs[0].files.contains(&PathBuf::from("sedTmp")));
    assert_eq!(
        runs[1].start, 150,
        "changes during the run: exactly one more run, right after"
    );
    assert_eq!(runs[1].files, [PathBuf::from("f000"), PathBuf::from("late")]);
}

/// A run of a staged harness: route, file and start time.
type StagedRun = (usize, String, u64);

/// A recorded post: the frame's status, its files and when the post started.
type PostRun = (&'static str, String, u64);

/// The sender, the run log, the post log and the driver task.
type StagedHarness = (
    mpsc::Sender<Input>,
    Arc<Mutex<Vec<StagedRun>>>,
    Arc<Mutex<Vec<PostRun>>>,
    tokio::task::JoinHandle<()>,
);

/// Drives a scheduler whose jobs take 100 ms and fail when `fails(route, start_ms)`.
fn staged_harness(
    fails: fn(usize, u64) -> bool,
) -> (
    mpsc::Sender<Input>,
    Arc<Mutex<Vec<StagedRun>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, log, _, task) = staged_harness_with_posts(fails);
    (tx, log, task)
}

/// [`staged_harness`] with frames tracked; posts take no time and are logged too.
fn staged_harness_with_posts(fails: fn(usize, u64) -> bool) -> StagedHarness {
    let (tx, rx) = mpsc::channel(1 << 16);
    let log = Arc::new(Mutex::new(Vec::new()));
    let post_log = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let (runs, posts) = (log.clone(), post_log.clone());
    let task = tokio::spawn(async move {
        drive(
            rx,
            Scheduler::with_frames(),
            100,
            &CancellationToken::new(),
            move |work: Work| {
                let (runs, posts) = (runs.clone(), posts.clone());
                async move {
                    let start = match work {
                        Work::Run(start) => start,
                        Work::Post(frame) => {
                            let files: Vec<_> = frame.files.iter().map(|f| f.display().to_string()).collect();
                            let at = t0.elapsed().as_millis() as u64;
                            posts
                                .lock()
                                .unwrap()
                                .push((frame.status.as_str(), files.join(","), at));
                            return true;
                        }
                    };
                    let begin = t0.elapsed().as_millis() as u64;
                    let files: Vec<_> = start.files.iter().map(|f| f.display().to_string()).collect();
                    runs.lock().unwrap().push((start.key.0, files.join(","), begin));
                    tokio::time::sleep(MS * 100).await;
                    !fails(start.key.0, begin)
                }
            },
        )
        .await
    });
    (tx, log, post_log, task)
}

fn staged(route: usize, stage: u32, file: &str, batch: bool, cancel: bool) -> Input {
    Input::Submit(Submission {
        key: (
            route,
            if batch {
                PathBuf::new()
            } else {
                PathBuf::from(file)
            },
        ),
        file: PathBuf::from(file),
        kind: EventKind::Modify,
        timing: timing(0, 0),
        order: Order {
            stage,
            cancel_on_failure: cancel,
        },
        gone_only: false,
    })
}

#[tokio::test(start_paused = true)]
async fn a_later_stage_waits_for_the_earlier_stage_of_the_same_file_only() {
    let (tx, log, task) = staged_harness(|_, _| false);
    let t0 = Instant::now();
    // Earlier stages are submitted first, as the listener does.
    tx.try_send(staged(0, 0, "a", false, false)).unwrap();
    tx.try_send(staged(1, 1, "a", false, false)).unwrap();
    tx.try_send(staged(1, 1, "b", false, false)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let mut runs = log.lock().unwrap().clone();
    runs.sort();
    assert_eq!(
        runs,
        [(0, "a".into(), 0), (1, "a".into(), 100), (1, "b".into(), 0)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_stage_waits_for_earlier_runs_of_any_of_its_files() {
    let (tx, log, task) = staged_harness(|_, _| false);
    let t0 = Instant::now();
    tx.try_send(staged(0, 0, "a", false, false)).unwrap();
    tx.try_send(staged(1, 1, "a", true, false)).unwrap();
    at(t0, 50).await;
    tx.try_send(staged(0, 0, "b", false, false)).unwrap();
    tx.try_send(staged(1, 1, "b", true, false)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let runs = log.lock().unwrap().clone();
    let batch: Vec<_> = runs.iter().filter(|r| r.0 == 1).cloned().collect();
    assert_eq!(
        batch,
        [(1, "a,b".into(), 150)],
        "after b's stage-0 run ends at 150"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_skips_the_later_stage_for_this_occurrence_only() {
    // Route 0 fails on its first run only.
    let (tx, log, task) = staged_harness(|route, start| route == 0 && start < 200);
    let t0 = Instant::now();
    tx.try_send(staged(0, 0, "a", false, true)).unwrap();
    tx.try_send(staged(1, 1, "a", false, false)).unwrap();
    at(t0, 300).await; // the next change runs both stages again
    tx.try_send(staged(0, 0, "a", false, true)).unwrap();
    tx.try_send(staged(1, 1, "a", false, false)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let runs = log.lock().unwrap().clone();
    assert_eq!(
        runs,
        [(0, "a".into(), 0), (0, "a".into(), 300), (1, "a".into(), 400)]
    );
}

#[tokio::test(start_paused = true)]
async fn regression_a_failed_file_stayed_in_a_later_batch_when_another_file_changed_again() {
    // Route 0 (stage 0, cancel) fails for "bad"; route 2 (stage 0) converts "good";
    // route 1 is a stage-1 batch of both. "good" changes again while the first runs
    // go: its new occurrence stays in the batch, "bad"'s failed one leaves it.
    let (tx, log, task) = staged_harness(|route, _| route == 0);
    let t0 = Instant::now();
    tx.try_send(staged(0, 0, "bad", false, true)).unwrap();
    tx.try_send(staged(1, 1, "bad", true, false)).unwrap();
    tx.try_send(staged(2, 0, "good", false, true)).unwrap();
    tx.try_send(staged(1, 1, "good", true, false)).unwrap();
    at(t0, 30).await;
    tx.try_send(staged(2, 0, "good", false, true)).unwrap();
    tx.try_send(staged(1, 1, "good", true, false)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let runs = log.lock().unwrap().clone();
    let batch: Vec<_> = runs.iter().filter(|r| r.0 == 1).cloned().collect();
    assert_eq!(batch, [(1, "good".into(), 200)], "all runs: {runs:?}");
}

#[tokio::test(start_paused = true)]
async fn a_later_stage_held_by_a_dropped_temporary_still_runs() {
    let (tx, log, task) = staged_harness(|_, _| false);
    let t0 = Instant::now();
    let temp = |route: usize, stage: u32, batch: bool, kind| {
        Input::Submit(Submission {
            key: (
                route,
                if batch {
                    PathBuf::new()
                } else {
                    PathBuf::from("tmp")
                },
            ),
            file: PathBuf::from("tmp"),
            kind,
            timing: timing(50, 0),
            order: Order {
                stage,
                cancel_on_failure: false,
            },
            gone_only: false,
        })
    };
    // The batch (stage 1, no debounce) is held by the file's stage-0 entry, which is
    // dropped unrun at 50 (created and deleted): the batch must not wait forever.
    tx.try_send(temp(0, 0, false, EventKind::Create)).unwrap();
    tx.try_send(temp(0, 0, false, EventKind::Delete)).unwrap();
    tx.try_send(staged(1, 1, "tmp", true, false)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let runs = log.lock().unwrap().clone();
    assert_eq!(
        runs,
        [(1, "tmp".into(), 50)],
        "released when the temporary was dropped at 50"
    );
}

#[tokio::test(start_paused = true)]
async fn a_frame_ends_after_its_last_stage_and_once() {
    let (tx, _, posts, task) = staged_harness_with_posts(|_, _| false);
    let t0 = Instant::now();
    tx.try_send(staged(0, 0, "a", false, false)).unwrap();
    tx.try_send(staged(1, 1, "a", false, false)).unwrap();
    tx.try_send(staged(0, 0, "b", false, false)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    let mut posts = posts.lock().unwrap().clone();
    posts.sort();
    assert_eq!(
        posts,
        [("ok", "a".into(), 200), ("ok", "b".into(), 100)],
        "a's frame ends after its stage-1 run, b's after its only run"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_ends_the_frame_failed_without_the_later_stage() {
    let (tx, runs, posts, task) = staged_harness_with_posts(|route, _| route == 0);
    let t0 = Instant::now();
    tx.try_send(staged(0, 0, "a", false, true)).unwrap();
    tx.try_send(staged(1, 1, "a", false, false)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    assert_eq!(runs.lock().unwrap().clone(), [(0, "a".into(), 0)]);
    assert_eq!(posts.lock().unwrap().clone(), [("failed", "a".into(), 100)]);
}

#[tokio::test(start_paused = true)]
async fn a_failure_without_cancel_still_ends_the_frame_failed_after_the_later_stage() {
    let (tx, runs, posts, task) = staged_harness_with_posts(|route, _| route == 0);
    let t0 = Instant::now();
    tx.try_send(staged(0, 0, "a", false, false)).unwrap();
    tx.try_send(staged(1, 1, "a", false, false)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    assert_eq!(runs.lock().unwrap().len(), 2);
    assert_eq!(posts.lock().unwrap().clone(), [("failed", "a".into(), 200)]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_frame_gives_one_post_for_its_files() {
    let (tx, _, posts, task) = staged_harness_with_posts(|_, _| false);
    let t0 = Instant::now();
    for f in ["c", "a", "b"] {
        let Input::Submit(sub) = staged(0, 0, f, true, false) else {
            unreachable!()
        };
        let timing = timing(10, 0); // one window for the three
        tx.try_send(Input::Submit(Submission { timing, ..sub })).unwrap();
    }
    finish(tx, task, t0 + MS * 1000).await;
    assert_eq!(posts.lock().unwrap().clone(), [("ok", "a,b,c".into(), 110)]);
}

#[tokio::test(start_paused = true)]
async fn a_change_during_the_run_extends_the_frame() {
    let (tx, runs, posts, task) = staged_harness_with_posts(|_, _| false);
    let t0 = Instant::now();
    tx.try_send(staged(0, 0, "a", false, false)).unwrap();
    at(t0, 50).await;
    tx.try_send(staged(0, 0, "a", false, false)).unwrap();
    finish(tx, task, t0 + MS * 1000).await;
    assert_eq!(runs.lock().unwrap().len(), 2);
    assert_eq!(posts.lock().unwrap().clone(), [("ok", "a".into(), 200)]);
}

#[tokio::test(start_paused = true)]
async fn stopping_ends_open_frames_cancelled_and_temporaries_post_nothing() {
    let (tx, runs, posts, task) = staged_harness_with_posts(|_, _| false);
    let t0 = Instant::now();
    tx.try_send(staged(0, 0, "a", false, false)).unwrap();
    tx.try_send(staged(1, 1, "a", false, false)).unwrap();
    let temp = |kind| {
        Input::Submit(Submission {
            kind,
            ..submission("tmp", EventKind::Create, timing(1000, 0)) // still pending at the stop
        })
    };
    tx.try_send(temp(EventKind::Create)).unwrap();
    tx.try_send(temp(EventKind::Delete)).unwrap();
    at(t0, 50).await;
    drop(tx); // stop while a's stage 0 runs: its stage 1 is dropped
    task.await.unwrap();
    assert_eq!(runs.lock().unwrap().clone(), [(0, "a".into(), 0)]);
    assert_eq!(posts.lock().unwrap().clone(), [("cancelled", "a".into(), 100)]);
}

#[tokio::test(start_paused = true)]
async fn regression_a_run_waiting_for_a_slot_started_when_the_stop_ended_the_running_one() {
    let (tx, rx) = mpsc::channel(16);
    let stopping = CancellationToken::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (log, stop) = (seen.clone(), stopping.clone());
    let task = tokio::spawn(async move {
        drive(
            rx,
            Scheduler::with_frames(),
            1,
            &stop.clone(),
            move |work: Work| {
                let (log, stop) = (log.clone(), stop.clone());
                async move {
                    match work {
                        // A run lasts until the stop ends it, as a job does.
                        Work::Run(start) => {
                            log.lock().unwrap().push(format!("run {}", start.key.1.display()));
                            stop.cancelled().await;
                            false
                        }
                        Work::Post(end) => {
                            log.lock()
                                .unwrap()
                                .push(format!("post {:?} {:?}", end.status, end.files));
                            true
                        }
                    }
                }
            },
        )
        .await
    });
    let t0 = Instant::now();
    tx.try_send(sub("a", EventKind::Create, timing(0, 0))).unwrap();
    tx.try_send(sub("b", EventKind::Create, timing(0, 0))).unwrap();
    at(t0, 10).await; // a runs, b waits for the one slot
    stopping.cancel();
    at(t0, 20).await; // a has ended: its slot must not go to b
    drop(tx);
    task.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        ["run a", "post Cancelled [\"a\"]", "post Cancelled [\"b\"]"],
        "b never starts, and a's end is the stop's, not a failure"
    );
}

#[test]
fn frames_close_when_no_entry_has_work_for_the_file() {
    let mut s = Scheduler::with_frames();
    let t0 = Instant::now();
    let t = timing(0, 0);
    s.submit(submission("a", EventKind::Modify, t), t0);
    let due = s.take_due(t0, usize::MAX);
    s.submit(submission("a", EventKind::Modify, t), t0 + MS); // during the run
    assert!(s.finished_with(&due[0].key, FrameStatus::Ok).is_empty());
    assert!(
        s.take_frame_ends().is_empty(),
        "the change during the run is pending"
    );
    let again = s.take_due(t0 + MS * 2, usize::MAX);
    s.finished_with(&again[0].key, FrameStatus::Ok);
    let ends = s.take_frame_ends();
    assert_eq!(
        ends,
        [FrameEnd {
            files: vec![PathBuf::from("a")],
            status: FrameStatus::Ok
        }]
    );
    assert_eq!(s.frames.as_ref().unwrap().open_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn more_inputs_at_once_than_one_turn_takes_are_never_lost() {
    // Regression: the driver took up to QUEUE inputs a turn and dropped the one it had
    // just read past the last (5 of 20,000 files never ran after an overflow rescan).
    let (tx, log, task) = harness(1);
    let t0 = Instant::now();
    let count = crate::scheduler::QUEUE * 3 + 7;
    for i in 0..count {
        tx.try_send(sub(&format!("f{i}"), EventKind::Create, timing(0, 0)))
            .unwrap();
    }
    finish(tx, task, t0 + MS * 1000).await;
    let runs = log.lock().unwrap();
    let files: std::collections::BTreeSet<_> = runs.iter().map(|r| r.file.clone()).collect();
    assert_eq!(files.len(), count, "every submission ran");
}

#[tokio::test(start_paused = true)]
async fn a_job_that_panics_does_not_stop_the_driver_and_the_next_change_runs() {
    let (tx, rx) = mpsc::channel(16);
    let ends = Arc::new(Mutex::new(Vec::new()));
    let seen = ends.clone();
    let task = tokio::spawn(async move {
        drive(
            rx,
            Scheduler::default(),
            10,
            &CancellationToken::new(),
            move |work: Work| {
                let Work::Run(start) = work else {
                    unreachable!("no posts")
                };
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(start.key.1.clone());
                    if start.key.1.ends_with("boom") {
                        panic!("a job panicked");
                    }
                    true
                }
            },
        )
        .await
    });
    let t = timing(0, 0);
    tx.try_send(sub("boom", EventKind::Modify, t)).unwrap();
    tokio::time::sleep(MS * 10).await;
    tx.try_send(sub("after", EventKind::Modify, t)).unwrap();
    tokio::time::sleep(MS * 10).await;
    drop(tx);
    task.await.expect("the driver survives a job's panic");
    let ran: Vec<_> = ends
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(ran[1].ends_with("after"), "{ran:?}");
}

/// Regression: the listener's watcher moved to a thread of its own, and a file's
/// create and modify released at its close, sent one by one, reached the driver
/// apart: two runs with zero delay. Sent as one batch, they make one run however the
/// driver is timed.
#[tokio::test(start_paused = true)]
async fn a_files_create_and_modify_sent_as_one_batch_make_one_run_whatever_the_timing() {
    let zero = timing(0, 0);
    let apart = |file: &'static str| async move {
        let (tx, log, task) = harness(10);
        tx.try_send(sub(file, EventKind::Create, zero)).unwrap();
        // The driver takes the create (and starts its run) before the modify arrives.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tx.try_send(sub(file, EventKind::Modify, zero)).unwrap();
        finish(tx, task, Instant::now() + MS * 100).await;
        log.lock().unwrap().clone()
    };
    assert_eq!(apart("a").await.len(), 2, "sent apart, they are two runs");
    let (tx, log, task) = harness(10);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let both = vec![
        submission("a", EventKind::Create, zero),
        submission("a", EventKind::Modify, zero),
    ];
    tx.try_send(Input::Batch(both)).unwrap();
    finish(tx, task, Instant::now() + MS * 100).await;
    let runs = log.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].kinds, "create,modify");
}
