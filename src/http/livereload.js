// execlib's LiveReload client (protocol 7). Connects to the server it was loaded
// from, reloads the page when told (keeping the reader's scroll position), swaps
// stylesheets and images in place, shows a failed build over the page (and clears it
// when a build succeeds), and reconnects with back-off when the server restarts.
(function () {
  var PROTOCOL = "http://livereload.com/protocols/official-7";
  var scheme = location.protocol === "https:" ? "wss:" : "ws:";
  var url = scheme + "//" + location.host + "/livereload";
  var backoff = 500;
  var SCROLL = "execlib-livereload-scroll:" + location.pathname;

  // After a reload of this page: back to where the reader was, once the page is
  // tall enough (content may arrive after the load), for at most 2 s.
  function restoreScroll() {
    var saved;
    try { saved = JSON.parse(sessionStorage.getItem(SCROLL)); } catch (e) { return; }
    if (!saved) return;
    sessionStorage.removeItem(SCROLL);
    var until = Date.now() + 2000;
    (function attempt() {
      window.scrollTo(saved[0], saved[1]);
      var there = Math.abs(window.scrollY - saved[1]) < 2 && Math.abs(window.scrollX - saved[0]) < 2;
      if (!there && Date.now() < until) setTimeout(attempt, 50);
    })();
  }

  function connect() {
    var ws = new WebSocket(url);
    ws.onopen = function () {
      backoff = 500;
      ws.send(JSON.stringify({ command: "hello", protocols: [PROTOCOL] }));
    };
    ws.onmessage = function (event) {
      var msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      if (msg.command === "hello") {
        // A failure still current is sent again right after this; an old one goes.
        var shown = document.getElementById(OVERLAY);
        if (shown) shown.remove();
        ws.send(JSON.stringify({ command: "info", plugins: {}, url: location.href }));
      } else if (msg.command === "reload") {
        reload(msg);
      } else if (msg.command === "alert") {
        window.alert(msg.message);
      } else if (msg.command === "execlib-build") {
        build(msg);
      }
    };
    ws.onclose = function () {
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  function reload(msg) {
    if (msg.liveCSS && /\.css$/i.test(msg.path)) {
      var links = document.querySelectorAll('link[rel~="stylesheet"]');
      var matching = [];
      for (var i = 0; i < links.length; i++) {
        // The server names files decoded (`/my style.css`); a link's pathname is encoded.
        var path = new URL(links[i].href).pathname;
        try { path = decodeURIComponent(path); } catch (e) {}
        if (path === msg.path) matching.push(links[i]);
      }
      // No link names it (an @import, say): refresh every stylesheet, still without a reload.
      (matching.length ? matching : Array.prototype.slice.call(links)).forEach(swap);
      return;
    }
    if (msg.liveImg && IMAGE.test(msg.path)) {
      // Sent to every page, since any may show it: only those that do refetch it.
      swapImages(msg.path);
      return;
    }
    try { sessionStorage.setItem(SCROLL, JSON.stringify([window.scrollX, window.scrollY])); } catch (e) {}
    location.reload();
  }

  var OVERLAY = "execlib-build-failed";

  // Terminal colour and cursor codes (from a build run with FORCE_COLOR, say) would
  // show as junk: CSI and OSC sequences and stray escapes are dropped.
  function plain(text) {
    return String(text).replace(/\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?/g, "");
  }

  // A failed build over the page: every field as text (textContent), never as HTML.
  function build(msg) {
    var shown = document.getElementById(OVERLAY);
    if (shown) shown.remove();
    if (msg.ok) {
      if (shown) reload({ path: location.pathname });
      return;
    }
    var box = document.createElement("div");
    box.id = OVERLAY;
    box.setAttribute("role", "alert");
    box.style.cssText = "position:fixed;top:0;left:0;right:0;bottom:0;z-index:2147483647;overflow:auto;" +
      "margin:0;padding:24px;background:rgba(24,24,24,.95);color:#eee;font:14px/1.45 monospace";
    function add(tag, text, css) {
      var e = document.createElement(tag);
      e.textContent = text;
      if (css) e.style.cssText = css;
      box.appendChild(e);
    }
    add("div", "Build failed", "font-size:20px;font-weight:bold;color:#ff6b6b;margin-bottom:12px");
    add("div", "listener " + msg.listener + ", route " + msg.route);
    add("div", "file " + msg.file);
    add("div", plain(msg.reason || "failed"), "color:#ffb86b;margin:8px 0 12px");
    add("pre", plain((msg.output || []).join("\n")), "white-space:pre-wrap;margin:0;font:inherit");
    add("div", "Cleared by the next build that succeeds. Click to hide.", "margin-top:16px;color:#999");
    box.onclick = function () { box.remove(); };
    (document.body || document.documentElement).appendChild(box);
  }

  var IMAGE = /\.(png|jpe?g|gif|svg|webp|avif|ico)$/i;

  // Whether `href` (relative to `base`) names the server's file `path`: same origin,
  // its pathname decoded (the server names files decoded).
  function names(href, base, path) {
    var u;
    try { u = new URL(href, base); } catch (e) { return false; }
    if (u.origin !== location.origin) return false;
    var name = u.pathname;
    try { name = decodeURIComponent(name); } catch (e) {}
    return name === path;
  }

  function busted(href, base) {
    var u = new URL(href, base);
    u.searchParams.set("livereload", Date.now());
    return u.toString();
  }

  // An image refetched where the page shows it: <img src>, srcset, icons, and url()
  // in inline styles and the page's own stylesheets. Nowhere: nothing to do.
  function swapImages(path) {
    var base = document.baseURI;
    document.querySelectorAll("img[src]").forEach(function (img) {
      if (names(img.getAttribute("src"), base, path)) img.src = busted(img.getAttribute("src"), base);
    });
    document.querySelectorAll("img[srcset], source[srcset]").forEach(function (el) {
      // Candidates part at a comma and white space (a data: URL has a bare comma).
      var parts = el.srcset.split(/,\s+/), hit = false;
      parts = parts.map(function (part) {
        var bits = part.trim().split(/\s+/);
        if (names(bits[0], base, path)) { bits[0] = busted(bits[0], base); hit = true; }
        return bits.join(" ");
      });
      if (hit) el.srcset = parts.join(", ");
    });
    document.querySelectorAll('link[rel~="icon"]').forEach(function (l) {
      if (names(l.href, base, path)) l.href = busted(l.href, base);
    });
    document.querySelectorAll("[style]").forEach(function (el) { restyle(el.style, base, path); });
    Array.prototype.forEach.call(document.styleSheets, function (sheet) {
      var rules;
      try { rules = sheet.cssRules; } catch (e) { return; } // another origin's
      restyleRules(rules, sheet.href || base, path);
    });
  }

  function restyleRules(rules, base, path) {
    Array.prototype.forEach.call(rules || [], function (rule) {
      if (rule.style) restyle(rule.style, base, path);
      if (rule.cssRules) restyleRules(rule.cssRules, base, path);
      if (rule.styleSheet) { // @import: its own rules, relative to its own URL
        try { restyleRules(rule.styleSheet.cssRules, rule.styleSheet.href || base, path); } catch (e) {}
      }
    });
  }

  var IMAGE_PROPERTIES = ["background-image", "border-image-source", "list-style-image", "mask-image", "content"];

  function restyle(style, base, path) {
    IMAGE_PROPERTIES.forEach(function (property) {
      var value = style.getPropertyValue(property);
      if (value.indexOf("url(") < 0) return;
      var changed = value.replace(/url\((['"]?)([^'")]+)\1\)/g, function (whole, quote, href) {
        return names(href, base, path) ? 'url("' + busted(href, base) + '")' : whole;
      });
      if (changed !== value) style.setProperty(property, changed, style.getPropertyPriority(property));
    });
  }

  function swap(link) {
    var fresh = new URL(link.href);
    fresh.searchParams.set("livereload", Date.now());
    var clone = link.cloneNode();
    clone.href = fresh.toString();
    clone.onload = function () { link.remove(); };
    link.parentNode.insertBefore(clone, link.nextSibling);
  }

  if (document.readyState === "complete") restoreScroll();
  else window.addEventListener("load", restoreScroll);
  connect();
})();
