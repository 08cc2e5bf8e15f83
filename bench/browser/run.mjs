// Save -> new content in headless Chromium, end to end, for execlib and the
// LiveReload peers at their defaults, in one run (see bench/browser.sh).
//
// For each server: a fresh site (index.html with a stylesheet), one Chromium page
// on it, then saves. An HTML save rewrites index.html with a new heading; its time
// is from just before the write to the new page's DOMContentLoaded with that
// heading. A CSS save rewrites style.css with a new colour; its time is to the
// moment the heading's computed colour is the new one (checked on every
// stylesheet load and every frame), and the page must not have reloaded. Both
// clocks are the machine's wall clock (performance.timeOrigin + now(), in Node
// and in the page), so the times include the watcher, the server's delay, the
// message, the client's work and the browser's fetch and parse.
//
// Usage: node run.mjs [--saves N] [--rounds R] [--settle MS] [--only NAME,...]
//        [--execlibd PATH] [--chromium PATH] [--json FILE]

import puppeteer from "puppeteer-core";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const bin = (name) => path.join(here, "node_modules", ".bin", name);

function options(argv) {
  const o = {
    saves: 15,
    rounds: 1,
    settle: 1000,
    only: null,
    execlibd: path.join(here, "..", "..", "target", "release", "execlibd"),
    chromium: "/usr/bin/chromium",
    json: null,
  };
  for (let i = 2; i < argv.length; i += 2) {
    const [key, value] = [argv[i].replace(/^--/, ""), argv[i + 1]];
    if (!(key in o) || value === undefined) throw new Error(`unknown or incomplete option ${argv[i]}`);
    o[key] = ["saves", "rounds", "settle"].includes(key) ? Number(value) : value;
  }
  if (o.only) o.only = o.only.split(",");
  return o;
}

const LR_SNIPPET = '<script src="http://127.0.0.1:35729/livereload.js?snipver=1"></script>';

const page = (version, snippet) =>
  `<!doctype html><html><head><meta charset="utf-8"><title>bench</title>` +
  `<link rel="stylesheet" href="/style.css"></head><body><h1 id="t">v${version}</h1>` +
  `<p>Some text, as a page has.</p>${snippet}</body></html>\n`;
const style = (version) => `h1 { color: rgb(${version % 256}, 0, 100); }\n`;
const colour = (version) => `rgb(${version % 256}, 0, 100)`;

// Each server at its defaults; only ports and "do not open a browser" are set.
// `snippet`: what the page must carry itself (servers that inject add theirs).
const SERVERS = {
  execlib: {
    version: (o) => run(o.execlibd, ["--version"]),
    snippet: "",
    start: (o, dir, port) => [spawnIn(dir, o.execlibd, ["serve", dir, "--port", String(port)])],
  },
  "node-livereload": {
    version: () => pkg("livereload") + " + nginx",
    snippet: LR_SNIPPET,
    // Its LiveReload server is a second process: the page needs both.
    ready: ["http://127.0.0.1:35729/livereload.js"],
    start: (o, dir, port) => [
      spawnIn(dir, "nginx", ["-c", nginxConf(dir, port), "-g", "daemon off;"]),
      spawnIn(dir, bin("livereload"), [dir]),
    ],
  },
  "live-server": {
    version: () => pkg("live-server"),
    snippet: "",
    start: (o, dir, port) => [
      spawnIn(dir, bin("live-server"), [dir, `--port=${port}`, "--host=127.0.0.1", "--no-browser", "--quiet"]),
    ],
  },
  "browser-sync": {
    version: () => pkg("browser-sync"),
    snippet: "",
    start: async (o, dir, port) => [
      spawnIn(dir, bin("browser-sync"), [
        "start", "--server", "--watch", "--no-open", "--port", String(port), "--ui-port", String(await freePort()),
      ]),
    ],
  },
};

