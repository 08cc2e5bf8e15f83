//! The LiveReload endpoint (protocol 7): a WebSocket at `/livereload`, a registry of
//! connected browsers with the page each shows, and the targeting rule: stylesheets,
//! scripts and images reload every client; any other file only the clients showing
//! it (`/` is `/index.html`, `/a` is `/a.html`). After the handshake clients are sent
//! only `hello`, `reload`, `alert` and `execlib-build` (how the last build ended: a
//! command the standard livereload.js ignores, execlib's own client shows a failure
//! over the page; a client connecting after a failure hears of it at once).
//!
//! Every limit is explicit: a message or frame over [`MAX_MESSAGE`] (fragments count
//! toward it) closes the client with 1009; at most `max_clients` are connected (a
//! [`Seat`] is taken before the upgrade, so the surplus gets 503); a client must say
//! hello within the handshake deadline; a client silent for the idle timeout (at
//! least [`KEEPALIVE_MIN`]) is pinged, and closed if it stays silent as long again (a browser gone without a
//! word would hold its seat for ever); a client that does not read its messages is
//! dropped once [`CLIENT_QUEUE`] of them, or [`QUEUE_BYTES`], wait (a build's outcome
//! is never queued: each client is sent the latest); at most [`MAX_WRITE_BUFFER`] bytes wait
//! to be written to a client (a message that would go over it closes the client),
//! and a ping's pong must be out within [`PONG_WAIT`] before the client's next frame
//! is read (a client that pings and never reads is closed, not read without end).

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use warp::Filter;
use warp::ws::{Message, WebSocket};

/// A session's sending half.
type Sink = futures::stream::SplitSink<WebSocket, Message>;
/// A session's receiving half.
type Stream = futures::stream::SplitStream<WebSocket>;

/// The protocol the server speaks.
pub const PROTOCOL: &str = "http://livereload.com/protocols/official-7";
/// The client script served at `/livereload.js`.
pub const CLIENT_JS: &str = include_str!("livereload.js");

/// The client's version: a hash of its text. Injected pages ask for
/// `/livereload.js?v=VERSION`, which browsers may keep for good (the URL changes
/// when the client does), so reloading a page does not fetch the client again.
pub fn client_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        CLIENT_JS.hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    })
}

/// The tag inserted into served HTML when `inject` is on: the versioned client,
/// `async`, so a page neither waits for it to be parsed nor to be shown.
pub fn script_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        format!(
            r#"<script src="/livereload.js?v={}" async></script>"#,
            client_version()
        )
    })
}

struct Client {
    /// Whether it said which page it shows (`info` or `url`).
    named: bool,
    /// The path of the page it shows, percent-decoded; `None` before it says, or when
    /// its URL names no file the server could serve: no page change is for it.
    page: Option<String>,
    /// Pages changed before it said which page it shows: it is told of the ones
    /// that are its page once it does (a change made as a page connects is not lost).
    unplaced: Unplaced,
    tx: mpsc::Sender<String>,
    /// The bytes of the messages in its queue, at most [`QUEUE_BYTES`].
    queued: Arc<AtomicUsize>,
    /// Fired when its queue is full: it does not read, so it is closed.
    stalled: CancellationToken,
}

/// What a session sends its client, beside its answers: what its [`Client`]'s
/// `tx` queued, and the builds' outcomes.
struct Queue {
    rx: mpsc::Receiver<String>,
    /// Shared with its [`Client`]: the bytes queued.
    queued: Arc<AtomicUsize>,
    /// Shared with its [`Client`]: fired when it does not keep up.
    stalled: CancellationToken,
    /// The last build's outcome; a change is sent as it comes (the latest only).
    builds: tokio::sync::watch::Receiver<Option<(bool, Arc<str>)>>,
}

