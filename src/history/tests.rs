//! The history's bounds, its queries and its file: what is read back is what was
//! written, and a hostile file costs warnings, never the daemon.

use super::*;
use crate::protocol::observe::RunOutcome;

fn finished(listener: &str, route: &str, file: &str, code: i32) -> Finished {
    Finished {
        listener: listener.into(),
        route: route.into(),
        stage: Some(0),
        files: vec![file.into()],
        count: 1,
        started_ms: 1,
        duration_ms: 2,
        outcome: RunOutcome::Exited { code },
        usage: None,
        output: vec!["out".into()],
    }
}

#[test]
fn records_are_bounded_in_runs_files_and_output() {
    let h = History::default();
    for i in 0..RUNS_PER_LISTENER + 5 {
        h.record(finished("docs", "pages", &format!("/s/{i}"), 0));
    }
    h.record(finished("blog", "posts", "/b/x", 1));
    let all = HistoryQuery {
        n: Some(usize::MAX),
        ..Default::default()
    };
    assert_eq!(
        h.query(&all, &[]).len(),
        RUNS_PER_LISTENER + 1,
        "each listener keeps its own"
    );
    let mut batch = finished("docs", "pages", "/s/x", 0);
    batch.files = (0..50).map(|i| PathBuf::from(format!("/s/{i}"))).collect();
    batch.count = 50;
    batch.output = (0..100).map(|i| format!("{i:>1000}")).collect();
    let id = h.record(batch);
    let run = h.get(id).unwrap();
    assert_eq!((run.files.len(), run.count), (FILES_KEPT, 50));
    let bytes: usize = run.output.iter().map(|l| l.len() + 1).sum();
    assert!(
        bytes <= OUTPUT_BYTES && run.output.len() == 4,
        "{bytes} {}",
        run.output.len()
    );
    assert_eq!(run.output.last().unwrap().trim(), "99", "the last lines are kept");
}

#[test]
fn queries_filter_and_list_newest_first_without_output() {
    let h = History::default();
    h.record(finished("docs", "pages", "/s/a", 0));
    h.record(finished("docs", "pages", "/s/b", 2));
    h.record(finished("docs", "css", "/s/a", 0));
    h.record(finished("blog", "posts", "/b/a", 3));
    let q = |f: fn(&mut HistoryQuery)| {
        let mut query = HistoryQuery::default();
        f(&mut query);
        query
    };
    let ids = |runs: Vec<RunRecord>| runs.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(h.query(&q(|_| {}), &[])), [4, 3, 2, 1]);
    assert!(h.query(&q(|_| {}), &[]).iter().all(|r| r.output.is_empty()));
    assert_eq!(ids(h.query(&q(|q| q.failed = true), &[])), [4, 2]);
    assert_eq!(
        ids(h.query(&q(|q| q.listener = Some("docs".into())), &[])),
        [3, 2, 1]
    );
    assert_eq!(ids(h.query(&q(|q| q.route = Some("pages".into())), &[])), [2, 1]);
    assert_eq!(ids(h.query(&q(|q| q.n = Some(1)), &[])), [4]);
    let file = q(|q| q.file = Some("a".into()));
    assert_eq!(ids(h.query(&file, &["/s/a".into()])), [3, 1]);
    assert_eq!(h.get(2).unwrap().output, ["out"], "show has the output");
    assert_eq!(h.last_for("docs", "pages", Path::new("/s/a")).unwrap().id, 1);
    assert!(h.last_for("docs", "pages", Path::new("/s/c")).is_none());
    assert!(h.knows("blog") && !h.knows("gone"));
}

