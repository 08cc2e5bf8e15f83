//! The LiveReload endpoint (protocol 7): a WebSocket at `/livereload`, a registry of
//! connected browsers with the page each shows, and the targeting rule: stylesheets,
//! scripts and images reload every client; any other file only the clients showing
//! it (`/` is `/index.html`, `/a` is `/a.html`). After the handshake clients are sent
//! only `hello`, `reload` and `alert`.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use warp::Filter;
use warp::ws::{Message, WebSocket};

/// The protocol the server speaks.
pub const PROTOCOL: &str = "http://livereload.com/protocols/official-7";
/// The client script served at `/livereload.js`.
pub const CLIENT_JS: &str = include_str!("livereload.js");

struct Client {
    page: Option<String>,
    tx: mpsc::Sender<String>,
}

/// Messages queued for one client; a client this far behind (not reading) is dropped.
const CLIENT_QUEUE: usize = 256;

/// The connected browsers.
pub struct LiveReload {
    clients: Mutex<HashMap<u64, Client>>,
    next_id: AtomicU64,
    closing: CancellationToken,
    gone: Notify,
    hello_timeout: Duration,
}

impl LiveReload {
    /// A registry; a client that does not say hello within `hello_timeout` is closed.
    pub fn new(hello_timeout: Duration) -> Self {
        LiveReload {
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closing: CancellationToken::new(),
            gone: Notify::new(),
            hello_timeout,
        }
    }

    /// The warp filter for `GET /livereload` (WebSocket upgrade).
    pub fn filter(
        this: std::sync::Arc<Self>,
    ) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
        warp::path("livereload")
            .and(warp::path::end())
            .and(warp::ws())
            .map(move |ws: warp::ws::Ws| {
                let this = this.clone();
                ws.on_upgrade(move |socket| async move { this.session(socket).await })
            })
    }

    /// How many browsers are connected (past the handshake).
    pub fn client_count(&self) -> usize {
        self.clients.lock().expect("clients lock").len()
    }

    /// Tells the clients concerned that `paths` (relative to the root, with a leading `/`) changed.
    pub fn changed(&self, paths: &[String]) {
        let clients = self.clients.lock().expect("clients lock");
        for path in paths {
            let message =
                json!({"command": "reload", "path": path, "liveCSS": true, "liveImg": true}).to_string();
            for client in clients.values().filter(|c| wants(c.page.as_deref(), path)) {
                // Full: the client does not read; it misses this reload rather than grow memory.
                let _ = client.tx.try_send(message.clone());
            }
        }
    }

    /// Closes every session with 1001 (going away) and waits for them to end, up to `limit`.
    pub async fn close_all(&self, limit: Duration) {
        self.closing.cancel();
        let _ = tokio::time::timeout(limit, async {
            while self.client_count() > 0 {
                let gone = self.gone.notified();
                if self.client_count() == 0 {
                    break;
                }
                gone.await;
            }
        })
        .await;
    }

    async fn session(&self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        // The handshake: the client speaks first.
        let hello = tokio::time::timeout(self.hello_timeout, stream.next()).await;
        let said_hello = matches!(&hello, Ok(Some(Ok(m))) if parse(m).is_some_and(|v| is_hello(&v)));
        if !said_hello {
            debug!("livereload client did not say hello; closing");
            let _ = sink.send(Message::close_with(1002u16, "expected hello")).await;
            return;
        }
        let reply = json!({"command": "hello", "protocols": [PROTOCOL], "serverName": "execlib"});
        if sink.send(Message::text(reply.to_string())).await.is_err() {
            return;
        }
        let (tx, mut rx) = mpsc::channel(CLIENT_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.clients
            .lock()
            .expect("clients lock")
            .insert(id, Client { page: None, tx });
        loop {
            tokio::select! {
                _ = self.closing.cancelled() => {
                    let _ = sink.send(Message::close_with(1001u16, "server shutting down")).await;
                    break;
                }
                Some(text) = rx.recv() => {
                    // A client that does not read must not hold the shutdown up.
                    let sent = tokio::select! {
                        sent = sink.send(Message::text(text)) => sent.is_ok(),
                        _ = self.closing.cancelled() => false,
                    };
                    if !sent {
                        break;
                    }
                }
                incoming = stream.next() => match incoming {
                    Some(Ok(m)) if m.is_close() => break,
                    Some(Ok(m)) if m.is_ping() || m.is_pong() => {}
                    Some(Ok(m)) => match parse(&m) {
                        Some(v) => self.learn_page(id, &v),
                        None => {
                            debug!("livereload client sent garbage; closing");
                            let _ = sink.send(Message::close_with(1003u16, "expected JSON")).await;
                            break;
                        }
                    },
                    _ => break,
                },
            }
        }
        self.clients.lock().expect("clients lock").remove(&id);
        self.gone.notify_waiters();
    }

    /// `info` and `url` messages name the page the client shows.
    fn learn_page(&self, id: u64, msg: &Value) {
        let command = msg["command"].as_str().unwrap_or("");
        if let ("info" | "url", Some(url)) = (command, msg["url"].as_str())
            && let Some(client) = self.clients.lock().expect("clients lock").get_mut(&id)
        {
            client.page = Some(page_path(url));
        }
    }
}

fn parse(m: &Message) -> Option<Value> {
    let v: Value = serde_json::from_str(m.to_str().ok()?).ok()?;
    v.is_object().then_some(v)
}

fn is_hello(v: &Value) -> bool {
    v["command"] == "hello"
}

/// The path of a page URL (`http://host/a/b?x#y` -> `/a/b`).
fn page_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = match after_scheme.find('/') {
        Some(i) if url.contains("://") => &after_scheme[i..],
        None if url.contains("://") => "/",
        _ => after_scheme,
    };
    path.split(['?', '#']).next().unwrap_or("/").to_owned()
}

/// The file a page path stands for: `/` and `/dir/` are `index.html`, `/a` is `/a.html`.
fn page_file(path: &str) -> String {
    if path.ends_with('/') {
        return format!("{path}index.html");
    }
    let last = path.rsplit('/').next().unwrap_or("");
    if last.contains('.') {
        path.to_owned()
    } else {
        format!("{path}.html")
    }
}

/// Whether a client showing `page` should reload for a change to `path`.
fn wants(page: Option<&str>, path: &str) -> bool {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let everyone = [
        "css", "js", "mjs", "png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "ico",
    ];
    everyone.contains(&ext.as_str()) || page.is_some_and(|p| page_file(p) == page_file(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_targeted_and_assets_go_to_everyone() {
        assert!(wants(Some("/"), "/index.html"));
        assert!(wants(Some("/index.html"), "/index.html"));
        assert!(wants(Some("/a"), "/a.html"));
        assert!(wants(Some("/a.html"), "/a.html"));
        assert!(wants(Some("/docs/"), "/docs/index.html"));
        assert!(!wants(Some("/b.html"), "/a.html"));
        assert!(!wants(None, "/a.html"));
        assert!(wants(Some("/b.html"), "/style.CSS"));
        assert!(wants(None, "/app.js"));
        assert!(wants(Some("/b.html"), "/img/logo.png"));
    }

    #[test]
    fn page_urls_reduce_to_paths() {
        assert_eq!(page_path("http://127.0.0.1:8778/a/b.html?x=1#top"), "/a/b.html");
        assert_eq!(page_path("http://localhost:8778"), "/");
        assert_eq!(page_path("/relative"), "/relative");
    }
}
