//! A real browser: headless Chromium opens a page served with the injected
//! LiveReload script; a stylesheet change restyles it without a reload, an HTML
//! change reloads it. Driven over the Chrome DevTools Protocol.

use crate::support::web::*;
use crate::support::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Headless Chromium in its own process group, killed (with its helpers) on drop.
struct Browser {
    child: Child,
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Option<Browser> {
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let profile = tempfile::tempdir().unwrap();
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut devtools = None;
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(ws) = line.strip_prefix("DevTools listening on ") {
                devtools = Some(ws.trim().to_owned());
                break;
            }
        }
        let devtools = devtools.expect("Chromium printed its DevTools address");
        Some(Browser {
            child,
            devtools,
            _profile: profile,
        })
    }

    /// A DevTools connection to the first page.
    fn page(&self) -> Page {
        let host = self
            .devtools
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let url = eventually("a page target", || {
            let list: serde_json::Value = serde_json::from_slice(&get(&host, "/json/list", &[]).body).ok()?;
            let page = list.as_array()?.iter().find(|t| t["type"] == "page")?;
            page["webSocketDebuggerUrl"].as_str().map(str::to_owned)
        });
        let (ws, _) = tungstenite::connect(url).unwrap();
        // A browser that stops answering fails the test instead of hanging it.
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(DEADLINE)).unwrap();
        }
        Page { ws, next_id: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: signalling the browser's own process group.
        unsafe { libc::killpg(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

struct Page {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
}

impl Page {
    /// Evaluates `expression` in the page; its value as JSON (`null` while it throws or navigates).
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let call = serde_json::json!({"id": id, "method": "Runtime.evaluate", "params": {"expression": expression, "returnByValue": true}});
        self.ws
            .send(tungstenite::Message::text(call.to_string()))
            .unwrap();
        loop {
            let text = self.ws.read().unwrap().into_text().unwrap();
            let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                return reply["result"]["result"]["value"].clone();
            }
        }
    }

    fn wait_for(&mut self, what: &str, expression: &str, expected: &str) {
        eventually(what, || (self.eval(expression) == expected).then_some(()));
    }
}

/// A page with a stylesheet and a heading `text`.
fn page(text: &str) -> String {
    format!(
        r#"<html><head><link rel="stylesheet" href="/style.css"></head><body><h1 id="t">{text}</h1></body></html>"#
    )
}

const NO_CHROMIUM: &str = "no chromium (Debian package `chromium`; .ci/run installs it)";

/// The daemon started on `config` and Chromium on its home page; `None` (after
/// saying why) without Chromium.
fn open_site(sandbox: &Sandbox, config: &std::path::Path) -> Option<(Daemon, Browser, Page)> {
    let daemon = Daemon::start(sandbox, config);
    let addr = http_addr(&daemon);
    let Some(browser) = Browser::open(&format!("http://{addr}/")) else {
        skip(NO_CHROMIUM);
        return None;
    };
    let tab = browser.page();
    Some((daemon, browser, tab))
}

fn livereload_clients(daemon: &Daemon) -> serde_json::Value {
    daemon.request(r#"{"cmd":"status"}"#)["server"]["livereload_clients"].clone()
}

#[test]
fn browser_restyles_on_css_and_reloads_on_html() {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "inject = true", &one_route("true", ""));
    sandbox.write("public/index.html", &page("v1"));
    sandbox.write("public/style.css", "h1 { color: rgb(255, 0, 0); }");
    let Some((daemon, _browser, mut tab)) = open_site(&sandbox, &config) else {
        return;
    };
    let state = "[document.getElementById('t').textContent, getComputedStyle(document.getElementById('t')).color, String(window.marker)].join('|')";
    tab.wait_for("the page to load", state, "v1|rgb(255, 0, 0)|undefined");
    eventually("the LiveReload client", || {
        (livereload_clients(&daemon) == 1).then_some(())
    });
    tab.eval("window.marker = 'kept'");

    sandbox.write("public/style.css", "h1 { color: rgb(0, 0, 255); }");
    tab.wait_for("the stylesheet swapped in place", state, "v1|rgb(0, 0, 255)|kept");

    sandbox.write("public/index.html", &page("v2"));
    tab.wait_for("the page reloaded", state, "v2|rgb(0, 0, 255)|undefined");
}

#[test]
fn regression_a_stylesheet_whose_name_needs_encoding_is_the_only_one_swapped() {
    // The client compared a link's pathname (`/my%20style.css`) with the server's
    // decoded name (`/my style.css`): none matched, so every stylesheet was refreshed.
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "inject = true", &one_route("true", ""));
    let head = r#"<link rel="stylesheet" href="/my%20style.css"><link rel="stylesheet" href="/other.css">"#;
    sandbox.write(
        "public/index.html",
        &format!(r#"<html><head>{head}</head><body><h1 id="t">v1</h1></body></html>"#),
    );
    sandbox.write("public/my style.css", "h1 { color: rgb(255, 0, 0); }");
    sandbox.write("public/other.css", "h1 { background: rgb(0, 0, 0); }");
    let Some((daemon, _browser, mut tab)) = open_site(&sandbox, &config) else {
        return;
    };
    let state = "[getComputedStyle(document.getElementById('t')).color, \
                 Array.from(document.querySelectorAll('link')).map(l => new URL(l.href).search).join(',')].join('|')";
    tab.wait_for("the page to load", state, "rgb(255, 0, 0)|,");
    eventually("the LiveReload client", || {
        (livereload_clients(&daemon) == 1).then_some(())
    });
    sandbox.write("public/my style.css", "h1 { color: rgb(0, 0, 255); }");
    let swapped = eventually("the stylesheet swapped", || {
        let got = tab.eval(state).as_str()?.to_owned();
        let links = got.split('|').nth(1)?.split(',').count();
        (got.starts_with("rgb(0, 0, 255)|") && links == 2).then_some(got)
    });
    let searches: Vec<&str> = swapped.split('|').nth(1).unwrap().split(',').collect();
    assert_eq!(searches.len(), 2, "{swapped}");
    assert!(searches[0].starts_with("?livereload="), "{swapped}");
    assert_eq!(searches[1], "", "the other stylesheet was left alone: {swapped}");
}

#[test]
fn regression_an_image_change_reloaded_every_open_page() {
    // The server sends an image's change to every page (any may show it); the client
    // swapped only stylesheets and reloaded the page for anything else.
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "inject = true", &one_route("true", ""));
    let svg = |fill: &str| {
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4" fill="{fill}"/></svg>"#
        )
    };
    sandbox.write(
        "public/index.html",
        r#"<html><head><link rel="stylesheet" href="/style.css"></head>
           <body><img id="i" src="/logo.svg"><div id="b" class="b"></div></body></html>"#,
    );
    sandbox.write(
        "public/style.css",
        ".b { background-image: url(pic.svg); width: 4px; height: 4px; }",
    );
    sandbox.write("public/logo.svg", &svg("red"));
    sandbox.write("public/pic.svg", &svg("red"));
    let Some((daemon, _browser, mut tab)) = open_site(&sandbox, &config) else {
        return;
    };
    let state = "[String(window.marker), \
                 new URL(document.getElementById('i').src).search.startsWith('?livereload='), \
                 getComputedStyle(document.getElementById('b')).backgroundImage.includes('livereload=')].join('|')";
    tab.wait_for("the page to load", state, "undefined|false|false");
    eventually("the LiveReload client", || {
        (livereload_clients(&daemon) == 1).then_some(())
    });
    tab.eval("window.marker = 'kept'");
    // An image the page does not show: nothing to do (told before the next one, on the
    // same socket, so a reload for it would lose the marker).
    sandbox.write("public/other.svg", &svg("blue"));
    sandbox.write("public/logo.svg", &svg("blue"));
    tab.wait_for("the <img> refetched in place", state, "kept|true|false");
    sandbox.write("public/pic.svg", &svg("blue"));
    tab.wait_for("the stylesheet's background refetched", state, "kept|true|true");
}

