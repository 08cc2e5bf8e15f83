//! The HTTP front end over real sockets: files, headers, conditional and range
//! requests, the traversal list, limits, and its place in the daemon's lifecycle.

use crate::support::web::*;
use crate::support::*;

fn site() -> (Sandbox, Daemon, String) {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "idle_timeout_ms = 1000", &one_route("true", ""));
    sandbox.write("public/index.html", "<html><body>home</body></html>");
    sandbox.write("public/style.css", "body { color: red }");
    sandbox.write("public/docs/index.html", "docs");
    sandbox.write("public/empty/.keep", "");
    sandbox.write("public/.env", "SECRET");
    sandbox.write("public/.git/config", "SECRET");
    sandbox.write("secret.txt", "SECRET");
    std::os::unix::fs::symlink(sandbox.path("secret.txt"), sandbox.path("public/escape.txt")).unwrap();
    std::os::unix::fs::symlink(sandbox.dir.path(), sandbox.path("public/up")).unwrap();
    std::os::unix::fs::symlink(sandbox.path("public/style.css"), sandbox.path("public/alias.css")).unwrap();
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    (sandbox, daemon, addr)
}

#[test]
fn files_are_served_with_type_validators_and_no_cache() {
    let (_sandbox, _daemon, addr) = site();
    let r = get(&addr, "/style.css", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body { color: red }");
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("content-length"), Some("19"));
    let etag = r.header("etag").unwrap();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "a strong ETag: {etag}"
    );
    assert!(r.header("last-modified").unwrap().ends_with("GMT"));
    assert_eq!(
        get(&addr, "/alias.css", &[]).text(),
        "body { color: red }",
        "a symlink inside the root"
    );

    let head = request(&addr, "HEAD /style.css HTTP/1.1");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("19"));
    assert!(head.body.is_empty());
    assert_eq!(
        request(&addr, "POST /style.css HTTP/1.1\r\nContent-Length: 0").status,
        405
    );
}

#[test]
fn directories_redirect_serve_their_index_and_are_never_listed() {
    let (_sandbox, _daemon, addr) = site();
    assert_eq!(get(&addr, "/", &[]).text(), "<html><body>home</body></html>");
    let r = get(&addr, "/docs?x=1", &[]);
    assert_eq!((r.status, r.header("location")), (301, Some("/docs/?x=1")));
    let r = get(&addr, "//docs", &[]);
    assert_eq!(
        r.header("location"),
        Some("/docs/"),
        "never a protocol-relative //host redirect"
    );
    assert_eq!(get(&addr, "/docs/", &[]).text(), "docs");
    assert_eq!(
        get(&addr, "/empty/", &[]).status,
        404,
        "no index.html: no listing"
    );
    assert_eq!(get(&addr, "/missing.html", &[]).status, 404);
}

