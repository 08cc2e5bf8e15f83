//! A real browser: headless Chromium opens a page served with the injected
//! LiveReload script; a stylesheet change restyles it without a reload, an HTML
//! change reloads it. Driven over the Chrome DevTools Protocol.

use crate::support::web::*;
use crate::support::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

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

#[test]
fn browser_restyles_on_css_and_reloads_on_html() {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "inject = true", &one_route("true", ""));
    let page = |text: &str| {
        format!(
            r#"<html><head><link rel="stylesheet" href="/style.css"></head><body><h1 id="t">{text}</h1></body></html>"#
        )
    };
    sandbox.write("public/index.html", &page("v1"));
    sandbox.write("public/style.css", "h1 { color: rgb(255, 0, 0); }");
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let Some(browser) = Browser::open(&format!("http://{addr}/")) else {
        skip("no chromium (Debian package `chromium`; .ci/run installs it)");
        return;
    };
    let mut tab = browser.page();
    let state = "[document.getElementById('t').textContent, getComputedStyle(document.getElementById('t')).color, String(window.marker)].join('|')";
    tab.wait_for("the page to load", state, "v1|rgb(255, 0, 0)|undefined");
    eventually("the LiveReload client", || {
        let status = daemon.request(r#"{"cmd":"status"}"#);
        (status["server"]["livereload_clients"] == 1).then_some(())
    });
    tab.eval("window.marker = 'kept'");

    sandbox.write("public/style.css", "h1 { color: rgb(0, 0, 255); }");
    tab.wait_for("the stylesheet swapped in place", state, "v1|rgb(0, 0, 255)|kept");

    sandbox.write("public/index.html", &page("v2"));
    tab.wait_for("the page reloaded", state, "v2|rgb(0, 0, 255)|undefined");
}
