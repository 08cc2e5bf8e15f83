//! `hold_while` and `max_vcs_hold_ms`: defaults, values, and refusals where written.

use super::*;

#[test]
fn a_route_holds_for_git_by_default_for_a_minute() {
    let c = parse(MINIMAL).unwrap();
    let hold = &c.listeners[0].routes[0].vcs_hold;
    assert_eq!(hold.paths, HoldWhile::Git);
    assert_eq!(hold.max, Duration::from_millis(DEFAULT_MAX_VCS_HOLD_MS));
    assert_eq!(DEFAULT_MAX_VCS_HOLD_MS, 60_000);
}

#[test]
fn hold_while_names_other_paths_or_none() {
    let c = parse(&with_route_line(
        "hold_while = [\"work/.hg/wlock\", \"/run/deploy.lock\", \"src/../x\"]\n  max_vcs_hold_ms = 5000",
    ))
    .unwrap();
    let hold = &c.listeners[0].routes[0].vcs_hold;
    let expected = [
        "/etc/execlib/work/.hg/wlock",
        "/run/deploy.lock",
        "/etc/execlib/x",
    ];
    let expected = expected.iter().map(PathBuf::from).collect();
    assert_eq!(hold.paths, HoldWhile::Paths(expected));
    assert_eq!(hold.max, Duration::from_secs(5));
    let off = parse(&with_route_line("hold_while = []")).unwrap();
    assert_eq!(
        off.listeners[0].routes[0].vcs_hold.paths,
        HoldWhile::Paths(Vec::new())
    );
    let most = parse(&with_route_line("max_vcs_hold_ms = 3600000")).unwrap();
    assert_eq!(
        most.listeners[0].routes[0].vcs_hold.max,
        Duration::from_secs(3600)
    );
}

#[test]
fn bad_holds_are_refused_where_written() {
    assert_refused(
        &with_route_line("max_vcs_hold_ms = 0"),
        (6, 21),
        &["`max_vcs_hold_ms` must be at least 1", "hold_while = []"],
    );
    assert_refused(
        &with_route_line("max_vcs_hold_ms = 3600001"),
        (6, 21),
        &["at most 3600000 (an hour)"],
    );
    assert_refused(
        &with_route_line("max_vcs_hold_ms = -1"),
        (6, 21),
        &["invalid value"],
    );
    assert_refused(
        &with_route_line("hold_while = [\"a.lock\", \"\"]"),
        (6, 27),
        &["a `hold_while` path is empty"],
    );
    assert_refused(
        &with_route_line("hold_while = [\"a\\u0000.lock\"]"),
        (6, 17),
        &["a `hold_while` path contains a NUL byte"],
    );
    assert_refused(
        &with_route_line("hold_while = \".git/index.lock\""),
        (6, 16),
        &["invalid type: string", "expected a sequence"],
    );
    assert_refused(
        &with_route_line("hold_while = [1]"),
        (6, 17),
        &["invalid type: integer"],
    );
}