/// The pages changed while a client had not named its page yet.
#[derive(Default)]
struct Unplaced {
    paths: Vec<String>,
    /// More than [`MAX_UNPLACED`] pages or [`MAX_UNPLACED_BYTES`] of names: its
    /// page reloads, whichever it is.
    everything: bool,
}

/// The most changed pages kept for a client that has not named its page yet.
const MAX_UNPLACED: usize = 64;
/// The most bytes of page names kept for such a client (a client that never names
/// its page holds at most this, however long the names).
const MAX_UNPLACED_BYTES: usize = 4096;

impl Unplaced {
    fn note(&mut self, paths: &[String], everything: bool) {
        self.everything |= everything;
        for path in paths.iter().filter(|p| !live(p)) {
            let bytes: usize = self.paths.iter().map(String::len).sum();
            if self.paths.len() == MAX_UNPLACED || bytes + path.len() > MAX_UNPLACED_BYTES {
                self.everything = true;
                return;
            }
            if !self.paths.contains(path) {
                self.paths.push(path.clone());
            }
        }
    }
}

/// Messages queued for one client; a client this far behind (not reading) is dropped.
pub const CLIENT_QUEUE: usize = 256;
/// The most bytes of messages queued for one client, past which it is dropped too: a
/// reload names a path of up to 4 KiB, which JSON may escape to 24 KiB.
pub const QUEUE_BYTES: usize = 64 * 1024;
/// The largest message (and frame) a client may send; LiveReload's are a few hundred
/// bytes, a page URL included.
pub const MAX_MESSAGE: usize = 8 * 1024;
/// The most bytes waiting to be written to one client (tungstenite's
/// `max_write_buffer_size`; its default is unlimited). It must exceed tungstenite's
/// `write_buffer_size` (128 KiB, which warp does not let us set; tungstenite panics
/// otherwise) by the largest message the server sends: an `execlib-build` failure,
/// 20 lines of at most 1 KiB escaped as JSON, under 160 KiB. A message that would go
/// over it fails to send, and the client is closed.
pub const MAX_WRITE_BUFFER: usize = 384 * 1024;
/// The shortest keepalive period: a client silent for the idle timeout, or this if
/// longer, is pinged, and closed if silent as long after the ping went (a shorter
/// one would drop phones whose Wi-Fi dozes, and their reloads meanwhile).
pub const KEEPALIVE_MIN: Duration = Duration::from_secs(5);
/// How long the pong to a client's ping may take to go out (into the socket) before
/// the client is closed: its next frame is not read meanwhile, so a client that
/// pings and never reads makes the server neither buffer nor read without end.
pub const PONG_WAIT: Duration = Duration::from_secs(2);

/// The connected browsers.
pub struct LiveReload {
    clients: Mutex<HashMap<u64, Client>>,
    next_id: AtomicU64,
    closing: CancellationToken,
    gone: Notify,
    /// The handshake's deadline, and how long a client may be silent before it is
    /// pinged, and then before it is closed.
    idle: Duration,
    /// Seats taken (upgrading, in the handshake, or connected) and the most there may be.
    seats: AtomicUsize,
    max_clients: usize,
    /// How the last build ended and its `execlib-build` message: each client is sent
    /// the latest (one a client has not taken yet is replaced, never queued up), and
    /// a client that connects after a failure gets it at once.
    builds: tokio::sync::watch::Sender<Option<(bool, Arc<str>)>>,
    /// Counts the reload messages sent.
    reloads_sent: prometheus_client::metrics::counter::Counter,
}

