#!/usr/bin/env python3
"""Watch setup benchmark: time from start to READY=1 and RSS of execlibd on a
tree of 10,000 directories and 100,000 files (or FILES files: FILES / 10
directories of 10 files each), next to a floor measured in the same run
(examples/watch_floor.rs: walk the tree, one watch per directory).

Usage: python3 bench/watch_setup.py [RUNS] [FILES]   (from the repository root)
FILES is a multiple of 1,000 (default 100,000); trees other than the default
live under $TMPDIR/execlib-bench-tree-setup-FILES.
"""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
TOTAL = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
if TOTAL < 1000 or TOTAL % 1000:
    sys.exit("FILES must be a multiple of 1,000")
TREE = os.path.join(tempfile.gettempdir(),
                    "execlib-bench-tree" if TOTAL == 100_000 else f"execlib-bench-tree-setup-{TOTAL}")
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release")
# TOTAL / 1000 top directories, each with 99 subdirectories; 10 files in every directory:
# 100 + 100*99 = 10,000 dirs and 100,000 files by default.
DIRS_TOP, DIRS_SUB, FILES = TOTAL // 1000, 99, 10


def make_tree():
    marker = os.path.join(TREE, ".complete")
    if os.path.exists(marker):
        return
    shutil.rmtree(TREE, ignore_errors=True)
    for t in range(DIRS_TOP):
        top = os.path.join(TREE, f"t{t:03}")
        dirs = [top] + [os.path.join(top, f"s{s:02}") for s in range(DIRS_SUB)]
        for d in dirs:
            os.makedirs(d)
            for f in range(FILES):
                with open(os.path.join(d, f"f{f}.md"), "w") as fh:
                    fh.write("x")
    open(marker, "w").close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def run_floor():
    start = time.perf_counter()
    out = subprocess.run([os.path.join(BIN, "examples", "watch_floor"), TREE], check=True, capture_output=True, text=True)
    wall = (time.perf_counter() - start) * 1000
    dirs, _, rss = out.stdout.split()
    return wall, int(rss), int(dirs)


def run_daemon(work):
    sock_path = os.path.join(work, "notify.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, RUST_LOG="warn")
    env.pop("JOURNAL_STREAM", None)
    config = os.path.join(work, "bench.toml")
    start = time.perf_counter()
    proc = subprocess.Popen([os.environ.get("EXECLIBD", os.path.join(BIN, "execlibd")), "--config", config, "--log-format=text"], env=env,
                            stderr=subprocess.DEVNULL)
    while True:
        msg = notify.recv(4096).decode()
        if "READY=1" in msg.splitlines():
            break
    ready = (time.perf_counter() - start) * 1000
    rss = rss_kib(proc.pid)
    # The background stat pass completes after READY: measure the settled size too, once
    # the daemon has used no CPU for a whole second (at least 2 s after READY).
    time.sleep(2)
    last = cpu_ticks(proc.pid)
    while True:
        time.sleep(1)
        now = cpu_ticks(proc.pid)
        if now == last:
            break
        last = now
    settled = rss_kib(proc.pid)
    status = msg
    proc.terminate()
    proc.wait(timeout=30)
    notify.close()
    return ready, rss, status, settled


def main():
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bins", "--example", "watch_floor"], check=True)
    make_tree()
    work = tempfile.mkdtemp(prefix="execlib-bench-")
    with open(os.path.join(work, "bench.toml"), "w") as fh:
        fh.write(f'[control]\nsocket = "control.sock"\n[[listener]]\nname = "tree"\n'
                 f'  [[listener.route]]\n  path = "{TREE}"\n  glob = "**/*.md"\n  shell = "true"\n')
    run_floor(), run_daemon(work)  # warm the caches
    floor, daemon = [], []
    for _ in range(RUNS):
        floor.append(run_floor())
        daemon.append(run_daemon(work))
    shutil.rmtree(work)
    f_ms = statistics.median(r[0] for r in floor)
    d_ms = statistics.median(r[0] for r in daemon)
    print(f"tree: {floor[0][2]} directories watched, {DIRS_TOP * (DIRS_SUB + 1) * FILES} files; {RUNS} runs each, medians")
    print(f"floor   (walk + one watch per dir): {f_ms:7.1f} ms   peak RSS {statistics.median(r[1] for r in floor) / 1024:5.1f} MiB")
    print(f"execlibd start -> READY=1:          {d_ms:7.1f} ms   RSS after READY {statistics.median(r[1] for r in daemon) / 1024:5.1f} MiB")
    print(f"execlibd RSS settled (sizes and mtimes filled in): {statistics.median(r[3] for r in daemon) / 1024:5.1f} MiB")
    print(f"ratio execlibd / floor: {d_ms / f_ms:.2f}x   (status: {daemon[-1][2].splitlines()[-1]})")


if __name__ == "__main__":
    main()