// The static server beside node-livereload: nginx, with the cache headers
// execlib sends (`Cache-Control: no-cache`), but never 304 (its ETag and
// If-Modified-Since compare whole seconds, so a page saved twice in one second
// would come back 304 and the browser would show the old one).
function nginxConf(site, port) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lrbench-nginx-"));
  scratch.push(dir);
  // Its workers run as another user when started by root.
  fs.chmodSync(site, 0o755);
  const conf = path.join(dir, "nginx.conf");
  fs.writeFileSync(
    conf,
    `worker_processes 1;\npid ${dir}/nginx.pid;\nerror_log ${dir}/error.log;\nevents { worker_connections 256; }\n` +
      `http {\n  include /etc/nginx/mime.types;\n  access_log off;\n  client_body_temp_path ${dir};\n` +
      `  proxy_temp_path ${dir};\n  fastcgi_temp_path ${dir};\n  uwsgi_temp_path ${dir};\n  scgi_temp_path ${dir};\n` +
      `  server {\n    listen 127.0.0.1:${port};\n    root ${site};\n    etag off;\n    if_modified_since off;\n` +
      `    add_header Cache-Control no-cache;\n  }\n}\n`,
  );
  return conf;
}

function pkg(name) {
  return `${name} ${JSON.parse(fs.readFileSync(path.join(here, "node_modules", name, "package.json"))).version}`;
}

function run(file, args) {
  return new Promise((resolve) => {
    const child = spawn(file, args);
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.on("close", () => resolve(out.trim()));
  });
}

const children = new Set();
const scratch = [];
function spawnIn(cwd, file, args) {
  const child = spawn(file, args, { cwd, detached: true, stdio: ["ignore", "ignore", "pipe"] });
  child.log = "";
  child.stderr.on("data", (d) => (child.log = (child.log + d).slice(-4000)));
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}
function killAll() {
  for (const child of children) {
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {}
  }
  for (const dir of scratch) fs.rmSync(dir, { recursive: true, force: true });
}
process.on("exit", killAll);
process.on("SIGINT", () => process.exit(130));
process.on("SIGTERM", () => process.exit(143));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.timeOrigin + performance.now();

async function untilServed(url, procs) {
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (r.ok) return;
    } catch {}
    for (const p of procs) if (p.exitCode !== null) throw new Error(`server exited: ${p.log}`);
    await sleep(50);
  }
  throw new Error(`${url} not served within 30 s`);
}

// What the page reports, from a script that runs before any of the page's own.
const PROBE = `(() => {
  const report = (kind, value) => globalThis.__bench(JSON.stringify({ kind, value, at: performance.timeOrigin + performance.now() }));
  const heading = () => { const t = document.getElementById("t"); return t ? t.textContent : ""; };
  document.addEventListener("DOMContentLoaded", () => report("dom", heading()));
  // The new page on screen: its first contentful paint, timed by the browser.
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      if (e.name === "first-contentful-paint") {
        globalThis.__bench(JSON.stringify({ kind: "html", value: heading(), at: performance.timeOrigin + e.startTime }));
      }
    }
  }).observe({ type: "paint", buffered: true });
  let last = null;
  const check = () => {
    const t = document.getElementById("t");
    if (!t) return;
    const c = getComputedStyle(t).color;
    if (c !== last) { last = c; report("css", c); }
  };
  document.addEventListener("load", (e) => { if (e.target && e.target.tagName === "LINK") check(); }, true);
  const frame = () => { check(); requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
})();`;

class Probe {
  constructor() {
    this.seen = [];
    this.waiters = [];
  }
  report(r) {
    this.seen.push(r);
    this.waiters = this.waiters.filter((w) => !(w.match(r) && (w.resolve(r), true)));
  }
  next(kind, value, timeout) {
    return new Promise((resolve) => {
      const w = { match: (r) => r.kind === kind && r.value === value, resolve };
      this.waiters.push(w);
      setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(null);
      }, timeout);
    });
  }
}