/// Stands in for the server on `addr` while it is down: accepts the LiveReload
/// client's attempts to reconnect and closes each at once; returns when each of
/// `n` attempts came.
fn reconnect_attempts(addr: &str, n: usize) -> Vec<Duration> {
    use std::io::BufRead;
    let listener = eventually("the port to be free", || std::net::TcpListener::bind(addr).ok());
    listener.set_nonblocking(true).unwrap();
    let mut closed_at: Option<Instant> = None;
    let mut waits = Vec::new();
    while waits.len() < n - 1 {
        let stream = eventually_within(Duration::from_secs(30), "a reconnection attempt", || {
            listener.accept().ok().map(|(stream, _)| stream)
        });
        let at = Instant::now();
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut request_line = String::new();
        let _ = std::io::BufReader::new(stream).read_line(&mut request_line);
        // The stream is closed here: the client's next wait starts when it sees that.
        if request_line.starts_with("GET /livereload ") {
            if let Some(closed) = closed_at {
                waits.push(at - closed);
            }
            closed_at = Some(Instant::now());
        }
    }
    waits
}

#[test]
fn the_livereload_client_reconnects_with_back_off_after_a_restart() {
    let sandbox = Sandbox::new();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let config = site_config(&sandbox, "inject = true", &one_route("true", ""));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("127.0.0.1:0", &addr)).unwrap();
    sandbox.write("public/index.html", &page("v1"));
    let mut daemon = Daemon::start(&sandbox, &config);
    let Some(browser) = Browser::open(&format!("http://{addr}/")) else {
        skip(NO_CHROMIUM);
        return;
    };
    let mut tab = browser.page();
    let heading = "document.getElementById('t').textContent";
    tab.wait_for("the page to load", heading, "v1");
    eventually("the LiveReload client", || {
        (livereload_clients(&daemon) == 1).then_some(())
    });

    // Down: the script retries after 0.5 s, then 1, 2, 4 s... (up to 10 s).
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit();
    // Each wait is measured from the failed attempt's close to the next attempt, so a
    // slow request from a loaded browser does not count as waiting.
    let gaps: Vec<f64> = reconnect_attempts(&addr, 3)
        .iter()
        .map(Duration::as_secs_f64)
        .collect();
    assert!(gaps[0] >= 0.95, "no faster than a second apart: {gaps:?}");
    assert!(
        (1.5..=2.6).contains(&(gaps[1] / gaps[0])),
        "each wait about twice the last: {gaps:?}"
    );

    // Up again: the client is back within its next wait (4 or 8 s), and it works.
    let daemon = Daemon::start(&sandbox, &config);
    eventually_within(Duration::from_secs(20), "the client to reconnect", || {
        (livereload_clients(&daemon) == 1).then_some(())
    });
    sandbox.write("public/index.html", &page("v2"));
    tab.wait_for("the page reloaded", heading, "v2");
}