#[test]
fn conditional_requests_get_304_until_the_file_changes() {
    let (sandbox, _daemon, addr) = site();
    let first = get(&addr, "/style.css", &[]);
    let etag = first.header("etag").unwrap().to_owned();
    let modified = first.header("last-modified").unwrap().to_owned();
    let r = get(&addr, "/style.css", &[&format!("If-None-Match: {etag}")]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(
        get(
            &addr,
            "/style.css",
            &[&format!("If-None-Match: W/{etag}, \"other\"")]
        )
        .status,
        304
    );
    assert_eq!(
        get(&addr, "/style.css", &[&format!("If-Modified-Since: {modified}")]).status,
        304
    );
    assert_eq!(
        get(
            &addr,
            "/style.css",
            &["If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT"]
        )
        .status,
        200
    );
    sandbox.write("public/style.css", "body { color: blue }");
    let r = get(&addr, "/style.css", &[&format!("If-None-Match: {etag}")]);
    assert_eq!(r.status, 200);
    assert_ne!(r.header("etag"), Some(etag.as_str()));
}

#[test]
fn regression_a_file_modified_before_1970_could_not_be_served() {
    let (sandbox, _daemon, addr) = site();
    sandbox.write("public/old.txt", "old file");
    let in_1960 = std::time::SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(10 * 365 * 86_400);
    let file = std::fs::File::options()
        .write(true)
        .open(sandbox.path("public/old.txt"));
    file.unwrap().set_modified(in_1960).unwrap();
    // Twice: read from the disk, then (quiet for decades) from the cache.
    for _ in 0..2 {
        let r = get(&addr, "/old.txt", &[]);
        assert_eq!((r.status, r.text().as_str()), (200, "old file"));
        assert_eq!(r.header("last-modified"), None, "no HTTP date before 1970");
    }
    let etag = get(&addr, "/old.txt", &[]).header("etag").unwrap().to_owned();
    let r = get(&addr, "/old.txt", &[&format!("If-None-Match: {etag}")]);
    assert_eq!(r.status, 304, "the ETag still validates it");
    let epoch = "Thu, 01 Jan 1970 00:00:00 GMT";
    let r = get(&addr, "/old.txt", &[&format!("If-Modified-Since: {epoch}")]);
    assert_eq!(r.status, 200, "no date of its own to compare with");
    let r = get(
        &addr,
        "/old.txt",
        &["Range: bytes=0-2", &format!("If-Range: {epoch}")],
    );
    assert_eq!((r.status, r.body.len()), (200, 8), "a date never matches it");
    let r = get(
        &addr,
        "/old.txt",
        &["Range: bytes=0-2", &format!("If-Range: {etag}")],
    );
    assert_eq!((r.status, r.text().as_str()), (206, "old"));
}

#[test]
fn regression_livereload_js_answered_other_methods_and_signed_ranges_got_206() {
    let (_sandbox, _daemon, addr) = site();
    for method in ["POST", "PUT", "DELETE"] {
        let r = request(
            &addr,
            &format!("{method} /livereload.js HTTP/1.1\r\nContent-Length: 0"),
        );
        assert_eq!(
            (r.status, r.header("allow")),
            (405, Some("GET, HEAD")),
            "{method}"
        );
    }
    assert_eq!(request(&addr, "HEAD /livereload.js HTTP/1.1").status, 200);
    let r = get(&addr, "/style.css", &["Range: bytes=+5-+9"]);
    assert_eq!((r.status, r.body.len()), (200, 19), "not a range: the whole file");
}

#[test]
fn single_ranges_get_206_and_unsatisfiable_ones_416() {
    let (_sandbox, _daemon, addr) = site();
    let r = get(&addr, "/style.css", &["Range: bytes=0-3"]);
    assert_eq!((r.status, r.text().as_str()), (206, "body"));
    assert_eq!(r.header("content-range"), Some("bytes 0-3/19"));
    assert_eq!(get(&addr, "/style.css", &["Range: bytes=-3"]).text(), "d }");
    assert_eq!(get(&addr, "/style.css", &["Range: bytes=15-"]).text(), "ed }");
    let r = get(&addr, "/style.css", &["Range: bytes=100-"]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */19"));
    // If-Range: the range only while the file is the one the client has.
    let etag = get(&addr, "/style.css", &[]).header("etag").unwrap().to_owned();
    let r = get(
        &addr,
        "/style.css",
        &["Range: bytes=0-3", &format!("If-Range: {etag}")],
    );
    assert_eq!(r.status, 206);
    let r = get(&addr, "/style.css", &["Range: bytes=0-3", "If-Range: \"stale\""]);
    assert_eq!(
        (r.status, r.body.len()),
        (200, 19),
        "a changed file is sent whole"
    );
}

#[test]
fn no_request_reaches_outside_the_root_or_hidden_files() {
    let (_sandbox, _daemon, addr) = site();
    let attacks = [
        "/../secret.txt",
        "/docs/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/%2e./secret.txt",
        "/.%2E/secret.txt",
        "/..%2fsecret.txt",
        "/..%2Fsecret.txt",
        "/docs/..%2f..%2fsecret.txt",
        "/..\\secret.txt",
        "/..%5csecret.txt",
        "/..%5Csecret.txt",
        "/%252e%252e/secret.txt",
        "/%252e%252e%252fsecret.txt",
        "/%25%32%65%25%32%65/secret.txt",
        "/%c0%ae%c0%ae/secret.txt",
        "/%uff0e%uff0e/secret.txt",
        "/docs/%00/../../secret.txt",
        "/escape.txt",
        "/up/secret.txt",
        "/up/public/.env",
        "/.env",
        "/%2eenv",
        "/.git/config",
        "/.git/",
        "//secret.txt",
        "/./../secret.txt",
    ];
    for attack in attacks {
        let r = get(&addr, attack, &[]);
        assert!(
            matches!(r.status, 400 | 404),
            "{attack}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("SECRET"), "{attack} leaked");
    }
}

#[test]
fn hidden_files_are_served_when_allowed() {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "hidden = true", &one_route("true", ""));
    sandbox.write("public/.well-known/security.txt", "contact");
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    assert_eq!(get(&addr, "/.well-known/security.txt", &[]).text(), "contact");
    assert_eq!(
        get(&addr, "/%2e%2e/site.toml", &[]).status,
        400,
        "still no traversal"
    );
}

#[test]
fn oversized_heads_are_refused_and_idle_connections_closed() {
    let (_sandbox, _daemon, addr) = site();
    let big = format!("GET / HTTP/1.1\r\nX-Filler: {}", "x".repeat(20 * 1024));
    // 431; or, when the server closes while the client is still sending, a reset.
    let refused = request(&addr, &big).status;
    assert!(matches!(refused, 431 | 0), "{refused}");

    let start = std::time::Instant::now();
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    // Meanwhile others are served.
    assert_eq!(get(&addr, "/style.css", &[]).status, 200);
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut silent, &mut buf).unwrap_or(0);
    let took = start.elapsed();
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        "closed"
    );
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn injected_html_has_consistent_length_and_its_own_etag() {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "inject = true", &one_route("true", ""));
    sandbox.write("public/index.html", "<html><head></head><body>home</body></html>");
    sandbox.write("public/plain.txt", "</body>");
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let r = get(&addr, "/", &[]);
    // The client by its version, async: the page neither waits for it nor fetches it
    // again on a reload.
    let js = get(&addr, "/livereload.js", &[]);
    let version = js.header("etag").unwrap().trim_matches('"').to_owned();
    let expected = format!(
        "<html><head></head><body>home<script src=\"/livereload.js?v={version}\" async></script></body></html>"
    );
    assert_eq!(r.text(), expected);
    assert_eq!(
        r.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert!(
        r.header("etag")
            .unwrap()
            .ends_with(&format!("-lr{}\"", &version[..8])),
        "{:?}",
        r.header("etag")
    );
    assert_eq!(
        get(&addr, "/plain.txt", &[]).text(),
        "</body>",
        "only HTML is injected"
    );
    assert_eq!(js.status, 200);
    assert!(js.text().contains("official-7"));
    assert_eq!(js.header("cache-control"), Some("no-cache"));
}

#[test]
fn regression_html_over_the_inject_cap_is_served_unchanged_without_the_script() {
    // With `inject = true` every HTML file was read whole into memory for each
    // request, whatever its size: 60 readers of an 8 MiB page held 640 MB. Past the
    // cap a page is served as it is, with sendfile; up to it, it gets the script.
    // `MAX_INJECT` (src/http/files.rs), as docs/http.md gives it.
    let cap = 1024 * 1024;
    let page = |len: usize| {
        let (head, tail) = ("<html><body>", "</body></html>");
        format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
    };
    let (at_cap, over) = (page(cap), page(cap + 1));
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "inject = true", &one_route("true", ""));
    sandbox.write("public/at.html", &at_cap);
    sandbox.write("public/over.html", &over);
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    for _ in 0..2 {
        let r = get(&addr, "/over.html", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some((cap + 1).to_string().as_str()));
        assert!(
            r.body == over.as_bytes(),
            "served changed ({} bytes)",
            r.body.len()
        );
        let etag = r.header("etag").unwrap();
        assert!(!etag.contains("-lr"), "an injected page's ETag: {etag}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    }
    let r = get(&addr, "/at.html", &[]);
    let text = r.text();
    assert!(
        text.ends_with("async></script></body></html>") && text.len() > cap,
        "no script at the cap: {}",
        &text[text.len() - 80..]
    );
    // Said once in the log, not once a request.
    let said = daemon
        .log()
        .matches("served without the LiveReload script")
        .count();
    assert_eq!(said, 1, "{}", daemon.log());
}

#[test]
fn the_client_by_its_version_is_kept_and_without_it_is_revalidated() {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "inject = true", &one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let plain = get(&addr, "/livereload.js", &[]);
    let etag = plain.header("etag").expect("an ETag").to_owned();
    let version = etag.trim_matches('"');
    let versioned = get(&addr, &format!("/livereload.js?v={version}"), &[]);
    assert_eq!(versioned.status, 200);
    assert_eq!(versioned.body, plain.body);
    assert_eq!(
        versioned.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    // Another version (an old page's) is not promised for good.
    let other = get(&addr, "/livereload.js?v=0", &[]);
    assert_eq!(other.header("cache-control"), Some("no-cache"));
    // Revalidation by the ETag: 304, no body.
    let again = get(&addr, "/livereload.js", &[&format!("If-None-Match: {etag}")]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
}

#[test]
fn bind_failure_is_a_clear_error_and_a_failed_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "", &one_route("true", "")).to_owned();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:0", &addr.to_string());
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::spawn(&sandbox, &config);
    let (status, _) = daemon.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(
        daemon.log().contains(&format!("cannot listen on {addr}")),
        "{}",
        daemon.log()
    );
    // Everything the daemon sent is queued on the socket by now (it flushes before exit).
    daemon.notify.drain();
    assert_eq!(
        daemon.notify.count("READY=1"),
        0,
        "no READY=1 before a failed start: {:?}",
        daemon.notify.messages
    );
    assert!(
        !sandbox.socket().exists(),
        "the control socket is removed on a failed start"
    );
}

#[test]
fn shutdown_stops_listeners_before_the_server() {
    let (_sandbox, mut daemon, addr) = site();
    assert_eq!(get(&addr, "/", &[]).status, 200);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit().0.code(), Some(0));
    let log = daemon.log();
    let at = |s: &str| log.find(s).unwrap_or_else(|| panic!("no {s:?} in {log}"));
    assert!(at("listeners stopped") < at("stopping HTTP server"));
    assert!(at("stopping HTTP server") < at("HTTP server stopped"));
    assert!(at("HTTP server stopped") < at("control socket closed"));
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the port is released"
    );
}

