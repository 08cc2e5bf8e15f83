// execlib's LiveReload client (protocol 7). Connects to the server it was loaded
// from, reloads the page when told, swaps stylesheets in place, and reconnects
// with back-off when the server restarts.
(function () {
  var PROTOCOL = "http://livereload.com/protocols/official-7";
  var scheme = location.protocol === "https:" ? "wss:" : "ws:";
  var url = scheme + "//" + location.host + "/livereload";
  var backoff = 500;

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
        ws.send(JSON.stringify({ command: "info", plugins: {}, url: location.href }));
      } else if (msg.command === "reload") {
        reload(msg);
      } else if (msg.command === "alert") {
        window.alert(msg.message);
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
        if (new URL(links[i].href).pathname === msg.path) matching.push(links[i]);
      }
      // No link names it (an @import, say): refresh every stylesheet, still without a reload.
      (matching.length ? matching : Array.prototype.slice.call(links)).forEach(swap);
      return;
    }
    location.reload();
  }

  function swap(link) {
    var fresh = new URL(link.href);
    fresh.searchParams.set("livereload", Date.now());
    var clone = link.cloneNode();
    clone.href = fresh.toString();
    clone.onload = function () { link.remove(); };
    link.parentNode.insertBefore(clone, link.nextSibling);
  }

  connect();
})();
