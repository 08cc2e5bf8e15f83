//! LiveReload over a real WebSocket client: the handshake, what each change sends
//! to whom, misbehaving clients, and the close at shutdown.

use crate::support::web::*;
use crate::support::*;

fn site() -> (Sandbox, Daemon, String) {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "idle_timeout_ms = 1000", &one_route("true", ""));
    for page in ["index.html", "a.html", "b.html", "style.css"] {
        sandbox.write(&format!("public/{page}"), "v1");
    }
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    (sandbox, daemon, addr)
}

fn clients(daemon: &Daemon) -> u64 {
    daemon.request(r#"{"cmd":"status"}"#)["server"]["livereload_clients"]
        .as_u64()
        .unwrap()
}

#[test]
fn handshake_answers_hello_with_protocol_7() {
    let (_sandbox, daemon, addr) = site();
    let mut client = LrClient::connect(&addr);
    client.send(r#"{"command":"hello","protocols":["http://livereload.com/protocols/official-7"]}"#);
    let hello = client.recv().unwrap();
    assert_eq!(
        hello,
        serde_json::json!({"command":"hello","protocols":["http://livereload.com/protocols/official-7"],"serverName":"execlib"})
    );
    eventually("the client to be counted", || {
        (clients(&daemon) == 1).then_some(())
    });
}

/// Repeats `change` until `client` hears a reload (its `info` may still be in flight
/// when the first change lands); returns the path reloaded.
fn until_reload(client: &mut LrClient, mut change: impl FnMut()) -> String {
    client.set_timeout(std::time::Duration::from_millis(200));
    let path = eventually("a reload", || {
        change();
        client.recv().map(|m| m["path"].as_str().unwrap().to_owned())
    });
    client.set_timeout(DEADLINE);
    path
}

#[test]
fn a_page_change_reloads_only_the_clients_showing_it() {
    let (sandbox, _daemon, addr) = site();
    let mut on_a = LrClient::on_page(&addr, "/a");
    let mut on_b = LrClient::on_page(&addr, "/b.html");
    let mut on_home = LrClient::on_page(&addr, "/");
    // Modified in place: the client on /a (that is /a.html) hears it.
    let reloaded = until_reload(&mut on_a, || sandbox.write("public/a.html", "v2"));
    assert_eq!(reloaded, "/a.html");
    // Renamed over, as generators write: the client on / (that is /index.html) hears it.
    let reloaded = until_reload(&mut on_home, || {
        sandbox.write("public/tmp-index", "v2");
        std::fs::rename(
            sandbox.path("public/tmp-index"),
            sandbox.path("public/index.html"),
        )
        .unwrap();
    });
    assert_eq!(reloaded, "/index.html");
    // Created: nobody shows /new.html, so nobody hears it. A stylesheet goes to everyone:
    // the first thing b hears is the stylesheet, neither a.html, index.html nor new.html.
    sandbox.write("public/new.html", "x");
    sandbox.write("public/style.css", "v2");
    let message = on_b.recv().unwrap();
    assert_eq!(
        message,
        serde_json::json!({"command":"reload","path":"/style.css","liveCSS":true,"liveImg":true})
    );
    // a may still hear reloads of a.html from the repeated writes above, then the stylesheet.
    let mut heard = Vec::new();
    while let Some(message) = on_a.recv() {
        heard.push(message["path"].as_str().unwrap().to_owned());
        if heard.last().unwrap() == "/style.css" {
            break;
        }
    }
    assert_eq!(
        heard.last().map(String::as_str),
        Some("/style.css"),
        "a hears the stylesheet: {heard:?}"
    );
    assert!(
        heard[..heard.len() - 1].iter().all(|p| p == "/a.html"),
        "a hears only a.html before it: {heard:?}"
    );
}

#[test]
fn regression_a_page_changed_before_its_client_names_it_reloads_when_it_does() {
    // Seen in the browser test under load: a save right as the page's client
    // connected (its `info` still on its way) reached no one; the page stayed stale.
    let (sandbox, _daemon, addr) = site();
    let mut client = LrClient::connect(&addr);
    client.send(r#"{"command":"hello","protocols":["http://livereload.com/protocols/official-7"]}"#);
    assert_eq!(client.recv().expect("the server's hello")["command"], "hello");
    sandbox.write("public/a.html", "v2");
    sandbox.write("public/style.css", "v2");
    // A stylesheet goes to every client: once it is here, the page's change was handled.
    assert_eq!(client.recv().expect("the stylesheet")["path"], "/style.css");
    let info = serde_json::json!({"command": "info", "plugins": {}, "url": format!("http://{addr}/a")});
    client.send(&info.to_string());
    assert_eq!(client.recv().expect("the page's reload")["path"], "/a.html");
}

#[test]
fn regression_a_page_whose_name_is_percent_encoded_in_its_url_reloads() {
    // Browsers report `location.href`, encoded; it was compared raw with the changed
    // file's name, so `my page.html` and `café.html` never reloaded their clients.
    let (sandbox, _daemon, addr) = site();
    sandbox.write("public/my page.html", "v1");
    sandbox.write("public/café.html", "v1");
    let mut spaced = LrClient::on_page(&addr, "/my%20page.html");
    let mut accented = LrClient::on_page(&addr, "/caf%C3%A9");
    let reloaded = until_reload(&mut spaced, || sandbox.write("public/my page.html", "v2"));
    assert_eq!(reloaded, "/my page.html");
    let reloaded = until_reload(&mut accented, || sandbox.write("public/café.html", "v2"));
    assert_eq!(reloaded, "/café.html");
}

#[test]
fn a_created_page_reloads_its_client() {
    let (sandbox, _daemon, addr) = site();
    let mut on_new = LrClient::on_page(&addr, "/fresh.html");
    let reloaded = until_reload(&mut on_new, || {
        // Created anew each time, never modified in place.
        let _ = std::fs::remove_file(sandbox.path("public/fresh.html"));
        sandbox.write("public/fresh.html", "x");
    });
    assert_eq!(reloaded, "/fresh.html");
}

#[test]
fn garbage_and_silent_clients_are_closed_without_affecting_others() {
    let (sandbox, daemon, addr) = site();
    let mut good = LrClient::on_page(&addr, "/a.html");
    let mut garbage = LrClient::on_page(&addr, "/b.html");
    garbage.send("this is not json");
    assert_eq!(garbage.close_code(), Some(1003));
    let mut no_hello = LrClient::connect(&addr);
    no_hello.send(r#"{"command":"info","url":"http://x/a.html"}"#);
    assert_eq!(no_hello.close_code(), Some(1002));
    let mut silent = LrClient::connect(&addr);
    assert_eq!(
        silent.close_code(),
        Some(1002),
        "closed after the 1 s hello timeout"
    );
    sandbox.write("public/a.html", "v2");
    assert_eq!(good.recv().unwrap()["path"], "/a.html");
    eventually("only the good client left", || {
        (clients(&daemon) == 1).then_some(())
    });
}

#[test]
fn shutdown_closes_clients_with_going_away() {
    let (_sandbox, mut daemon, addr) = site();
    let mut client = LrClient::on_page(&addr, "/");
    eventually("the client to be counted", || {
        (clients(&daemon) == 1).then_some(())
    });
    daemon.signal(libc::SIGTERM);
    assert_eq!(client.close_code(), Some(1001));
    assert_eq!(daemon.wait_exit().0.code(), Some(0));
    assert!(
        daemon.log().contains("LiveReload clients closed clients=1"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_build_writing_pages_for_two_seconds_reloads_each_client_once_after_it_ends() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("content")).unwrap();
    // The build rewrites the home page and writes 50 pages over about 2 s, then says
    // it is done (outside the site).
    let build = r#"for i in $(seq 1 50); do echo "v$i" > ../public/index.html; echo "$i" > ../public/p$i.html; sleep 0.04; done; touch ../out/done"#;
    let listener = build_route(build);
    let config = site_config(&sandbox, "", &listener);
    sandbox.write("public/index.html", "v0");
    sandbox.write("public/p7.html", "v0");
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let mut home = LrClient::on_page(&addr, "/");
    let mut page = LrClient::on_page(&addr, "/p7.html");
    eventually("both clients counted", || (clients(&daemon) == 2).then_some(()));
    sandbox.write("content/post.md", "edited");
    for (client, path) in [(&mut home, "/index.html"), (&mut page, "/p7.html")] {
        let message = client.recv().expect("a reload");
        assert_eq!(message["path"], path, "{message}");
        assert!(sandbox.read("out/done").is_some(), "told before the build ended");
    }
    // Nothing more: the build's changes went out once, together.
    for client in [&mut home, &mut page] {
        client.set_timeout(std::time::Duration::from_millis(800));
        assert_eq!(client.recv(), None, "a second reload");
    }
}

#[test]
fn a_quick_build_after_a_quiet_spell_reloads_each_client_once() {
    // A build that writes its pages at once and exits before they are read: its
    // first page must not go out alone ahead of the rest (a change after a quiet
    // spell goes out at once, but not one that came with a build).
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("content")).unwrap();
    // A stylesheet first: alone, it would reach every client as a message of its own.
    let build = r#"echo "h1{}" > ../public/a.css; for i in $(seq 1 40); do echo "v$i" > ../public/p$i.html; done; echo v1 > ../public/index.html"#;
    let config = site_config(&sandbox, "", &build_route(build));
    sandbox.write("public/index.html", "v0");
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let mut home = LrClient::on_page(&addr, "/");
    eventually("the client counted", || (clients(&daemon) == 1).then_some(()));
    for round in 0..3 {
        sandbox.write("content/post.md", &format!("edit {round}"));
        let message = home.recv().expect("a reload");
        assert_eq!(message["path"], "/index.html", "{message}");
        home.set_timeout(std::time::Duration::from_millis(600));
        assert_eq!(home.recv(), None, "a second reload for one build");
        home.set_timeout(DEADLINE);
    }
}

#[test]
fn changes_made_with_no_build_running_go_out_at_once() {
    let (sandbox, _daemon, addr) = site();
    let mut on_a = LrClient::on_page(&addr, "/a.html");
    let started = std::time::Instant::now();
    let reloaded = until_reload(&mut on_a, || sandbox.write("public/a.html", "v2"));
    assert_eq!(reloaded, "/a.html");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn a_save_after_a_quiet_spell_goes_out_at_once_and_saves_right_after_it_are_gathered() {
    use std::time::{Duration, Instant};
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("public")).unwrap();
    for file in ["index.html", "a.css", "b.css", "c.css"] {
        sandbox.write(&format!("public/{file}"), "v1");
    }
    let delay = Duration::from_millis(1500);
    let config = sandbox.config(&format!(
        "[daemon]\nshutdown_grace_ms = 2000\n[server]\nlisten = \"127.0.0.1:0\"\nroot = \"public\"\ndelay_ms = {}\n{}",
        delay.as_millis(),
        one_route("true", "")
    ));
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let mut client = LrClient::on_page(&addr, "/");
    eventually("the client counted", || (clients(&daemon) == 1).then_some(()));
    // A save after a quiet spell: written whole, so told at once, not delay_ms later.
    let saved = Instant::now();
    sandbox.write("public/a.css", "v2");
    assert_eq!(client.recv().expect("a reload")["path"], "/a.css");
    assert!(
        saved.elapsed() < delay * 2 / 3,
        "told after {:?}",
        saved.elapsed()
    );
    // Two more saves within delay_ms of it: gathered, and told together once
    // delay_ms has passed after the last.
    sandbox.write("public/b.css", "v2");
    std::thread::sleep(Duration::from_millis(200));
    sandbox.write("public/c.css", "v2");
    let last_saved = Instant::now();
    let mut told: Vec<String> = (0..2)
        .map(|_| {
            client.recv().expect("a reload")["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let waited = last_saved.elapsed();
    told.sort();
    assert_eq!(told, ["/b.css", "/c.css"]);
    assert!(
        waited >= delay - Duration::from_millis(100),
        "told after {waited:?}"
    );
}

#[test]
fn a_client_connecting_after_a_failed_build_hears_of_it_after_hello() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("content")).unwrap();
    let listener = build_route("echo 'oops' >&2; exit 3");
    let config = site_config(&sandbox, "", &listener);
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    sandbox.write("content/a.md", "x");
    eventually("the failure", || {
        daemon.log().contains("job failed with exit code 3").then_some(())
    });
    let mut client = LrClient::on_page(&addr, "/");
    let build = client.recv().expect("the build's result");
    assert_eq!(build["command"], "execlib-build", "{build}");
    assert_eq!(build["ok"], false);
    assert_eq!(build["reason"], "exit code 3");
    assert_eq!(build["output"], serde_json::json!(["oops"]));
}

#[test]
fn a_failed_build_reaches_connected_clients_within_200_ms_of_its_end() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("content")).unwrap();
    // Its last act: the wall clock, in ns, on its output.
    let listener = build_route("date +%s%N; exit 1");
    let config = site_config(&sandbox, "", &listener);
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let mut client = LrClient::on_page(&addr, "/");
    eventually("the client counted", || (clients(&daemon) == 1).then_some(()));
    sandbox.write("content/a.md", "x");
    let build = client.recv().expect("the build's result");
    let arrived = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert_eq!(build["command"], "execlib-build", "{build}");
    let ended: u128 = build["output"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ms = (arrived - ended) / 1_000_000;
    assert!(ms < 200, "{ms} ms from the job's end to the client");
}

#[test]
fn regression_a_build_stopped_by_its_listener_is_no_failure() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("content")).unwrap();
    let listener = one_route("echo yes > ../out/started; sleep 30", "").replacen(
        "path = \"src\"",
        "path = \"content\"",
        1,
    );
    let config = site_config(&sandbox, "", &listener);
    let daemon = Daemon::start(&sandbox, &config);
    sandbox.write("content/a.md", "x");
    sandbox.wait_out("started");
    assert!(daemon.ctl(&["stop", "docs"]).status.success());
    let status = String::from_utf8(daemon.ctl(&["status"]).stdout).unwrap();
    assert!(!status.contains("build    FAILED"), "{status}");
}

#[test]
fn regression_a_busy_listener_that_is_no_build_does_not_hold_reloads() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("noise")).unwrap();
    // Only "docs" builds; "noisy" runs jobs all the time, and must not matter.
    let noisy = "\n[[listener]]\nname = \"noisy\"\n  [[listener.route]]\n  path = \"noise\"\n  debounce_ms = 0\n  delay_ms = 0\n  shell = \"true\"\n";
    let config = site_config(
        &sandbox,
        "builds = [\"docs\"]",
        &format!("{}{noisy}", one_route("true", "")),
    );
    sandbox.write("public/index.html", "v1");
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise = {
        let (stop, dir) = (stop.clone(), sandbox.path("noise"));
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                std::fs::write(dir.join("n"), i.to_string()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let mut client = LrClient::on_page(&addr, "/");
    let started = std::time::Instant::now();
    let reloaded = until_reload(&mut client, || sandbox.write("public/index.html", "v2"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    noise.join().unwrap();
    assert_eq!(reloaded, "/index.html");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn regression_a_browser_gone_without_a_word_held_its_livereload_seat_for_ever() {
    // One seat. A client says hello and then nothing, answering no ping (a laptop shut,
    // a NAT that dropped the connection): it held the seat for ever, so every other
    // browser got 503. Now a client silent for the idle timeout (1 s here, so the
    // keepalive's floor of 5 s) is pinged, and closed when silent as long after.
    let sandbox = Sandbox::new();
    let config = site_config(
        &sandbox,
        "idle_timeout_ms = 1000\nmax_clients = 1",
        &one_route("true", ""),
    );
    sandbox.write("public/a.html", "v1");
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let gone = LrClient::on_page(&addr, "/a.html");
    eventually("the silent client counted", || {
        (clients(&daemon) == 1).then_some(())
    });
    let upgrade = "GET /livereload HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    assert_eq!(request(&addr, upgrade).status, 503, "the only seat is taken");
    let started = std::time::Instant::now();
    eventually_within(
        std::time::Duration::from_secs(20),
        "the silent client closed",
        || (clients(&daemon) == 0).then_some(()),
    );
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(12), "closed after {took:?}");

    // A client that reads (so answers pings) keeps its seat through several idle
    // timeouts, and hears a change after them.
    let mut here = LrClient::on_page(&addr, "/a.html");
    let window = std::time::Duration::from_secs(11);
    here.set_timeout(window);
    let mut pings = 0;
    let quiet = std::time::Instant::now();
    while quiet.elapsed() < window && pings < 2 {
        match here.ws.read() {
            Ok(tungstenite::Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("only pings while nothing changes: {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("closed while answering pings: {e}"),
        }
    }
    assert!(pings >= 2, "pinged when quiet: {pings}");
    assert_eq!(clients(&daemon), 1);
    here.set_timeout(DEADLINE);
    let reloaded = until_reload(&mut here, || sandbox.write("public/a.html", "v2"));
    assert_eq!(reloaded, "/a.html");
    drop(gone);
}

/// Opens `/livereload` as a page of `origin` would; the handshake's status (101: connected).
fn handshake_from(addr: &str, origin: &str) -> u16 {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/livereload").into_client_request().unwrap();
    request.headers_mut().insert("origin", origin.parse().unwrap());
    match tungstenite::connect(request) {
        Ok((_, response)) => response.status().as_u16(),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("the handshake from {origin}: {e}"),
    }
}

#[test]
fn regression_any_web_page_could_open_livereload_and_read_its_messages() {
    let (_sandbox, _daemon, addr) = site();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(handshake_from(&addr, "https://evil.example"), 403);
    assert_eq!(handshake_from(&addr, "null"), 403, "a sandboxed page or a file");
    let other = format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1));
    assert_eq!(handshake_from(&addr, &other), 403, "another local server's page");
    assert_eq!(
        handshake_from(&addr, &format!("http://{addr}")),
        101,
        "the server's own pages"
    );
    // A client without Origin is no browser page: it connects (and says hello).
    LrClient::on_page(&addr, "/a.html");
}

#[test]
fn pages_of_the_listed_livereload_origins_connect() {
    let sandbox = Sandbox::new();
    let origins = "livereload_origins = [\"https://dev.example.com\"]";
    let config = site_config(&sandbox, origins, &one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    assert_eq!(handshake_from(&addr, "https://dev.example.com"), 101);
    assert_eq!(handshake_from(&addr, "https://dev.example.com:8443"), 403);
    assert_eq!(handshake_from(&addr, "https://other.example.com"), 403);
}