#[test]
fn serves_on_the_socket_systemd_passes() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = passed.local_addr().unwrap().to_string();
    let sandbox = Sandbox::new();
    sandbox.write("public/index.html", "activated");
    // `listen` names another port: the passed socket must win.
    let config = site_config(&sandbox, "", &one_route("true", "")).to_owned();
    let notify = NotifySocket::new(sandbox.dir.path());
    let fd = passed.as_raw_fd();
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_execlibd"))
        .arg("--config")
        .arg(&config)
        .arg("--log-format=text")
        .env("NOTIFY_SOCKET", &notify.path)
        // As Daemon::spawn does: never the host's /var/lib/execlib/site.
        .env("STATE_DIRECTORY", sandbox.path("state"))
        .stderr(std::fs::File::create(sandbox.path("daemon.log")).unwrap());
    // SAFETY: between fork and exec only dup2, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) >= 0
            } else {
                libc::dup2(fd, 3) >= 0
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = command.spawn().unwrap();
    let mut daemon = Daemon {
        child,
        notify,
        socket: sandbox.socket(),
        log: sandbox.path("daemon.log"),
    };
    daemon.notify.wait_for("READY=1");
    drop(passed); // only the daemon holds it now
    assert_eq!(http_addr(&daemon), addr);
    assert_eq!(get(&addr, "/", &[]).text(), "activated");
    let status = daemon.request(r#"{"cmd":"status"}"#);
    assert_eq!(status["server"]["socket_activated"], true, "{status}");
}

#[test]
fn a_cached_file_is_never_served_stale() {
    let (sandbox, daemon, addr) = site();
    let cached = || daemon.request(r#"{"cmd":"status"}"#)["server"]["cached_files"].as_u64();
    // A file is cached once it has been quiet for a second and is asked for again;
    // an answer reached through a symlink (alias.css) never is.
    eventually("style.css, docs/ and / to be cached", || {
        assert!(get(&addr, "/", &[]).text().contains("home"));
        assert_eq!(get(&addr, "/style.css", &[]).text(), "body { color: red }");
        assert_eq!(get(&addr, "/docs/", &[]).text(), "docs");
        assert_eq!(get(&addr, "/alias.css", &[]).text(), "body { color: red }");
        (cached()? >= 3).then_some(())
    });
    assert_eq!(cached(), Some(3));
    // Rewritten in place, same size: the next answer has the new bytes.
    std::fs::write(sandbox.path("public/style.css"), "body { color: tan }").unwrap();
    assert_eq!(get(&addr, "/style.css", &[]).text(), "body { color: tan }");
    // Renamed over, as site generators write.
    std::fs::write(sandbox.path("public/next.css"), "p { margin: 0 }").unwrap();
    std::fs::rename(sandbox.path("public/next.css"), sandbox.path("public/style.css")).unwrap();
    assert_eq!(get(&addr, "/style.css", &[]).text(), "p { margin: 0 }");
    // The cached page's folder hidden behind a symlink: the same file, now refused.
    std::fs::rename(sandbox.path("public/docs"), sandbox.path("public/.docs")).unwrap();
    std::os::unix::fs::symlink(".docs", sandbox.path("public/docs")).unwrap();
    assert_eq!(get(&addr, "/docs/", &[]).status, 404);
    // Deleted: gone at once.
    std::fs::remove_file(sandbox.path("public/style.css")).unwrap();
    assert_eq!(get(&addr, "/style.css", &[]).status, 404);
    // The whole root swapped for a new build (a deploy by rename): the new page.
    std::fs::rename(sandbox.path("public"), sandbox.path("public.old")).unwrap();
    sandbox.write("public/index.html", "<html><body>new build</body></html>");
    assert!(get(&addr, "/", &[]).text().contains("new build"));
}

#[test]
fn host_missing_or_repeated_gets_400() {
    let (_sandbox, _daemon, addr) = site();
    let ask = |head: &str| send_raw(&addr, &format!("{head}Connection: close\r\n\r\n")).status;
    assert_eq!(ask("GET / HTTP/1.1\r\n"), 400, "HTTP/1.1 without Host");
    let twice = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nHost: {addr}\r\n");
    assert_eq!(ask(&twice), 400, "two Host fields");
    assert_eq!(ask("GET / HTTP/1.1\r\nHost: a b\r\n"), 400, "not an authority");
    assert_eq!(ask("GET / HTTP/1.1\r\nHost: user@x\r\n"), 400, "userinfo");
    assert_eq!(ask(&format!("GET / HTTP/1.1\r\nHost: {addr}\r\n")), 200);
    assert_eq!(
        ask("GET / HTTP/1.1\r\nHost:\r\n"),
        200,
        "an empty Host is allowed"
    );
    assert_eq!(ask("GET / HTTP/1.0\r\n"), 200, "HTTP/1.0 needs no Host");
}

/// `GET /style.css` with `Host: host`: its status.
fn status_for_host(addr: &str, host: &str) -> u16 {
    let raw = format!("GET /style.css HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    send_raw(addr, &raw).status
}

#[test]
fn regression_a_dns_rebinding_page_could_read_a_site_on_loopback() {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "allowed_hosts = []", &one_route("true", ""));
    sandbox.write("public/style.css", "body { color: red }");
    let _daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&_daemon);
    let port = addr.rsplit(':').next().unwrap();
    let r = send_raw(
        &addr,
        &format!("GET /style.css HTTP/1.1\r\nHost: rebind.evil.example:{port}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 421, "a name that resolved to 127.0.0.1 for a moment");
    assert!(!r.text().contains("color"), "nothing of the site: {}", r.text());
    // An absolute-form target names its host in place of `Host` (RFC 9112 3.2.2).
    let r = send_raw(
        &addr,
        &format!(
            "GET http://evil.example:{port}/style.css HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 421, "regression: judged by its Host, it was served");
    assert_eq!(status_for_host(&addr, "localhost.evil.example"), 421);
    for local in [
        format!("localhost:{port}"),
        format!("app.localhost:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
        addr.clone(),
    ] {
        assert_eq!(status_for_host(&addr, &local), 200, "{local}");
    }
}

#[test]
fn allowed_hosts_are_answered_and_without_them_any_host_for_a_proxy() {
    let sandbox = Sandbox::new();
    let allowed = "allowed_hosts = [\"dev.example.test\"]";
    let config = site_config(&sandbox, allowed, &one_route("true", ""));
    sandbox.write("public/style.css", "body {}");
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    assert_eq!(status_for_host(&addr, "dev.example.test:8080"), 200);
    assert_eq!(status_for_host(&addr, "other.example.test"), 421);
    drop(daemon);
    // On every address too: a phone on the LAN names it by its IP.
    let all = sandbox.config(&format!(
        "[server]\nlisten = \"0.0.0.0:0\"\nroot = \"public\"\n{allowed}\n{}",
        one_route("true", "")
    ));
    let daemon = Daemon::start(&sandbox, &all);
    let port = http_addr(&daemon).rsplit(':').next().unwrap().to_owned();
    let local = format!("127.0.0.1:{port}");
    assert_eq!(status_for_host(&local, "www.example.test"), 421);
    assert_eq!(status_for_host(&local, &format!("192.168.1.20:{port}")), 200);
    drop(daemon);
    // Without allowed_hosts (a site behind a reverse proxy, which passes the public
    // name on): any name is answered, as before.
    let proxied = site_config(&sandbox, "", &one_route("true", ""));
    let daemon = Daemon::start(&sandbox, &proxied);
    assert_eq!(status_for_host(&http_addr(&daemon), "www.example.test"), 200);
}

#[test]
fn a_trailing_slash_after_a_file_is_404() {
    let (_sandbox, _daemon, addr) = site();
    assert_eq!(get(&addr, "/index.html/", &[]).status, 404);
    assert_eq!(get(&addr, "/style.css/", &[]).status, 404);
    assert_eq!(
        get(&addr, "/alias.css/", &[]).status,
        404,
        "through a symlink too"
    );
    assert_eq!(get(&addr, "/docs/", &[]).status, 200);
}

#[test]
fn more_than_100_header_fields_get_431_like_an_oversized_head() {
    let (_sandbox, _daemon, addr) = site();
    // `request` adds Host and Connection: 98 more make 100 fields, 99 make 101, in
    // well under the 16 KiB head limit.
    let fields = |n: usize| (0..n).map(|i| format!("X-{i}: y")).collect::<Vec<_>>();
    let at_limit = fields(98);
    let refs: Vec<&str> = at_limit.iter().map(String::as_str).collect();
    assert_eq!(get(&addr, "/style.css", &refs).status, 200);
    let over = fields(99);
    let refs: Vec<&str> = over.iter().map(String::as_str).collect();
    let head_len: usize = refs.iter().map(|h| h.len() + 2).sum();
    assert!(head_len < 2 * 1024);
    assert_eq!(get(&addr, "/style.css", &refs).status, 431);
}

/// `GET path`, its status line, and how many body bytes came, read 64 KiB at a time
/// (never kept) after waiting `pause` with the body unread.
fn get_counting(addr: &str, path: &str, pause: std::time::Duration) -> (String, u64) {
    use std::io::{BufRead, Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 2 {
        line.clear();
    }
    std::thread::sleep(pause);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf).unwrap() {
            0 => return (status.trim_end().to_owned(), total),
            n => total += n as u64,
        }
    }
}

#[test]
fn a_file_over_the_cache_size_is_streamed_and_memory_stays_flat() {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "", &one_route("true", ""));
    const SIZE: u64 = 100 * 1024 * 1024;
    // Sparse: 100 MiB of zeros that take no disk.
    std::fs::File::create(sandbox.path("public/big.bin"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let before = status_kib(daemon.pid(), "VmRSS");
    reset_peak_rss(daemon.pid());
    // The body waits unread for a second: a server that read ahead of the client
    // (the whole file, or chunks without back-pressure) would hold it meanwhile.
    let (status, got) = get_counting(&addr, "/big.bin", std::time::Duration::from_secs(1));
    assert_eq!((status.as_str(), got), ("HTTP/1.1 200 OK", SIZE));
    let peak = status_kib(daemon.pid(), "VmHWM");
    assert!(
        peak < before + 20 * 1024,
        "peak RSS {peak} KiB while serving 100 MiB, from {before} KiB before"
    );
}

/// `len` bytes no two runs of which repeat for a long way (xorshift): a server that
/// sent zeros, or a region twice, or out of order, gives other bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Reads one response from `reader` (a body unless `head_only`): status, headers, body.
fn read_response(reader: &mut impl std::io::BufRead, head_only: bool) -> Reply {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed mid-head"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    if !head_only {
        let len: usize = reply.header("content-length").unwrap().parse().unwrap();
        reply.body = vec![0; len];
        reader.read_exact(&mut reply.body).unwrap();
    }
    reply
}

/// A site whose `public/big.bin` is `noise(len, seed)`, served by a started daemon:
/// the sandbox, the daemon, its address and the file's bytes.
fn big_file_site(len: usize, seed: u64) -> (Sandbox, Daemon, String, Vec<u8>) {
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "", &one_route("true", ""));
    let big = noise(len, seed);
    std::fs::write(sandbox.path("public/big.bin"), &big).unwrap();
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    (sandbox, daemon, addr, big)
}

/// A connection to `addr` that has asked for `/big.bin` (reads time out after [`DEADLINE`]).
fn asking_for_big(addr: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET /big.bin HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    stream
}

#[test]
fn large_files_ranges_and_head_come_whole_and_in_order_on_one_connection() {
    use std::io::Write;
    // Past the cache size and over three of the sender's 1 MiB regions.
    let (sandbox, _daemon, addr, big) = big_file_site(3 * 1024 * 1024 + 12_345, 7);
    sandbox.write("public/small.txt", "small");
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // All pipelined at once: each body must go out in its request's turn.
    let requests = [
        ("GET", "/big.bin", ""),
        ("GET", "/small.txt", ""),
        ("GET", "/big.bin", "Range: bytes=1048570-2097160\r\n"),
        ("HEAD", "/big.bin", ""),
        ("GET", "/big.bin", "Range: bytes=-100\r\n"),
        ("GET", "/big.bin", ""),
    ];
    let mut raw = String::new();
    for (method, path, extra) in requests {
        raw.push_str(&format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n"
        ));
    }
    stream.write_all(raw.as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let r = read_response(&mut reader, false);
    assert_eq!(r.status, 200);
    assert!(r.body == big, "the whole file, byte for byte");
    assert_eq!(read_response(&mut reader, false).body, b"small");
    let r = read_response(&mut reader, false);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1048570-2097160/{}", big.len()).as_str())
    );
    assert!(
        r.body == big[1048570..=2097160],
        "a range across regions, byte for byte"
    );
    let r = read_response(&mut reader, true);
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some(big.len().to_string().as_str()))
    );
    let r = read_response(&mut reader, false);
    assert!(
        r.status == 206 && r.body == big[big.len() - 100..],
        "the last 100 bytes"
    );
    let r = read_response(&mut reader, false);
    assert!(r.body == big, "the file again, whole");
}

#[test]
fn a_large_file_cut_short_while_sent_closes_the_connection_without_a_hang() {
    use std::io::Read;
    let (sandbox, _daemon, addr, big) = big_file_site(64 * 1024 * 1024, 11);
    let mut reader = std::io::BufReader::new(asking_for_big(&addr));
    let r = read_response(&mut reader, true);
    assert_eq!(r.header("content-length"), Some(big.len().to_string().as_str()));
    let mut first = vec![0; 1024 * 1024];
    reader.read_exact(&mut first).unwrap();
    // The socket's buffers hold a few MiB at most: what comes later is read after this.
    std::fs::OpenOptions::new()
        .write(true)
        .open(sandbox.path("public/big.bin"))
        .unwrap()
        .set_len(8 * 1024 * 1024)
        .unwrap();
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .expect("the connection is closed, not left hanging");
    let got = first.len() + rest.len();
    assert!(got < big.len(), "{got} bytes of a file cut to 8 MiB");
    let mut whole = first;
    whole.extend_from_slice(&rest);
    assert!(
        whole == big[..got],
        "what came is the file's start, byte for byte"
    );
    assert_eq!(
        get(&addr, "/big.bin", &["Range: bytes=0-3"]).body,
        &big[..4],
        "still serving"
    );
}

#[test]
fn clients_that_vanish_mid_download_leave_the_daemon_serving() {
    use std::io::Read;
    let (_sandbox, _daemon, addr, big) = big_file_site(16 * 1024 * 1024, 5);
    // Each takes a little and goes: half close politely, half reset (linger 0), while
    // `sendfile` is writing to them (EPIPE, ECONNRESET, never SIGPIPE).
    for i in 0..40 {
        let mut stream = asking_for_big(&addr);
        let mut some = [0u8; 64 * 1024];
        stream.read_exact(&mut some).unwrap();
        if i % 2 == 0 {
            linger_zero(&stream);
        }
        drop(stream);
    }
    let r = get(&addr, "/big.bin", &["Range: bytes=100-199"]);
    assert!(
        r.status == 206 && r.body == big[100..200],
        "still serving, byte for byte"
    );
}

/// Sets `SO_LINGER` to zero, so closing `stream` resets the connection.
fn linger_zero(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger`, a live struct of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn regression_a_client_that_stopped_reading_held_its_connection_for_ever() {
    use std::io::Read;
    let sandbox = Sandbox::new();
    let config = site_config(&sandbox, "send_timeout_ms = 2000", &one_route("true", ""));
    let big = noise(8 * 1024 * 1024, 3);
    std::fs::write(sandbox.path("public/big.bin"), &big).unwrap();
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let server: std::net::SocketAddr = addr.parse().unwrap();

    // It asks for the file and reads nothing: the server's writes wait, and past the
    // send timeout it closes its end (it stayed established for ever before).
    let stalled = asking_for_big(&addr);
    let client = stalled.local_addr().unwrap();
    let state = || server_ends(server).get(&client.port()).copied();
    assert_eq!(state(), Some(TCP_ESTABLISHED));
    let deadline = std::time::Instant::now() + DEADLINE;
    while state() == Some(TCP_ESTABLISHED) {
        assert!(
            std::time::Instant::now() < deadline,
            "the server still holds a connection whose client took nothing for {DEADLINE:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A client that reads in steps, pausing under the timeout, gets the whole file:
    // the clock starts again whenever it takes something.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    small_receive_buffer(&slow);
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    std::io::Write::write_all(
        &mut slow,
        format!("GET /big.bin HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(slow);
    let r = read_response(&mut reader, true);
    assert_eq!(r.status, 200);
    let mut got = Vec::new();
    let mut step = vec![0; 1024 * 1024];
    while got.len() < big.len() {
        std::thread::sleep(std::time::Duration::from_millis(700));
        let want = step.len().min(big.len() - got.len());
        reader
            .read_exact(&mut step[..want])
            .expect("not cut off while reading");
        got.extend_from_slice(&step[..want]);
    }
    assert!(got == big, "the whole file, byte for byte");
}

/// One client opening connections without end took every connection slot (4,096),
/// and every other client was shut out. Now a client address's connections beyond
/// `max_connections_per_address` are closed as soon as accepted (counted and
/// warned of), and other clients are served meanwhile.
#[test]
fn regression_one_client_address_took_every_connection_slot() {
    use std::net::Ipv4Addr;
    let sandbox = Sandbox::new();
    let config = site_config(
        &sandbox,
        "max_connections_per_address = 4",
        &one_route("true", ""),
    );
    std::fs::write(sandbox.path("public/hello.txt"), "hello").unwrap();
    let daemon = Daemon::start(&sandbox, &config);
    let addr = http_addr(&daemon);
    let (hog, other) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));

    // Four silent connections from one address: its fifth is closed unanswered.
    let mut held: Vec<_> = (0..4).map(|_| connect_from(hog, &addr)).collect();
    assert_eq!(get_from(hog, &addr, "/hello.txt").status, 0, "a fifth is refused");
    assert_eq!(
        get_from(other, &addr, "/hello.txt").text(),
        "hello",
        "others are served"
    );
    let metrics = String::from_utf8(daemon.ctl(&["metrics"]).stdout).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "execlib_http_connections_refused_total{reason=\"per_address\"} 1"),
        "{metrics}"
    );
    assert!(daemon.log().contains("already open from this client's address"));

    // One of them closed: the address is served again.
    held.pop();
    eventually(
        "a place for the address once one of its connections closed",
        || (get_from(hog, &addr, "/hello.txt").status == 200).then_some(()),
    );
}
