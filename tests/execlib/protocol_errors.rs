//! Bad requests get clear JSON errors (or a closed connection) while other
//! clients are served meanwhile.

use crate::support::*;

#[test]
fn each_bad_request_gets_a_clear_error_and_others_are_served() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    // A client that connects and never sends anything, held open throughout.
    let mut silent = Client::connect(&daemon.socket);

    let mut client = Client::connect(&daemon.socket);
    let cases: [(&[u8], &str); 7] = [
        (b"{\"cmd\":\"listeners\"", "bad_request"),
        (b"{\"cmd\":\"dance\"}", "unknown_command"),
        (b"{\"cmd\":\"start\"}", "bad_request"),
        (b"{\"cmd\":\"start\",\"listener\":\"nope\"}", "unknown_listener"),
        (b"\x00\xff\xfe garbage \x80", "bad_request"),
        (b"[\"cmd\"]", "bad_request"),
        (b"{\"cmd\":42}", "bad_request"),
    ];
    for (line, code) in cases {
        client.send_line(line);
        let reply = client
            .reply()
            .expect("the connection stays open after a bad request");
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(
            reply["error"]["code"],
            code,
            "{}: {reply}",
            String::from_utf8_lossy(line)
        );
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }
    client.send_line(br#"{"cmd":"status"}"#);
    assert_eq!(
        client.reply().unwrap()["ok"],
        true,
        "the same connection still works"
    );

    // Over 64 KiB on one line: an error, then the connection is closed.
    let mut big = Client::connect(&daemon.socket);
    big.send_line(&vec![b'x'; 70 * 1024]);
    assert_eq!(big.reply().unwrap()["error"]["code"], "too_large");
    assert!(big.reply().is_none(), "closed after too_large");

    // Meanwhile another client is served, while the silent one still holds its connection.
    assert_eq!(daemon.request(r#"{"cmd":"listeners"}"#)["ok"], true);
    // The silent client is told and closed after the idle timeout (1 s in these tests).
    assert_eq!(silent.reply().unwrap()["error"]["code"], "timeout");
    assert!(silent.reply().is_none());
    assert_eq!(daemon.request(r#"{"cmd":"status"}"#)["ok"], true, "still serving");
}

#[test]
fn many_requests_on_one_connection() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    let mut client = Client::connect(&daemon.socket);
    client.send_line(b"{\"cmd\":\"status\"}\n{\"cmd\":\"listeners\"}");
    assert!(client.reply().unwrap()["uptime_ms"].is_u64());
    assert!(client.reply().unwrap()["listeners"].is_array());
}

#[test]
fn requests_during_shutdown_are_refused_clearly() {
    let sandbox = Sandbox::new();
    let job = "trap '' TERM; echo up > ../out/started; while :; do sleep 0.05; done";
    let config = sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 1500\n{}",
        one_route(job, "")
    ));
    let mut daemon = Daemon::start(&sandbox, &config);
    sandbox.write("src/a", "x");
    sandbox.wait_out("started");
    let mut client = Client::connect(&daemon.socket);
    client.send_line(br#"{"cmd":"shutdown"}"#);
    assert_eq!(client.reply().unwrap()["ok"], true, "shutdown is answered first");
    client.send_line(br#"{"cmd":"start","listener":"docs"}"#);
    assert_eq!(client.reply().unwrap()["error"]["code"], "shutting_down");
    assert_eq!(daemon.wait_exit().0.code(), Some(0));
}