#[test]
fn a_build_that_rewrites_the_page_for_two_seconds_loads_it_once_more() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("content")).unwrap();
    // Each load of the page counts itself (sessionStorage survives reloads).
    let counted = |text: &str| {
        format!(
            r#"<html><body><h1 id="t">{text}</h1><script>sessionStorage.loads = Number(sessionStorage.loads || 0) + 1</script></body></html>"#
        )
    };
    let step = counted("v$i").replace('"', "\\\"");
    let build = format!(
        r#"for i in $(seq 1 20); do echo "{step}" > ../public/index.html; sleep 0.1; done; touch ../out/done"#
    );
    let listener = build_route(&build);
    let config = site_config(&sandbox, "inject = true", &listener);
    sandbox.write("public/index.html", &counted("v0"));
    let Some((daemon, _browser, mut tab)) = open_site(&sandbox, &config) else {
        return;
    };
    let state = "document.getElementById('t').textContent + '|' + sessionStorage.loads";
    tab.wait_for("the page to load", state, "v0|1");
    eventually("the LiveReload client", || {
        (livereload_clients(&daemon) == 1).then_some(())
    });
    sandbox.write("content/post.md", "edited");
    tab.wait_for("one reload, with the build's last page", state, "v20|2");
    assert!(sandbox.read("out/done").is_some());
    // And no other after it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tab.eval(state), "v20|2");
}