async function measure(o, browser, name) {
  const server = SERVERS[name];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `lrbench-${name}-`));
  let version = 1;
  fs.writeFileSync(path.join(dir, "index.html"), page(version, server.snippet));
  fs.writeFileSync(path.join(dir, "style.css"), style(version));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}/`;
  const procs = await server.start(o, dir, port);
  const tab = await browser.newPage();
  const result = { name, version: await server.version(o), html: [], dom: [], css: [], missed: 0, extraLoads: 0, reloadedOnCss: 0 };
  try {
    for (const u of [url, ...(server.ready ?? [])]) await untilServed(u, procs);
    const cdp = await tab.createCDPSession();
    const probe = new Probe();
    cdp.on("Runtime.bindingCalled", (e) => e.name === "__bench" && probe.report(JSON.parse(e.payload)));
    await cdp.send("Runtime.enable");
    await cdp.send("Runtime.addBinding", { name: "__bench" });
    await cdp.send("Page.enable");
    await cdp.send("Page.addScriptToEvaluateOnNewDocument", { source: PROBE });
    const loaded = probe.next("html", `v${version}`, 10000);
    await tab.goto(url);
    if (!(await loaded)) throw new Error("the first page load was not seen");
    // Until the client is connected and changes arrive (not measured).
    for (let warm = 0; warm < 20; warm++) {
      version++;
      const seen = probe.next("html", `v${version}`, 1500);
      fs.writeFileSync(path.join(dir, "index.html"), page(version, server.snippet));
      if (await seen) break;
      if (warm === 19) throw new Error("no reload after 20 saves");
    }
    await sleep(o.settle);
    for (const kind of ["html", "css"]) {
      for (let i = 0; i < o.saves; i++) {
        version++;
        const [file, body, expect] =
          kind === "html"
            ? ["index.html", page(version, server.snippet), `v${version}`]
            : ["style.css", style(version), colour(version)];
        const before = probe.seen.length;
        const seen = probe.next(kind, expect, 10000);
        const t0 = now();
        fs.writeFileSync(path.join(dir, file), body);
        const r = await seen;
        if (r) result[kind].push(r.at - t0);
        else result.missed++;
        await sleep(o.settle);
        const dom = probe.seen.slice(before).find((x) => x.kind === "dom" && x.value === expect);
        if (kind === "html" && dom) result.dom.push(dom.at - t0);
        const loads = probe.seen.slice(before).filter((x) => x.kind === "dom").length;
        if (kind === "html") result.extraLoads += Math.max(0, loads - 1);
        else if (loads > 0) result.reloadedOnCss++;
      }
    }
  } finally {
    await tab.close().catch(() => {});
    for (const p of procs) {
      try {
        process.kill(-p.pid, "SIGTERM");
      } catch {}
    }
    await sleep(300);
    for (const p of procs) {
      try {
        process.kill(-p.pid, "SIGKILL");
      } catch {}
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return result;
}

function quantile(xs, q) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
}

async function main() {
  const o = options(process.argv);
  const names = o.only ?? Object.keys(SERVERS);
  for (const n of names) if (!SERVERS[n]) throw new Error(`unknown server ${n}`);
  const browser = await puppeteer.launch({
    executablePath: o.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"],
  });
  const results = Object.fromEntries(names.map((n) => [n, null]));
  try {
    for (let round = 0; round < o.rounds; round++) {
      // Rounds alternate the order, so no server always runs first or last.
      const order = round % 2 ? [...names].reverse() : names;
      for (const name of order) {
        process.stderr.write(`round ${round + 1}/${o.rounds}: ${name}\n`);
        const r = await measure(o, browser, name);
        const acc = (results[name] ??= { ...r, html: [], dom: [], css: [], missed: 0, extraLoads: 0, reloadedOnCss: 0 });
        acc.html.push(...r.html);
        acc.dom.push(...r.dom);
        acc.css.push(...r.css);
        acc.missed += r.missed;
        acc.extraLoads += r.extraLoads;
        acc.reloadedOnCss += r.reloadedOnCss;
      }
    }
  } finally {
    await browser.close();
  }
  const ms = (x) => (Number.isNaN(x) ? "-" : x.toFixed(1));
  console.log(`Chromium ${(await run(o.chromium, ["--version"])).split(" ")[1] ?? "?"}, ${o.rounds} round(s) of ${o.saves} HTML and ${o.saves} CSS saves per server, ${os.cpus().length} cores\n`);
  console.log("| server | save → new page painted p50 | p90 | (DOMContentLoaded p50) | CSS swap p50 | p90 | missed | extra loads | CSS by reload |");
  console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const name of names) {
    const r = results[name];
    console.log(
      `| ${r.version} | ${ms(quantile(r.html, 0.5))} ms | ${ms(quantile(r.html, 0.9))} ms | ${ms(quantile(r.dom, 0.5))} ms | ${ms(quantile(r.css, 0.5))} ms | ${ms(quantile(r.css, 0.9))} ms | ${r.missed} | ${r.extraLoads} | ${r.reloadedOnCss} |`,
    );
  }
  if (o.json) fs.writeFileSync(o.json, JSON.stringify(results, null, 2));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
