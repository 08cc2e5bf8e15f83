//! `[metrics]`: an address with a port of its own, refused where written otherwise.

use super::*;

#[test]
fn metrics_listen_is_optional_and_parsed() {
    assert_eq!(parse(MINIMAL).unwrap().metrics, None);
    let c = parse(&format!("[metrics]\nlisten = \"127.0.0.1:9187\"\n{MINIMAL}")).unwrap();
    let listen = c.metrics.unwrap().listen;
    assert_eq!(listen, "127.0.0.1:9187".parse().unwrap());
    let c = parse(&format!("[metrics]\nlisten = \"[::1]:9187\"\n{MINIMAL}")).unwrap();
    let metrics = c.metrics.unwrap();
    assert_eq!(metrics.listen.port(), 9187);
    assert_eq!(
        metrics.head_timeout,
        std::time::Duration::from_secs(10),
        "the default"
    );
    let c = parse(&format!(
        "[metrics]\nlisten = \"[::1]:0\"\nhead_timeout_ms = 1500\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(
        c.metrics.unwrap().head_timeout,
        std::time::Duration::from_millis(1500)
    );
}

#[test]
fn bad_metrics_addresses_are_refused_where_written() {
    let with = |section: &str| format!("{section}{MINIMAL}");
    assert_refused(&with("[metrics]\n"), (1, 1), &["[metrics] needs `listen`"]);
    assert_refused(
        &with("[metrics]\nlisten = \"localhost\"\n"),
        (2, 10),
        &["\"localhost\" is not an address"],
    );
    assert_refused(&with("[metrics]\nport = 9\n"), (2, 1), &["unknown field `port`"]);
    assert_refused(
        &with("[metrics]\nlisten = \"127.0.0.1:0\"\nhead_timeout_ms = 0\n"),
        (3, 19),
        &["head_timeout_ms must be at least 1"],
    );
}

#[test]
fn metrics_never_share_the_sites_port() {
    let site = |listen: &str, metrics: &str| {
        format!(
            "[server]\nroot = \"www\"\nlisten = \"{listen}\"\n[metrics]\nlisten = \"{metrics}\"\n{MINIMAL}"
        )
    };
    assert_refused(
        &site("127.0.0.1:8778", "127.0.0.1:8778"),
        (5, 10),
        &["the site's port", "[server] listen 127.0.0.1:8778"],
    );
    assert_refused(
        &site("0.0.0.0:8778", "127.0.0.1:8778"),
        (5, 10),
        &["the site's port"],
    );
    assert_refused(
        &site("127.0.0.1:8778", "0.0.0.0:8778"),
        (5, 10),
        &["the site's port"],
    );
    // Another address on the same port, or the same address on another port, is fine.
    assert!(parse(&site("127.0.0.1:8778", "127.0.0.2:8778")).is_ok());
    assert!(parse(&site("127.0.0.1:8778", "127.0.0.1:9187")).is_ok());
    // Port 0 is a free port each, never the same one.
    assert!(parse(&site("127.0.0.1:0", "127.0.0.1:0")).is_ok());
}