#[tokio::test]
async fn the_file_is_read_back_compacted_and_survives_hostile_content() {
    let state = tempfile::tempdir().unwrap();
    let (h, writer) = History::open(state.path());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    for i in 0..2 * RUNS_PER_LISTENER + 10 {
        h.record(finished("docs", "pages", &format!("/s/{i}"), 0));
    }
    let mut odd = finished("docs", "pages", "/s/odd", 0);
    odd.files =
        vec![<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(b"/s/\xff\n".to_vec()).into()];
    let odd_id = h.record(odd.clone());
    stop.cancel();
    task.await.unwrap();
    let path = file::dir(state.path()).join("docs.jsonl");
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert!(lines <= 2 * RUNS_PER_LISTENER, "compacted: {lines} lines");
    let (again, _writer) = History::open(state.path());
    let back = again.get(odd_id).expect("the last run is read back");
    assert_eq!(back.files, odd.files, "any bytes survive");
    let all = HistoryQuery {
        n: Some(usize::MAX),
        ..Default::default()
    };
    assert_eq!(again.query(&all, &[]).len(), RUNS_PER_LISTENER);
    assert_eq!(
        again.record(finished("docs", "pages", "/s/new", 0)),
        odd_id + 1,
        "ids go on"
    );

    // Garbage, a record of another listener, an oversized line, a torn last line.
    let mut hostile = b"not json\n{\"id\":1}\n".to_vec();
    let mut other = serde_json::to_vec(&back).unwrap();
    other = String::from_utf8(other)
        .unwrap()
        .replace("\"docs\"", "\"blog\"")
        .into_bytes();
    hostile.extend(other);
    hostile.push(b'\n');
    hostile.extend(vec![b'x'; file::MAX_RECORD + 1]);
    hostile.push(b'\n');
    hostile.extend(serde_json::to_vec(&back).unwrap());
    hostile.push(b'\n');
    hostile.extend(b"{\"id\":9,\"listener\":\"do");
    let (runs, dropped) = file::parse("docs", &hostile, false);
    assert_eq!((runs.len(), dropped), (1, 5));
    assert_eq!(runs[0], back);
    std::fs::write(&path, &hostile).unwrap();
    std::fs::write(file::dir(state.path()).join("..jsonl.tmp"), "x").unwrap();
    let (h, _writer) = History::open(state.path());
    assert_eq!(h.get(odd_id).map(|r| r.id), Some(odd_id));
    let (runs, dropped) = file::parse("docs", &hostile[5..], true);
    assert_eq!(
        (runs.len(), dropped),
        (1, 4),
        "a file read from its middle loses its first line"
    );
}

#[test]
fn a_record_whose_id_would_overflow_the_next_id_is_dropped() {
    let h = History::default();
    let id = h.record(finished("docs", "pages", "/s/a", 0));
    let mut record = serde_json::to_value(h.get(id).unwrap()).unwrap();
    let mut data = Vec::new();
    for id in [u64::MAX, MAX_ID + 1, MAX_ID] {
        record["id"] = id.into();
        data.extend(serde_json::to_vec(&record).unwrap());
        data.push(b'\n');
    }
    let (runs, dropped) = file::parse("docs", &data, false);
    assert_eq!(dropped, 2, "ids above MAX_ID are not the daemon's");
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [MAX_ID]);
}

#[test]
fn hostile_routes_reasons_and_paths_are_held_to_the_bounds() {
    let h = History::default();
    let mut run = finished("docs", &"é".repeat(ROUTE_BYTES), "/s/a", 0);
    run.outcome = RunOutcome::NotStarted {
        reason: "x".repeat(10 * REASON_BYTES),
    };
    let long = PathBuf::from(format!("/{}", "p".repeat(PATH_BYTES)));
    run.files = vec!["/s/a".into(), long, "/s/b".into()];
    run.count = 3;
    let r = h.get(h.record(run)).unwrap();
    assert!(
        r.route.len() <= ROUTE_BYTES && r.route.len() >= ROUTE_BYTES - 1,
        "{}",
        r.route.len()
    );
    let RunOutcome::NotStarted { reason } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(reason.len(), REASON_BYTES);
    assert_eq!(
        r.files,
        [PathBuf::from("/s/a"), "/s/b".into()],
        "a path over PATH_MAX is left out"
    );
    assert_eq!(r.count, 3);
    let mut over = r.clone();
    over.outcome = RunOutcome::OverMemory {
        reason: "m".repeat(REASON_BYTES + 1),
    };
    bound(&mut over);
    assert_eq!(over.outcome.describe().len(), REASON_BYTES);
}
