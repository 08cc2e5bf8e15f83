#!/usr/bin/env python3
"""Job latency benchmark: time from a file write to its job starting, for execlibd,
for a floor (inotifywait feeding a shell loop) and for watchexec, measured in the
same run with the same job; then a burst of new files: time until all their jobs
have finished and the watcher's CPU seconds per 1,000 files.

Run it through bench/job_latency.sh, which builds and installs what this needs:

  python3 bench/job_latency.py BIN_DIR STAMP WATCHEXEC SAMPLES BURST [BIG_TREE [FULL_DIR [SPAWNER]]]

BIN_DIR holds execlibd; STAMP is the job: a tiny static program that takes
CLOCK_MONOTONIC first thing in main() and sends it (with the file's path, if it
knows it) as one datagram to the Unix socket named by its first argument.
SPAWNER is bench/spawn_floor.c compiled: a second floor, the least a watcher that
starts one process per file can do (inotify, posix_spawn, reaping on SIGCHLD; no
output capture, no logging, no records), shown as "bare spawn".

Each write is a plain create + write + close of a new file (`s<i>.txt`), the
timestamp taken (CLOCK_MONOTONIC) just before the open(O_CREAT). Every contender
reacts to the file's creation (inotify IN_CREATE): the execlibd route has
`events = ["create"]`, inotifywait `-e create`, watchexec `--fs-events create`.
Latency = the job's timestamp - the write's. Samples are interleaved (one write
per contender in turn, the order rotating), each written only once the previous
one's job has run and 10 ms of quiet have passed.

The burst writes BURST new files into each contender's directory in turn, as fast
as one Python thread can, and times from the first write to the last job's
timestamp (its last action; for execlibd the control socket then confirms no job
running or queued). CPU is utime + stime from /proc/PID/stat before and after, of
the watcher only (execlibd; watchexec; the floor's shell, inotifywait and loop
subshell), not of the jobs. watchexec runs one command at a time and coalesces the
events that arrive meanwhile into its next run, so it runs far fewer jobs.
"""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")
QUIET = 0.010  # after a job is seen, before the next write
TIMEOUT = 5.0  # for one job to show up