/// One of the `max_clients` seats, held from before the upgrade to the end of the session.
pub struct Seat(Arc<LiveReload>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.seats.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LiveReload {
    /// A registry for at most `max_clients` clients; a client that does not say hello
    /// within `idle` of its upgrade is closed, and so is one silent for `idle` and
    /// then for `idle` after it was pinged.
    pub fn new(idle: Duration, max_clients: usize) -> Self {
        LiveReload {
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closing: CancellationToken::new(),
            gone: Notify::new(),
            idle,
            seats: AtomicUsize::new(0),
            max_clients,
            builds: tokio::sync::watch::Sender::new(None),
            reloads_sent: Default::default(),
        }
    }

    /// This registry, counting the reload messages it sends in `reloads_sent`.
    pub fn counting(mut self, reloads_sent: prometheus_client::metrics::counter::Counter) -> Self {
        self.reloads_sent = reloads_sent;
        self
    }

    /// A seat for one more client, unless `max_clients` are taken.
    pub fn seat(this: &Arc<Self>) -> Option<Seat> {
        let taken = this.seats.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < this.max_clients).then_some(n + 1)
        });
        taken.ok().map(|_| Seat(this.clone()))
    }

    /// The warp filter for `GET /livereload` (WebSocket upgrade), for a client that
    /// holds `seat` (given up if the request is no upgrade or the upgrade fails).
    pub fn filter(
        this: Arc<Self>,
        seat: Seat,
    ) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
        let seat = Arc::new(Mutex::new(Some(seat)));
        warp::path("livereload")
            .and(warp::path::end())
            .and(warp::ws())
            .map(move |ws: warp::ws::Ws| {
                let this = this.clone();
                let seat = seat.lock().expect("seat lock").take();
                ws.max_message_size(MAX_MESSAGE)
                    .max_frame_size(MAX_MESSAGE)
                    .max_write_buffer_size(MAX_WRITE_BUFFER)
                    .on_upgrade(move |socket| async move {
                        if let Some(seat) = seat {
                            this.session(socket, seat).await
                        }
                    })
            })
    }

    /// How many browsers are connected (past the handshake).
    pub fn client_count(&self) -> usize {
        self.clients.lock().expect("clients lock").len()
    }

    /// Tells the clients concerned that `paths` (relative to the root, with a leading
    /// `/`) changed; with `everything`, too many files changed to list: every client
    /// reloads its page. A client gets at most [`MAX_LIVE`] messages for one change.
    pub fn changed(&self, paths: &[String], everything: bool) {
        let mut clients = self.clients.lock().expect("clients lock");
        for client in clients.values_mut() {
            if !client.named {
                client.unplaced.note(paths, everything);
            }
            for path in messages_for(client.page.as_deref(), paths, everything) {
                self.tell(client, &path);
            }
        }
    }

    /// Sends `client` a reload of `path`.
    fn tell(&self, client: &Client, path: &str) {
        let message =
            json!({"command": "reload", "path": path, "liveCSS": true, "liveImg": true}).to_string();
        // Full: the client does not read; its session ends (see `session`).
        let len = message.len();
        let room = client.queued.fetch_add(len, Ordering::AcqRel) + len <= QUEUE_BYTES;
        match room.then(|| client.tx.try_send(message)) {
            Some(Ok(())) => drop(self.reloads_sent.inc()),
            _ => client.stalled.cancel(),
        }
    }

    /// Tells every client how a build ended (`execlib-build`), and remembers it: a
    /// failure is told to the clients that connect until a build succeeds.
    pub fn build(&self, result: &crate::protocol::replies::BuildResult) {
        let message = json!({
            "command": "execlib-build",
            "ok": result.ok,
            "listener": result.listener,
            "route": result.route,
            "file": crate::names::escaped(&result.file).to_string(),
            "reason": result.reason,
            "output": result.output,
        })
        .to_string();
        // A client connecting now takes it or the one before, and is told of a change.
        self.builds.send_replace(Some((result.ok, message.into())));
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

    async fn session(&self, socket: WebSocket, _seat: Seat) {
        let (mut sink, mut stream) = socket.split();
        if !self.handshake(&mut sink, &mut stream).await {
            return;
        }
        let (id, mut queue) = self.register();
        // Registered before its hello goes out: a change made as soon as the client has
        // the hello (the watcher runs on a thread of its own) is noted for it.
        let reply = json!({"command": "hello", "protocols": [PROTOCOL], "serverName": "execlib"});
        if sink.send(Message::text(reply.to_string())).await.is_ok() {
            self.serve(id, (&mut sink, &mut stream), &mut queue).await;
        }
        self.clients.lock().expect("clients lock").remove(&id);
        self.gone.notify_waiters();
    }

    /// The handshake: the client speaks first, within the deadline, and says hello;
    /// otherwise it is closed (1002, or as its error calls for) and this is false.
    async fn handshake(&self, sink: &mut Sink, stream: &mut Stream) -> bool {
        let hello = tokio::time::timeout(self.idle, stream.next()).await;
        let said_hello = match &hello {
            Ok(Some(Ok(m))) => parse(m).is_some_and(|v| is_hello(&v)),
            Ok(Some(Err(e))) => {
                close_for(sink, e).await;
                return false;
            }
            _ => false,
        };
        if !said_hello {
            debug!("livereload client did not say hello; closing");
            let _ = sink.send(Message::close_with(1002u16, "expected hello")).await;
        }
        said_hello
    }

    /// Adds a client: its id and what it is to be sent ([`Queue`]).
    fn register(&self) -> (u64, Queue) {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let (queued, stalled) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let client = Client {
            named: false,
            page: None,
            unplaced: Unplaced::default(),
            tx,
            queued: queued.clone(),
            stalled: stalled.clone(),
        };
        self.clients.lock().expect("clients lock").insert(id, client);
        let queue = Queue {
            rx,
            queued,
            stalled,
            builds: self.builds.subscribe(),
        };
        (id, queue)
    }

    /// Sends a client its messages and reads what it says, until it goes, does not
    /// keep up, breaks the protocol, stays silent through a ping, or the server shuts
    /// down.
    async fn serve(&self, id: u64, (sink, stream): (&mut Sink, &mut Stream), queue: &mut Queue) {
        // The outcome shown now (marked seen as it is read): a failure goes out first;
        // a success is no news to a client that saw no failure.
        let failed = match &*queue.builds.borrow_and_update() {
            Some((false, message)) => Some(message.clone()),
            _ => None,
        };
        if let Some(failed) = failed
            && !self.send(sink, Message::text(&*failed), &queue.stalled).await
        {
            return;
        }
        // Silent for the keepalive period: pinged; silent for as long after the ping
        // went: closed (a browser that went away without a word, as behind a NAT that
        // dropped the connection).
        let period = self.idle.max(KEEPALIVE_MIN);
        let mut heard = tokio::time::Instant::now();
        let mut pinged: Option<tokio::time::Instant> = None;
        loop {
            let quiet_until = pinged.unwrap_or(heard) + period;
            // In this order: what the client said is read before its deadline is
            // judged (a pong that waited while a long send went must count).
            tokio::select! {
                biased;
                _ = self.closing.cancelled() => {
                    let bye = sink.send(Message::close_with(1001u16, "server shutting down"));
                    let _ = tokio::time::timeout(CLOSE_WAIT, bye).await;
                    return;
                }
                _ = queue.stalled.cancelled() => {
                    debug!("livereload client does not read its messages; closing");
                    return;
                }
                incoming = stream.next() => {
                    (heard, pinged) = (tokio::time::Instant::now(), None);
                    if !self.heard(id, incoming, sink, &queue.stalled).await {
                        return;
                    }
                }
                Some(text) = queue.rx.recv() => {
                    queue.queued.fetch_sub(text.len(), Ordering::AcqRel);
                    if !self.send(sink, Message::text(text), &queue.stalled).await {
                        return;
                    }
                }
                Ok(()) = queue.builds.changed() => {
                    let latest = queue.builds.borrow_and_update().as_ref().map(|(_, m)| m.clone());
                    if let Some(message) = latest
                        && !self.send(sink, Message::text(&*message), &queue.stalled).await
                    {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(quiet_until) => {
                    if pinged.is_some() {
                        debug!("livereload client did not answer a ping; closing");
                        return;
                    }
                    if !self.send(sink, Message::ping(Vec::new()), &queue.stalled).await {
                        return;
                    }
                    // Counted from when it went: a slow send must not eat the answer's time.
                    pinged = Some(tokio::time::Instant::now());
                }
            }
        }
    }

    /// Sends `message`, unless the server shuts down or the client is found not to
    /// keep up meanwhile (a client that does not read must not hold the shutdown up).
    async fn send(&self, sink: &mut Sink, message: Message, stalled: &CancellationToken) -> bool {
        tokio::select! {
            sent = sink.send(message) => sent.is_ok(),
            _ = self.closing.cancelled() => false,
            _ = stalled.cancelled() => false,
        }
    }

    /// Handles what a client sent; false when its session is to end.
    async fn heard(
        &self,
        id: u64,
        incoming: Option<Result<Message, warp::Error>>,
        sink: &mut Sink,
        stalled: &CancellationToken,
    ) -> bool {
        match incoming {
            Some(Ok(m)) if m.is_close() => false,
            Some(Ok(m)) if m.is_ping() => {
                // tungstenite queued its pong: it goes out before the next frame is
                // read, or the client, which does not read, is closed.
                let flushed = tokio::select! {
                    flushed = tokio::time::timeout(PONG_WAIT, sink.flush()) => {
                        matches!(flushed, Ok(Ok(())))
                    }
                    _ = self.closing.cancelled() => return true,
                    _ = stalled.cancelled() => false,
                };
                if !flushed {
                    debug!("livereload client does not read its pongs; closing");
                }
                flushed
            }
            Some(Ok(m)) if m.is_pong() => true,
            Some(Ok(m)) => match parse(&m) {
                Some(v) => {
                    self.learn_page(id, &v);
                    true
                }
                None => {
                    debug!("livereload client sent garbage; closing");
                    let bye = sink.send(Message::close_with(1003u16, "expected JSON"));
                    let _ = tokio::time::timeout(CLOSE_WAIT, bye).await;
                    false
                }
            },
            Some(Err(e)) => {
                close_for(sink, &e).await;
                false
            }
            None => false,
        }
    }

    /// `info` and `url` messages name the page the client shows.
    fn learn_page(&self, id: u64, msg: &Value) {
        let command = msg["command"].as_str().unwrap_or("");
        if let ("info" | "url", Some(url)) = (command, msg["url"].as_str())
            && let Some(client) = self.clients.lock().expect("clients lock").get_mut(&id)
        {
            let page = page_path(url);
            // What changed since it connected, if it is this page.
            let missed = std::mem::take(&mut client.unplaced);
            if !client.named {
                for path in messages_for(page.as_deref(), &missed.paths, missed.everything) {
                    self.tell(client, &path);
                }
            }
            client.named = true;
            client.page = page;
        }
    }
}

/// Closes a client whose last frame was refused: 1009 (message too big) when it
/// went over [`MAX_MESSAGE`], else 1002 (protocol error).
async fn close_for<S>(sink: &mut S, error: &warp::Error)
where
    S: futures::Sink<Message> + Unpin,
{
    use std::error::Error as _;
    let too_big = error
        .source()
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
    let (code, reason) = if too_big {
        debug!("livereload client sent a message over {MAX_MESSAGE} bytes; closing");
        (1009u16, "message too big")
    } else {
        debug!("livereload client broke the protocol ({error}); closing");
        (1002u16, "protocol error")
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::close_with(code, reason))).await;
}

/// How long a close frame may take to go out to a client that does not read.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A client's message as a JSON object; `None` for anything else.
fn parse(m: &Message) -> Option<Value> {
    let v: Value = serde_json::from_str(m.to_str().ok()?).ok()?;
    v.is_object().then_some(v)
}

fn is_hello(v: &Value) -> bool {
    v["command"] == "hello"
}

/// The path of a page URL, percent-decoded as the file server decodes a request
/// path (`http://host/my%20page.html?x#y` -> `/my page.html`): browsers report
/// `location.href`, encoded, and changed files are named as they are on disk.
/// `None` for a path the file server would refuse (it does not decode to UTF-8, is
/// encoded twice, has a NUL, a backslash, or `.` or `..` segments): it names no
/// file, so no page change is for it.
fn page_path(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = match after_scheme.find('/') {
        Some(i) if url.contains("://") => &after_scheme[i..],
        None if url.contains("://") => "/",
        _ => after_scheme,
    };
    let raw = path.split(['?', '#']).next().unwrap_or("/");
    let decoded = super::path::decode(raw)?;
    let dots = decoded.split('/').any(|s| s == "." || s == "..");
    (!dots).then_some(decoded)
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

/// The most stylesheets and images swapped in place for one change; more reload the page.
pub const MAX_LIVE: usize = 16;

/// The `reload` paths a client showing `page` is sent for one change: nothing if it
/// shows none of `paths`; each stylesheet or image in place (up to [`MAX_LIVE`]);
/// else one reload of its page, which makes any swap moot.
fn messages_for<'a>(
    page: Option<&str>,
    paths: &'a [String],
    everything: bool,
) -> Vec<std::borrow::Cow<'a, str>> {
    let whole_page = |page: Option<&str>| page.map_or_else(|| "/".to_owned(), page_file).into();
    if everything {
        return vec![whole_page(page)];
    }
    let wanted: Vec<&String> = paths.iter().filter(|p| wants(page, p)).collect();
    if wanted.iter().all(|p| live(p)) && wanted.len() <= MAX_LIVE {
        return wanted.into_iter().map(|p| p.as_str().into()).collect();
    }
    match wanted.iter().find(|p| !live(p)) {
        Some(page_path) => vec![page_path.as_str().into()],
        None => vec![whole_page(page)],
    }
}

