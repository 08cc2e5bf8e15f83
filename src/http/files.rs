//! Serving static files: GET and HEAD, `Content-Type` (with `charset=utf-8` for
//! text), `Last-Modified` (when the file's time has an HTTP date, see
//! [`http_date`]) and a strong `ETag` answered with 304, single byte ranges
//! (206, 416), `Cache-Control: no-cache`, and optional LiveReload script injection
//! into HTML up to [`MAX_INJECT`]. Large files are sent with `sendfile` (see
//! [`zerocopy`]), or read on the blocking pool from a file system that may stop
//! answering (see [`blocking`]); small ones are read whole and kept in the
//! [`Cache`], answered from memory while their file is unchanged.

use super::blocking;
use super::cache::{Cache, Entry, FileId};
use super::path::{self, Opened};
use super::zerocopy::{self, Regions};
use super::{Body, full, status};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

/// What the file server needs to know about the site.
#[derive(Debug)]
pub struct Site {
    /// The root, canonical.
    pub root: PathBuf,
    /// Whether hidden files are served.
    pub hidden: bool,
    /// Whether HTML gets the LiveReload script.
    pub inject: bool,
    /// Small files, kept in memory.
    pub cache: Cache,
    /// Whether an HTML file over [`MAX_INJECT`] was served without the script yet
    /// (logged once).
    pub served_uninjected: AtomicBool,
    /// The bytes of bodies held in memory, against [`MAX_BODIES`].
    pub bodies: Bodies,
    /// Places for lookups on the blocking pool, [`MAX_LOOKUPS`] of them.
    pub lookups: Arc<tokio::sync::Semaphore>,
    /// Whether requests were refused for want of a place (logged once).
    pub said_not_answering: AtomicBool,
    /// Room for chunks of large files read on the blocking pool, [`blocking::MAX_CHUNKS`].
    pub chunks: Arc<tokio::sync::Semaphore>,
}

impl Site {
    /// The site at canonical `root`, whose files on `device` may be cached (see
    /// [`super::cache::local_device`]), with nothing held yet.
    pub fn new(root: PathBuf, hidden: bool, inject: bool, device: Option<u64>) -> Self {
        Site {
            cache: Cache::new(&root, hidden, device),
            root,
            hidden,
            inject,
            served_uninjected: AtomicBool::new(false),
            bodies: Bodies::default(),
            lookups: Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS)),
            said_not_answering: AtomicBool::new(false),
            chunks: Arc::new(tokio::sync::Semaphore::new(blocking::MAX_CHUNKS)),
        }
    }
}

/// The most bytes of file bodies held in memory at once: files read whole to be
/// sent (small ones, and HTML with the script in it) and the cache's, together. Each
/// request for a file the cache does not answer (every spelling of a path is its own
/// key: `/a.html`, `/%61.html`) reads it anew, and a client that does not read keeps
/// its copy: past this, files are sent from disk with `sendfile` instead, and HTML
/// without the LiveReload script, so however many clients stall, the bodies in
/// memory stay under it.
pub const MAX_BODIES: usize = 64 * 1024 * 1024;