#[test]
fn a_reload_keeps_the_readers_place_on_a_page_that_grows_after_loading() {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "inject = true", &one_route("true", ""));
    // The page gets tall 300 ms after it loads (as pages that fetch their content
    // do): the browser's own restoration, at load, finds nowhere to scroll to.
    let page = |text: &str| {
        format!(
            r#"<html><body><h1 id="t">{text}</h1><div id="c"></div><script>setTimeout(function () {{ document.getElementById('c').style.height = '5000px'; }}, 300)</script></body></html>"#
        )
    };
    sandbox.write("public/index.html", &page("v1"));
    let Some((daemon, _browser, mut tab)) = open_site(&sandbox, &config) else {
        return;
    };
    let height = "String(document.body.scrollHeight > 4000)";
    tab.wait_for("the page to grow", height, "true");
    eventually("the LiveReload client", || {
        (livereload_clients(&daemon) == 1).then_some(())
    });
    tab.eval("window.scrollTo(0, 1234)");
    tab.wait_for("the scroll", "String(window.scrollY)", "1234");
    sandbox.write("public/index.html", &page("v2"));
    let state = "document.getElementById('t').textContent + '|' + window.scrollY";
    tab.wait_for("the reloaded page back at the reader's place", state, "v2|1234");
}

#[test]
fn a_failed_build_shows_over_the_page_as_text_and_the_next_good_one_clears_it() {
    let sandbox = Sandbox::new();
    sandbox.write("content/post.md", "fine");
    // Fails while the source says "broken", printing markup that must stay text, in
    // colour (terminal codes that must not show).
    let build = r#"if grep -q broken ../content/post.md; then echo compiling; printf '\033[1;31m<b id="injected">bold</b> error:\033[0m broken on line 3\033]8;;x\007\n' >&2; exit 2; fi; cp ../content/post.md ../public/post.txt"#;
    let listener = build_route(build);
    let config = site_config(&sandbox, "inject = true", &listener);
    sandbox.write(
        "public/index.html",
        r#"<html><body><h1 id="t">v1</h1><script>sessionStorage.loads = Number(sessionStorage.loads || 0) + 1</script></body></html>"#,
    );
    let Some((daemon, _browser, mut tab)) = open_site(&sandbox, &config) else {
        return;
    };
    tab.wait_for("the page to load", "String(sessionStorage.loads)", "1");
    eventually("the LiveReload client", || {
        (livereload_clients(&daemon) == 1).then_some(())
    });
    sandbox.write("content/post.md", "broken");
    let overlay = "(function () { var o = document.getElementById('execlib-build-failed'); \
                   return o ? o.textContent : 'none'; })()";
    let text = eventually("the overlay", || {
        let text = tab.eval(overlay);
        (text != "none" && !text.is_null()).then_some(text)
    });
    let text = text.as_str().unwrap().to_owned();
    for needle in [
        "Build failed",
        "route pages",
        "exit code 2",
        "<b id=\"injected\">bold</b> error: broken on line 3",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text:?}");
    }
    assert!(
        !text.contains('\u{1b}') && !text.contains("[1;31m") && !text.contains("8;;x"),
        "no terminal codes: {text:?}"
    );
    assert_eq!(
        tab.eval("String(document.getElementById('injected'))"),
        "null",
        "markup shown as text"
    );
    let status = String::from_utf8(daemon.ctl(&["status"]).stdout).unwrap();
    assert!(
        status.contains("build    FAILED") && status.contains("exit code 2"),
        "{status}"
    );
    sandbox.write("content/post.md", "fixed");
    tab.wait_for(
        "cleared, and the page reloaded",
        &format!("{overlay} + '|' + sessionStorage.loads"),
        "none|2",
    );
    let status = String::from_utf8(daemon.ctl(&["status"]).stdout).unwrap();
    assert!(status.contains("build    ok"), "{status}");
}