/// Whether a change to `path` can be applied without a reload (a stylesheet or image).
fn live(path: &str) -> bool {
    LIVE.contains(&extension(path).as_str())
}

/// Stylesheets and images: swapped in place.
const LIVE: [&str; 9] = ["css", "png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "ico"];

/// A path's extension, lower case (empty when it has none).
fn extension(path: &str) -> String {
    path.rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Whether a client showing `page` should reload for a change to `path`: every
/// client for stylesheets, images and scripts, which any page may use.
fn wants(page: Option<&str>, path: &str) -> bool {
    let ext = extension(path);
    LIVE.contains(&ext.as_str())
        || ["js", "mjs"].contains(&ext.as_str())
        || page.is_some_and(|p| page_file(p) == page_file(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_page_changed_before_its_client_named_it_is_told_when_it_does() {
        // A save made as a page's client connected (its `info` on its way) went to
        // no one, and the page stayed stale.
        let mut missed = Unplaced::default();
        missed.note(&["/a.html".to_owned(), "/style.css".to_owned()], false);
        assert_eq!(missed.paths, ["/a.html"], "stylesheets went out at once");
        assert_eq!(
            messages_for(Some("/a"), &missed.paths, missed.everything),
            ["/a.html"]
        );
        assert!(messages_for(Some("/b.html"), &missed.paths, missed.everything).is_empty());
        // Bounded: past MAX_UNPLACED pages, its page reloads whichever it is.
        let many: Vec<String> = (0..=MAX_UNPLACED).map(|i| format!("/p{i}.html")).collect();
        missed.note(&many, false);
        assert!(missed.everything && missed.paths.len() == MAX_UNPLACED);
        // And in bytes: names a hostile writer made long.
        let mut long = Unplaced::default();
        long.note(&[format!("/{}.html", "x".repeat(MAX_UNPLACED_BYTES))], false);
        assert!(long.everything && long.paths.is_empty());
        assert_eq!(
            messages_for(Some("/b.html"), &missed.paths, missed.everything),
            ["/b.html"]
        );
    }

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
    fn one_change_sends_a_client_a_bounded_number_of_messages() {
        let paths = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let css: Vec<String> = (0..40).map(|i| format!("/s{i}.css")).collect();
        assert_eq!(
            messages_for(Some("/a"), &paths(&["/s.css", "/b.html"]), false),
            ["/s.css"]
        );
        assert_eq!(
            messages_for(Some("/a"), &paths(&["/s.css", "/a.html", "/app.js"]), false),
            ["/a.html"],
            "a page reload makes the swaps moot"
        );
        assert_eq!(messages_for(Some("/a"), &css[..16], false).len(), 16);
        assert_eq!(
            messages_for(Some("/a"), &css, false),
            ["/a.html"],
            "too many swaps: reload"
        );
        assert_eq!(messages_for(None, &css, false), ["/"]);
        assert_eq!(messages_for(Some("/d/"), &[], true), ["/d/index.html"]);
        assert!(messages_for(Some("/a"), &paths(&["/b.html"]), false).is_empty());
    }

    #[test]
    fn the_write_buffer_cap_leaves_room_for_the_largest_message() {
        // tungstenite panics at the upgrade unless max_write_buffer_size exceeds
        // write_buffer_size (which warp leaves at its default); an `execlib-build`
        // failure, the largest message sent, is under 160 KiB.
        let config = tungstenite::protocol::WebSocketConfig::default();
        assert!(MAX_WRITE_BUFFER > config.write_buffer_size + 160 * 1024);
    }

    #[test]
    fn page_urls_reduce_to_paths() {
        let path = |url| page_path(url).unwrap();
        assert_eq!(path("http://127.0.0.1:8778/a/b.html?x=1#top"), "/a/b.html");
        assert_eq!(path("http://localhost:8778"), "/");
        assert_eq!(path("/relative"), "/relative");
    }

    #[test]
    fn regression_page_urls_are_percent_decoded_before_they_are_matched() {
        // Browsers report `location.href`, encoded: a page whose name needed encoding
        // was compared raw with the changed file's name and never reloaded.
        let page = page_path("http://h/my%20page.html").unwrap();
        assert_eq!(page, "/my page.html");
        assert!(wants(Some(&page), "/my page.html"));
        let page = page_path("http://h/caf%C3%A9?x=%20").unwrap();
        assert!(wants(Some(&page), "/café.html"));
        // What the file server refuses names no page: not UTF-8, NUL, `..` (encoded
        // or not), double encoding, backslashes.
        for url in [
            "http://h/%FF.html",
            "http://h/a%00.html",
            "http://h/%2e%2e/a.html",
            "http://h/x/../a.html",
            "http://h/%252e.html",
            "http://h/a%5cb.html",
        ] {
            assert_eq!(page_path(url), None, "{url}");
        }
        // Such a client hears only what every client hears, or a reload of everything.
        assert!(messages_for(None, &["/a.html".to_owned()], false).is_empty());
        assert_eq!(messages_for(None, &[], true), ["/"]);
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever a client sends or names, parsing and targeting never panic, a
            /// page is always a path, and only JSON objects are accepted.
            #[test]
            fn client_messages_and_page_urls_never_panic(text in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let parsed = parse(&Message::text(text.clone()));
                prop_assert_eq!(parsed.is_some(), serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_object()));
                prop_assert!(parse(&Message::binary(bytes)).is_none_or(|v| v.is_object()));
                let page = page_path(&text);
                prop_assert!(page.as_deref().is_none_or(|p| p.starts_with('/') && !p.contains('\0')), "{} -> {:?}", text, page);
                let _ = wants(page.as_deref(), &text);
                let _ = page_file(&text);
            }
        }
    }
}