/// The bytes of bodies held in memory; see [`MAX_BODIES`].
#[derive(Debug, Default)]
pub struct Bodies(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Bodies {
    /// Takes `n` bytes of the budget until the returned guard is dropped, or `None`
    /// when that would go over [`MAX_BODIES`].
    fn reserve(&self, n: usize) -> Option<Held> {
        let before = self.0.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > MAX_BODIES {
            self.0.fetch_sub(n, Ordering::Relaxed);
            return None;
        }
        Some(Held(n, self.0.clone()))
    }

    /// The bytes held now.
    pub fn held(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bytes of the budget, given back when dropped.
#[derive(Debug)]
struct Held(usize, std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.1.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// A body in memory, holding its share of the budget for as long as it lives (its
/// `Bytes` may be shared by the cache and responses).
struct Budgeted {
    bytes: Vec<u8>,
    _held: Held,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// HTML up to this size gets the LiveReload script; a larger page is served as it
/// is, without it, with `sendfile` like any large file. Injecting means reading the
/// page whole into memory for each request (the script goes before its last
/// `</body>`), held until the client has it all: the cap bounds what one request
/// can make the server hold. Pages are rarely more than a few hundred KiB (HTML of
/// 1 MiB is a single-page dump of a whole manual), so the cap costs almost no page
/// its reloads.
pub const MAX_INJECT: u64 = 1024 * 1024;

/// At most this many lookups (resolve, open, stat, read a small file) on the
/// blocking pool at once. A lookup stuck on a root that stops answering (a dead NFS
/// server) keeps its thread and its place until the file system answers: the cap
/// keeps such requests from taking every blocking thread, which the listeners, the
/// history and the job bookkeeping need too.
pub const MAX_LOOKUPS: usize = 64;

/// How long a request waits for a place among [`MAX_LOOKUPS`]; then it gets 503
/// (the places are all taken by lookups the file system has not answered).
pub const LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Files up to this size are read in one go (and cached); larger ones are streamed.
const READ_WHOLE: u64 = super::cache::MAX_ENTRY as u64;

/// What a file's answer is made of.
struct Source {
    etag: String,
    /// `Last-Modified`: the file's time when it has an HTTP date ([`http_date`]).
    modified: Option<SystemTime>,
    content_type: String,
    content: Content,
}

enum Content {
    /// The whole body, for small files and injected HTML.
    Memory(Bytes),
    /// An open file to stream, and its length.
    File(std::fs::File, u64),
    /// An open file on a file system that may stop answering, and its length.
    Remote(blocking::RemoteFile, u64),
}

impl Source {
    fn len(&self) -> u64 {
        match &self.content {
            Content::Memory(bytes) => bytes.len() as u64,
            Content::File(_, len) | Content::Remote(_, len) => *len,
        }
    }

    fn cached(entry: &Entry) -> Self {
        Source {
            etag: entry.etag.clone(),
            modified: entry.modified,
            content_type: entry.content_type.clone(),
            content: Content::Memory(entry.body.clone()),
        }
    }
}

enum Lookup {
    Found(Source),
    Answer(Response<Body>),
}

/// Answers one request for a file.
pub async fn serve(
    site: &std::sync::Arc<Site>,
    method: &Method,
    raw_path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    regions: &Regions,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    // A cached small file costs a path walk and an fstat (see `cache`), done here: no
    // disk access while the inodes are in memory, as they are for a file just served.
    if let Some(hit) = site.cache.get(raw_path) {
        return respond(Source::cached(&hit), method, headers, (site, regions)).await;
    }
    // Resolving, opening, stat and (for small files) reading: one trip to the blocking
    // pool, holding one of the places for lookups until it is done.
    let Ok(Ok(place)) = tokio::time::timeout(LOOKUP_WAIT, site.lookups.clone().acquire_owned()).await else {
        return not_answering(site);
    };
    let (site2, raw, query) = (site.clone(), raw_path.to_owned(), query.map(str::to_owned));
    let lookup = tokio::task::spawn_blocking(move || {
        let _place = place;
        lookup(&site2, &raw, query.as_deref())
    })
    .await;
    match lookup {
        Ok(Lookup::Found(source)) => respond(source, method, headers, (site, regions)).await,
        Ok(Lookup::Answer(response)) => response,
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// 405 with `Allow: GET, HEAD`: the answer to any other method.
pub fn method_not_allowed() -> Response<Body> {
    let mut r = status(StatusCode::METHOD_NOT_ALLOWED);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

/// 503: every place for lookups is held by one the file system has not answered.
fn not_answering(site: &Site) -> Response<Body> {
    if !site
        .said_not_answering
        .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            "{MAX_LOOKUPS} file lookups under the site root have not been answered for {} s: is its file \
             system hung? Requests get 503 meanwhile (said once)",
            LOOKUP_WAIT.as_secs()
        );
    }
    let mut r = status(StatusCode::SERVICE_UNAVAILABLE);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn lookup(site: &Site, raw_path: &str, query: Option<&str>) -> Lookup {
    let (file, real, direct) = match path::open(&site.root, raw_path, site.hidden) {
        Opened::File { file, real, direct } => (file, real, direct),
        Opened::Redirect(to) => {
            let location = match query {
                Some(q) => format!("{to}?{q}"),
                None => to,
            };
            let mut r = status(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Lookup::Answer(r);
        }
        Opened::NotFound => return Lookup::Answer(status(StatusCode::NOT_FOUND)),
        Opened::BadRequest => return Lookup::Answer(status(StatusCode::BAD_REQUEST)),
    };
    match prepare(site, file, &real) {
        Ok((source, meta, read_at)) => {
            if let Content::Memory(body) = &source.content {
                let entry = Entry {
                    id: FileId::of(&meta),
                    body: body.clone(),
                    content_type: source.content_type.clone(),
                    etag: source.etag.clone(),
                    modified: source.modified,
                };
                if direct {
                    site.cache.insert(raw_path, entry, read_at);
                }
            }
            Lookup::Found(source)
        }
        Err(_) => Lookup::Answer(status(StatusCode::NOT_FOUND)), // unreadable
    }
}

/// Reads a small file (or HTML to inject, up to [`MAX_INJECT`]) whole; a large one is left to stream.
fn prepare(
    site: &Site,
    mut file: std::fs::File,
    path: &Path,
) -> std::io::Result<(Source, std::fs::Metadata, SystemTime)> {
    use std::io::Read;
    // Before the metadata: the cache keeps only files already quiet at this moment.
    let read_at = SystemTime::now();
    let meta = file.metadata()?;
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let html = site.inject && mime.essence_str() == "text/html";
    let script = super::livereload::script_tag().len();
    let injectable = html && meta.len() <= MAX_INJECT;
    let wanted = match injectable {
        true => Some(meta.len() as usize + script),
        false => (meta.len() <= READ_WHOLE).then_some(meta.len() as usize),
    };
    // In memory only within the budget; else sent from the file (HTML without the script).
    let held = wanted.and_then(|n| site.bodies.reserve(n));
    if wanted.is_some() && held.is_none() {
        tracing::debug!(
            held = site.bodies.held(),
            "bodies in memory at their limit: sending from the file"
        );
    }
    let injected = injectable && held.is_some();
    if html && !injectable && !site.served_uninjected.swap(true, Ordering::Relaxed) {
        tracing::info!(
            path = %crate::names::escaped(path),
            size = meta.len(),
            "HTML over {MAX_INJECT} bytes is served without the LiveReload script (logged once)"
        );
    }
    // Injected HTML names the client's version: a new client is a new page.
    let lr = format!("-lr{}", &super::livereload::client_version()[..8]);
    let etag = format!(
        "\"{:x}-{:x}-{:x}{}\"",
        meta.ino(),
        meta.len(),
        meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        if injected { lr.as_str() } else { "" }
    );
    let content = match held {
        Some(held) => {
            // At most the length reserved for: a file that grew since is cut there.
            let mut bytes = Vec::with_capacity(held.0);
            (&mut file).take(meta.len()).read_to_end(&mut bytes)?;
            let bytes = if injected { inject(bytes) } else { bytes };
            Content::Memory(Bytes::from_owner(Budgeted { bytes, _held: held }))
        }
        // Asked of the open file: a link under the root may lead to another mount.
        None => match crate::sys::fs_type_of(file.as_fd()) {
            Ok(magic) if !crate::mountinfo::may_not_answer_type(magic) => Content::File(file, meta.len()),
            _ => Content::Remote(blocking::RemoteFile::new(file), meta.len()),
        },
    };
    let source = Source {
        etag,
        modified: meta.modified().ok().filter(|&t| http_date(t).is_some()),
        content_type: content_type(&mime),
        content,
    };
    Ok((source, meta, read_at))
}

/// The answer to a request for `source`; `to` is the site and the connection's
/// [`Regions`], which large files are streamed through.
async fn respond(
    source: Source,
    method: &Method,
    headers: &HeaderMap,
    to: (&Site, &Regions),
) -> Response<Body> {
    let (site, regions) = to;
    let len = source.len();
    let Source {
        etag,
        modified,
        content_type,
        content,
    } = source;
    let mut head = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(date) = modified.and_then(http_date) {
        head = head.header(header::LAST_MODIFIED, date.to_string());
    }
    if not_modified(headers, &etag, modified) {
        return head
            .status(StatusCode::NOT_MODIFIED)
            .body(full(Vec::new()))
            .expect("valid response");
    }
    head = head.header(header::CONTENT_TYPE, content_type);
    let range = if if_range_holds(headers, &etag, modified) {
        byte_range(headers, len)
    } else {
        Range::Full
    };
    let (code, start, count) = match range {
        Range::Full => (StatusCode::OK, 0, len),
        Range::Part(start, end) => {
            head = head.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Range::Unsatisfiable => {
            let r = head
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"));
            return r.body(full(Vec::new())).expect("valid response");
        }
    };
    let head = head.status(code).header(header::CONTENT_LENGTH, count);
    let body = match content {
        _ if method == Method::HEAD => full(Vec::new()),
        Content::Memory(bytes) => full(bytes.slice(start as usize..(start + count) as usize)),
        Content::File(file, _) => zerocopy::body(file, start, count, regions.clone()),
        Content::Remote(file, _) => {
            let reader = blocking::Reader {
                places: site.lookups.clone(),
                chunks: site.chunks.clone(),
                wait: LOOKUP_WAIT,
            };
            blocking::body(file, start, count, reader)
        }
    };
    head.body(body).expect("valid response")
}

fn content_type(mime: &mime_guess::Mime) -> String {
    let textual = mime.type_() == "text"
        || matches!(
            mime.essence_str(),
            "application/javascript" | "application/json" | "application/xml" | "image/svg+xml"
        );
    if textual {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_owned()
    }
}

/// `t` as an HTTP date, if it has one: `httpdate` covers 1970 to 9999 (and panics
/// outside), while a file's time may be before 1970 (`touch -d 1960-01-01`) or, on
/// some file systems, after 9999. Such a file is served without `Last-Modified`.
fn http_date(t: SystemTime) -> Option<httpdate::HttpDate> {
    /// 10000-01-01T00:00:00Z, in seconds since the epoch.
    const YEAR_10000: u64 = 253_402_300_800;
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    (secs < YEAR_10000).then(|| httpdate::HttpDate::from(t))
}

/// `If-None-Match` (strong or weak match, or `*`), else `If-Modified-Since` (to the
/// second; ignored for a file without `Last-Modified`).
fn not_modified(headers: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag);
    }
    let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    modified.is_some_and(|modified| secs(modified) <= secs(since))
}

/// Whole seconds since the epoch (0 before it).
fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `If-Range` (RFC 9110 13.1.5): the range applies only if the validator is this
/// file's strong ETag, or exactly its `Last-Modified` date (never, for a file without
/// one); without the header it applies.
fn if_range_holds(headers: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    let Some(value) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let value = value.trim();
    if value.starts_with('"') {
        return value == etag;
    }
    let Some(modified) = modified else {
        return false;
    };
    httpdate::parse_http_date(value).is_ok_and(|date| secs(date) == secs(modified))
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    Full,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range; several ranges or an unparsable header get the whole file.
fn byte_range(headers: &HeaderMap, len: u64) -> Range {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    // Digits only (RFC 9110 14.1.1): `u64::from_str` would take `+5` too.
    let number = |s: &str| match s.bytes().all(|b| b.is_ascii_digit()) {
        true => s.parse::<u64>().map_err(|_| ()),
        false => Err(()),
    };
    let parsed = match (number(first), number(last)) {
        (Ok(a), Ok(b)) if a <= b => Some((a, b.min(len.saturating_sub(1)))),
        (Ok(a), Err(_)) if last.is_empty() => Some((a, len.saturating_sub(1))),
        (Err(_), Ok(n)) if first.is_empty() => {
            if n == 0 {
                return Range::Unsatisfiable;
            }
            Some((len.saturating_sub(n), len.saturating_sub(1)))
        }
        _ => None,
    };
    match parsed {
        None => Range::Full,
        Some((a, _)) if a >= len => Range::Unsatisfiable,
        Some((a, b)) => Range::Part(a, b),
    }
}

/// Inserts the script tag before the last `</body>`, else before `</head>`, else at the
/// end; tags in comments and in the text of `<script>`, `<style>`, `<textarea>` and
/// `<title>` do not count (a `"</body>"` in a script's string is no end of the body).
pub fn inject(mut html: Vec<u8>) -> Vec<u8> {
    let (body, head) = closing_tags(&html);
    let at = body.or(head).unwrap_or(html.len());
    html.splice(at..at, super::livereload::script_tag().bytes());
    html
}

/// Where the last `</body>` and the last `</head>` of `html` start, outside comments
/// and raw text: one pass, compared in place (a lower-cased copy would double what a
/// request holds).
fn closing_tags(html: &[u8]) -> (Option<usize>, Option<usize>) {
    const RAW: [&[u8]; 4] = [b"script", b"style", b"textarea", b"title"];
    let starts = |at: usize, s: &[u8]| {
        html.get(at..at + s.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(s))
    };
    // A tag name ends at whitespace, `>` or `/` (or the end of the page).
    let tag = |at: usize, name: &[u8]| {
        starts(at, name)
            && html
                .get(at + name.len())
                .is_none_or(|b| b.is_ascii_whitespace() || b"/>".contains(b))
    };
    let find = |from: usize, end: &dyn Fn(usize) -> bool| (from..html.len()).find(|&i| end(i));
    let (mut body, mut head, mut i) = (None, None, 0);
    while let Some(lt) = memchr(b'<', html, i) {
        i = lt + 1;
        if starts(lt, b"<!--") {
            i = find(lt + 4, &|j| starts(j, b"-->")).map_or(html.len(), |j| j + 3);
        } else if let Some(raw) = RAW.iter().find(|name| tag(lt + 1, name)) {
            let close = [b"</".as_slice(), raw].concat();
            i = find(lt + 1 + raw.len(), &|j| tag(j + 2, raw) && starts(j, &close)).unwrap_or(html.len());
        } else if tag(lt, b"</body") {
            body = Some(lt);
        } else if tag(lt, b"</head") {
            head = Some(lt);
        }
    }
    (body, head)
}

/// The first `byte` in `bytes` at or after `from`.
fn memchr(byte: u8, bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .position(|&b| b == byte)
        .map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_in_memory_stay_under_their_limit_and_are_given_back_when_dropped() {
        let bodies = Bodies::default();
        let first = bodies.reserve(MAX_BODIES - 10).expect("within the limit");
        assert!(bodies.reserve(11).is_none(), "one byte over");
        let last = bodies.reserve(10).expect("exactly at the limit");
        assert_eq!(bodies.held(), MAX_BODIES);
        // A body's share goes back when the last of its `Bytes` is dropped.
        let body = Bytes::from_owner(Budgeted {
            bytes: vec![0; 10],
            _held: last,
        });
        let shared = body.clone();
        drop(body);
        assert!(bodies.reserve(1).is_none(), "still held by its clone");
        drop(shared);
        assert_eq!(bodies.held(), MAX_BODIES - 10);
        drop(first);
        assert_eq!(bodies.held(), 0);
    }

    proptest::proptest! {
        #[test]
        fn injection_adds_the_tag_once_and_changes_nothing_else(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "<body>", "</body>", "</BODY >", "</head>", "<!--", "-->", "<script>", "</script>",
                "<style>", "</style>", "<title>", "</title", "x", "<", ">", "\"", "é",
            ]), 0..40)
        ) {
            let html = parts.concat().into_bytes();
            let out = inject(html.clone());
            let tag = super::super::livereload::script_tag().as_bytes();
            let at = out.windows(tag.len()).position(|w| w == tag).expect("the tag is in");
            let mut back = out.clone();
            back.drain(at..at + tag.len());
            proptest::prop_assert_eq!(back, html);
        }
    }

    #[test]
    fn regression_the_script_went_into_a_body_tag_inside_a_script_string_or_comment() {
        let tag = super::super::livereload::script_tag();
        let minified =
            r#"<!doctype html><title>t</title><p>hi<script>var tpl="<html><body>x</body></html>";</script>"#;
        assert_eq!(
            String::from_utf8(inject(minified.as_bytes().to_vec())).unwrap(),
            format!("{minified}{tag}"),
            "no </body> outside the script: at the end"
        );
        let commented = "<body>a</body></html><!-- </body> -->";
        assert_eq!(
            String::from_utf8(inject(commented.as_bytes().to_vec())).unwrap(),
            format!("<body>a{tag}</body></html><!-- </body> -->")
        );
        let styled = "<head><style>/* </head> */</style></head><TITLE></body></TITLE>";
        assert_eq!(
            String::from_utf8(inject(styled.as_bytes().to_vec())).unwrap(),
            format!("<head><style>/* </head> */</style>{tag}</head><TITLE></body></TITLE>")
        );
        // Unclosed comment or script: nothing after it counts; a `<scripts>` tag is no script.
        let open = "<body>a</body><!-- </body>";
        assert!(
            String::from_utf8(inject(open.as_bytes().to_vec()))
                .unwrap()
                .starts_with(&format!("<body>a{tag}"))
        );
        let named = "<scripts></body>";
        assert_eq!(
            String::from_utf8(inject(named.as_bytes().to_vec())).unwrap(),
            format!("<scripts>{tag}</body>")
        );
    }

    #[test]
    fn the_script_goes_before_the_last_body_tag_whatever_its_case() {
        let page = inject(b"<html><BODY>a</Body><p>x</BoDy></html>".to_vec());
        let tag = super::super::livereload::script_tag();
        assert_eq!(
            String::from_utf8(page).unwrap(),
            format!("<html><BODY>a</Body><p>x{tag}</BoDy></html>")
        );
    }

    fn range(value: &str, len: u64) -> Range {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        byte_range(&h, len)
    }

    #[test]
    fn single_ranges_parse_and_bad_ones_fall_back_or_fail() {
        assert_eq!(range("bytes=0-4", 10), Range::Part(0, 4));
        assert_eq!(range("bytes=5-", 10), Range::Part(5, 9));
        assert_eq!(range("bytes=-3", 10), Range::Part(7, 9));
        assert_eq!(range("bytes=8-100", 10), Range::Part(8, 9));
        assert_eq!(range("bytes=10-", 10), Range::Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), Range::Unsatisfiable);
        assert_eq!(range("bytes=0-1,3-4", 10), Range::Full);
        assert_eq!(range("bytes=4-2", 10), Range::Full);
        assert_eq!(range("items=0-1", 10), Range::Full);
    }

    #[test]
    fn regression_a_range_with_signed_numbers_was_honoured() {
        assert_eq!(range("bytes=+5-+9", 10), Range::Full);
        assert_eq!(range("bytes=+5-", 10), Range::Full);
        assert_eq!(range("bytes=-+3", 10), Range::Full);
        assert_eq!(range("bytes=5-+9", 10), Range::Full);
    }

    #[test]
    fn times_without_an_http_date_have_none_and_never_panic() {
        use std::time::Duration;
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let date = |t| http_date(t).map(|d| d.to_string());
        assert_eq!(date(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), None);
        assert_eq!(date(at(0)).as_deref(), Some("Thu, 01 Jan 1970 00:00:00 GMT"));
        assert_eq!(
            date(at(253_402_300_799)).as_deref(),
            Some("Fri, 31 Dec 9999 23:59:59 GMT")
        );
        assert_eq!(date(at(253_402_300_800)), None, "the year 10000");
    }

    #[test]
    fn without_last_modified_dates_never_validate() {
        let mut h = HeaderMap::new();
        let epoch = "Thu, 01 Jan 1970 00:00:00 GMT";
        h.insert(header::IF_MODIFIED_SINCE, HeaderValue::from_static(epoch));
        assert!(!not_modified(&h, "\"e\"", None));
        assert!(not_modified(&h, "\"e\"", Some(SystemTime::UNIX_EPOCH)));
        let mut h = HeaderMap::new();
        h.insert(header::IF_RANGE, HeaderValue::from_static(epoch));
        assert!(!if_range_holds(&h, "\"e\"", None));
        assert!(if_range_holds(&h, "\"e\"", Some(SystemTime::UNIX_EPOCH)));
    }

    #[test]
    fn script_goes_before_body_then_head_then_end() {
        let tag = crate::http::livereload::script_tag();
        assert_eq!(
            inject(b"<p></BODY></html>".to_vec()),
            format!("<p>{tag}</BODY></html>").into_bytes()
        );
        assert_eq!(
            inject(b"<head></head><p>".to_vec()),
            format!("<head>{tag}</head><p>").into_bytes()
        );
        assert_eq!(inject(b"<p>".to_vec()), format!("<p>{tag}").into_bytes());
    }

    #[test]
    fn text_types_get_a_charset() {
        let ct = |p: &str| content_type(&mime_guess::from_path(p).first_or_octet_stream());
        assert_eq!(ct("a.html"), "text/html; charset=utf-8");
        assert_eq!(ct("a.css"), "text/css; charset=utf-8");
        assert_eq!(ct("a.js"), "text/javascript; charset=utf-8");
        assert_eq!(ct("a.png"), "image/png");
    }
}