def pct(samples, p):
    s = sorted(samples)
    k = max(1, min(len(s), int(-(-len(s) * p // 1))))  # ceil, as examples/reload_latency.rs
    return s[k - 1]


def cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def descendants(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                kids = [int(k) for k in fh.read().split()]
        except OSError:
            continue
        for k in kids:
            out.append(k)
            out.extend(descendants(k))
    return out


class Stamps:
    """The socket jobs report to; a thread receives into a list of (ns, path)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(path)
        self.cond = threading.Condition()
        self.items = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            data = self.sock.recv(8192).decode()
            ns, _, path = data.partition(" ")
            with self.cond:
                self.items.append((int(ns), path))
                self.cond.notify_all()

    def count(self):
        with self.cond:
            return len(self.items)

    def wait_count(self, n, timeout):
        """Waits until n stamps have arrived in all; returns whether they did."""
        end = time.monotonic() + timeout
        with self.cond:
            while len(self.items) < n:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def since(self, n):
        with self.cond:
            return list(self.items[n:])


def write_file(path, data=b"x\n"):
    """Create + write + close a new file; returns CLOCK_MONOTONIC (ns) just before the create."""
    t = time.monotonic_ns()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)
    return t


class Contender:
    def __init__(self, name, directory, proc, pid_fn):
        self.name, self.dir, self.proc, self.pid_fn = name, directory, proc, pid_fn
        self.samples, self.extra, self.missed = [], 0, 0
        self.written = 0

    def path(self, stem):
        return os.path.join(self.dir, f"{stem}.txt")

    def ready(self, stamps):
        """Writes probe files until one runs a job (every watcher is then set up)."""
        for k in range(100):
            n = stamps.count()
            write_file(self.path(f"probe{k}"))
            if stamps.wait_count(n + 1, 0.2):
                time.sleep(0.3)
                return
        raise SystemExit(f"{self.name}: no job ran for 20 probe files")

    def sample(self, stamps, i):
        n = stamps.count()
        target = self.path(f"s{i}")
        t = write_file(target)
        if not stamps.wait_count(n + 1, TIMEOUT):
            self.missed += 1
            return
        time.sleep(QUIET)
        got = stamps.since(n)
        ns, path = got[0]
        if path and path != target:
            print(f"{self.name}: job for {path!r}, expected {target!r}", file=sys.stderr)
        self.samples.append((ns - t) / 1e6)
        self.extra += len(got) - 1

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def control(sock_path, request):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def start_execlibd(work, bin_dir, stamp, sock, name="execlibd", big_tree=None, full_dir=None):
    """execlibd watching its own directory; with big_tree, a second listener watches
    that tree too (a route that never matches: only its snapshot costs); with full_dir,
    its directory is that one, which already holds many files."""
    d = full_dir or os.path.join(work, name)
    if not full_dir:
        os.mkdir(d)
    config = os.path.join(work, f"{name}.toml")
    big = "" if not big_tree else f"""
[[listener]]
name = "big"
  [[listener.route]]
  path = "{big_tree}"
  glob = "*.never"
  run = ["true"]
"""
    with open(config, "w") as fh:
        fh.write(f"""[daemon]
state_dir = "{name}-state"
[control]
socket = "{name}.sock"
[[listener]]
name = "bench"
  [[listener.route]]
  path = "{d}"
  glob = "*.txt"
  events = ["create"]
  debounce_ms = 0
  delay_ms = 0
  run = ["{stamp}", "{sock}"]
{big}""")
    notify_path = os.path.join(work, f"{name}-notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(120)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    env.pop("JOURNAL_STREAM", None)
    env.pop("RUST_LOG", None)  # the default level (info): a line per job start and end, as in production
    log = open(os.path.join(work, f"{name}.log"), "w")
    proc = subprocess.Popen([os.path.join(bin_dir, "execlibd"), "--config", config, "--log-format=text"],
                            env=env, stderr=log, stdout=log, start_new_session=True)
    while "READY=1" not in notify.recv(4096).decode().splitlines():
        pass
    notify.close()
    return Contender(name, d, proc, lambda: [proc.pid])


def start_floor(work, stamp, sock):
    d = os.path.join(work, "floor")
    os.mkdir(d)
    script = f'inotifywait -m -q -e create --format %w%f "$1" | while IFS= read -r f; do "$2" "$3" "$f"; done'
    proc = subprocess.Popen(["bash", "-c", script, "floor", d, stamp, sock], start_new_session=True)
    # CPU is counted for the shell, inotifywait and the loop's subshell (not the jobs).
    return Contender("floor", d, proc, lambda: [proc.pid] + descendants(proc.pid))


def start_spawner(work, spawner, stamp, sock):
    d = os.path.join(work, "spawner")
    os.mkdir(d)
    proc = subprocess.Popen([spawner, d, stamp, sock], start_new_session=True)
    return Contender("bare spawn", d, proc, lambda: [proc.pid])


def start_watchexec(work, watchexec, stamp, sock):
    d = os.path.join(work, "watchexec")
    os.mkdir(d)
    # No debounce; run the command directly (no shell); no ignore files to discover; a change
    # during a run gives one more run after it (as in execlibd); the paths in the environment.
    args = [watchexec, "--watch", d, "--fs-events", "create", "--debounce", "0ms", "--postpone",
            "--ignore-nothing", "--project-origin", d, "--on-busy-update", "queue",
            "--emit-events-to", "environment", "--shell", "none", "--quiet", "--", stamp, sock]
    log = open(os.path.join(work, "watchexec.log"), "w")
    proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
    return Contender("watchexec", d, proc, lambda: [proc.pid])


def wait_quiet(c):
    """Waits until the contender has used no CPU for a second (execlibd's stat pass
    over a big directory, after READY, is over)."""
    last = sum(cpu_ticks(p) for p in c.pid_fn())
    while True:
        time.sleep(1.0)
        now = sum(cpu_ticks(p) for p in c.pid_fn())
        if now - last <= 1:
            return
        last = now


def burst(c, stamps, n, work):
    """Writes n new files as fast as possible; waits for n jobs; returns wall ms, CPU s per 1,000, jobs."""
    names = [os.path.join(c.dir, f"b{i}.txt") for i in range(n)]
    time.sleep(0.5)
    pids = c.pid_fn()
    before = sum(cpu_ticks(p) for p in pids)
    start_count = stamps.count()
    t0 = time.monotonic_ns()
    for name in names:
        write_file(name)
    t_written = time.monotonic_ns()
    # Until n jobs have run, or none for 3 s (watchexec coalesces events: fewer runs).
    while stamps.count() < start_count + n and stamps.wait_count(stamps.count() + 1, 3.0):
        pass
    got = stamps.since(start_count)
    last = max(ns for ns, _ in got) if got else t0
    info = ""
    if c.name.startswith("execlibd"):  # every job ended, nothing queued
        sock = os.path.join(work, f"{c.name}.sock")
        while True:
            lst = next(x for x in control(sock, {"cmd": "listeners"})["listeners"] if x["name"] == "bench")
            if lst["jobs_running"] == 0 and lst["jobs_queued"] == 0:
                break
            time.sleep(0.01)
        info = f"events {lst['events']}, jobs started since start {lst['jobs_started']}, failed {lst['jobs_failed']}"
    time.sleep(0.2)
    after = sum(cpu_ticks(p) for p in pids)
    cpu = (after - before) / TICK
    return {
        "wall_ms": (last - t0) / 1e6,
        "write_ms": (t_written - t0) / 1e6,
        "jobs": len(got),
        "cpu_per_1000": cpu / n * 1000,
        "cpu": cpu,
        "info": info,
    }


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the contenders on the way out
    bin_dir, stamp, watchexec = sys.argv[1:4]
    samples = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    burst_n = int(sys.argv[5]) if len(sys.argv) > 5 else 10000
    big_tree = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] else None
    full_dir = sys.argv[7] if len(sys.argv) > 7 and sys.argv[7] else None
    spawner = sys.argv[8] if len(sys.argv) > 8 and sys.argv[8] else None
    work = tempfile.mkdtemp(prefix="execlib-joblat-")
    sock = os.path.join(work, "stamps.sock")
    stamps = Stamps(sock)
    contenders = []
    try:
        contenders.append(start_floor(work, stamp, sock))
        if spawner:
            contenders.append(start_spawner(work, spawner, stamp, sock))
        contenders.append(start_execlibd(work, bin_dir, stamp, sock))
        contenders.append(start_watchexec(work, watchexec, stamp, sock))
        if big_tree:
            contenders.append(start_execlibd(work, bin_dir, stamp, sock, "execlibd+big", big_tree))
        if full_dir:
            contenders.append(start_execlibd(work, bin_dir, stamp, sock, "execlibd+full", full_dir=full_dir))
        for c in contenders:
            c.ready(stamps)
            if c.name == "execlibd+full":
                wait_quiet(c)
        for i in range(samples):
            k = i % len(contenders)
            for c in contenders[k:] + contenders[:k]:
                c.sample(stamps, i)
        by = {c.name: c for c in contenders}
        floor = by["floor"]
        f50 = statistics.median(floor.samples)
        f99 = pct(floor.samples, 0.99)
        print(f"write -> job start, {samples} writes each, interleaved (create+write+close of a new file; "
              f"IN_CREATE; debounce 0, delay 0):")
        print(f"  {'':<12} {'p50 ms':>7} {'p99 ms':>7} {'min ms':>7} {'p50-floor':>10} {'p50/floor':>10} {'p99/floor':>10}"
              f"  extra/missed runs")
        for c in contenders:
            p50, p99 = statistics.median(c.samples), pct(c.samples, 0.99)
            print(f"  {c.name:<12} {p50:7.2f} {p99:7.2f} {min(c.samples):7.2f} {p50 - f50:+7.2f} ms {p50 / f50:9.2f}x"
                  f" {p99 / f99:9.2f}x  {c.extra}/{c.missed}")
        if burst_n:
            print(f"burst of {burst_n} new files (written as fast as possible), until every job has finished:")
        cpu = {}
        for name in [c.name for c in contenders] if burst_n else []:
            r = burst(by[name], stamps, burst_n, work)
            cpu[name] = r["cpu_per_1000"]
            note = f"  ({r['info']})" if r["info"] else ""
            print(f"  {name:<12} {r['jobs']:>6} jobs in {r['wall_ms']:8.1f} ms (writes took {r['write_ms']:.0f} ms); "
                  f"watcher CPU {r['cpu']:.2f} s = {r['cpu_per_1000']:.3f} s per 1,000 files{note}")
        for name in [n for n in cpu if n.startswith("execlibd")]:
            against = [f"{cpu[name] / cpu[f]:.2f}x {f}" for f in ("floor", "bare spawn") if cpu.get(f)]
            print(f"  CPU per file, {name}: {', '.join(against)}")
        with open(os.path.join(work, "execlibd.log")) as fh:
            overflows = sum("overflowed" in line for line in fh)
        if big_tree:
            with open(f"/proc/{by['execlibd+big'].proc.pid}/status") as fh:
                rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            print(f"  (execlibd+big: a second listener watching {big_tree}; RSS {rss / 1024:.0f} MiB)")
        if full_dir:
            held = sum(f.endswith(".dat") for f in os.listdir(full_dir))
            print(f"  (execlibd+full: its directory {full_dir} held {held:,} randomly named files besides)")
        if overflows:
            print(f"  (execlibd log: {overflows} inotify queue overflow lines)")
    finally:
        for c in contenders:
            c.stop()
            if c.name == "execlibd+full":  # the kept directory: only the files written here go
                for f in os.listdir(c.dir):
                    if f.endswith(".txt"):
                        os.unlink(os.path.join(c.dir, f))
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
