#!/usr/bin/env python3
"""Watch setup benchmark: time from start to READY=1 and RSS of execlibd on a
tree of 10,000 directories and 100,000 files (or FILES files: FILES / 10
directories of 10 files each), next to a floor measured in the same run
(examples/watch_floor.rs: walk the tree, one watch per directory).

Usage: python3 bench/watch_setup.py [RUNS] [FILES] [--catch-up] [--events N]
(from the repository root). On 1,000,000 files two runs' watches may exceed
fs.inotify.max_user_watches while the kernel still frees the previous run's: raise it.
FILES is a multiple of 1,000 (default 100,000);
trees other than the default live under $TMPDIR/execlib-bench-tree-setup-FILES.

--catch-up: the listener has `catch_up = true` (its snapshot saved by the warm-up
  run, so each timed start loads it and compares it with the tree); the floor
  then also lstats every file, and the plain floor is shown beside it.
--overflow: the daemon starts with fs.inotify.max_queued_events at 16 (root only;
  restored at READY), and once settled it is stopped (SIGSTOP) while 100 files
  are created in the tree's top directory: the queue overflows once, and the
  whole tree is rescanned once it continues. The
  rescan's time (from its log line) and the daemon's CPU for it are shown next to
  a floor that only walks the tree and lstats every file.
--events N: once settled, N files are created (one byte written) and deleted,
  spread over the tree, and the CPU time the daemon spends on them is measured
  (utime + stime), next to the floor reading the same events.
"""
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
CATCH_UP = "--catch-up" in sys.argv
OVERFLOW = "--overflow" in sys.argv
QUEUED = "/proc/sys/fs/inotify/max_queued_events"
EVENTS = int(sys.argv[sys.argv.index("--events") + 1]) if "--events" in sys.argv else 0
if EVENTS:
    ARGS.remove(str(EVENTS))
if EVENTS and OVERFLOW:
    sys.exit("--events and --overflow go in separate runs (the small queue would overflow on the events)")
RUNS = int(ARGS[0]) if len(ARGS) > 0 else 7
TOTAL = int(ARGS[1]) if len(ARGS) > 1 else 100_000
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


def event_files():
    """The files --events creates: one per directory, round the tree."""
    dirs = [os.path.join(TREE, f"t{t:03}", f"s{s:02}") for s in range(DIRS_SUB) for t in range(DIRS_TOP)]
    return [os.path.join(dirs[i % len(dirs)], f"ev{i}.txt") for i in range(EVENTS)]


def make_events():
    files = event_files()
    for path in files:
        with open(path, "w") as fh:
            fh.write("x")
    for path in files:
        os.unlink(path)


def run_floor(stat=False, watch=True):
    args = [os.path.join(BIN, "examples", "watch_floor"), TREE] + (["--stat"] if stat else [])
    args += [] if watch else ["--no-watch"]
    if EVENTS and not stat:
        args += ["--events", str(EVENTS)]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    dirs, _, rss = proc.stdout.readline().split()
    wall = (time.perf_counter() - start) * 1000
    cpu = None
    if EVENTS and not stat:
        make_events()
        cpu = float(proc.stdout.readline())
    proc.wait(timeout=60)
    return wall, int(rss), int(dirs), cpu


def wait_idle(pid):
    """Waits until the process has used no CPU for a whole second."""
    last = cpu_ticks(pid)
    while True:
        time.sleep(1)
        now = cpu_ticks(pid)
        if now == last:
            return
        last = now


def run_daemon(work):
    sock_path = os.path.join(work, "notify.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(120)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, RUST_LOG="warn")
    env.pop("JOURNAL_STREAM", None)
    config = os.path.join(work, "bench.toml")
    log_path = os.path.join(work, "daemon.log")
    queued = open(QUEUED).read() if OVERFLOW else None
    if OVERFLOW:
        with open(QUEUED, "w") as fh:
            fh.write("16")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([os.environ.get("EXECLIBD", os.path.join(BIN, "execlibd")), "--config", config,
                                 "--log-format=text"], env=env, stderr=log)
    try:
        while True:
            msg = notify.recv(4096).decode()
            if "READY=1" in msg.splitlines():
                break
    finally:
        if queued:
            with open(QUEUED, "w") as fh:
                fh.write(queued)
    ready = (time.perf_counter() - start) * 1000
    rss = rss_kib(proc.pid)
    # The background stat pass completes after READY: measure the settled size too, once
    # the daemon has used no CPU for a whole second (at least 2 s after READY).
    time.sleep(2)
    wait_idle(proc.pid)
    settled = rss_kib(proc.pid)
    cpu = None
    if EVENTS:
        before = cpu_ticks(proc.pid)
        make_events()
        wait_idle(proc.pid)
        cpu = (cpu_ticks(proc.pid) - before) * 1000 / os.sysconf("SC_CLK_TCK")
    rescan = None
    if OVERFLOW:
        before = cpu_ticks(proc.pid)
        # Stopped while the files appear: the queue overflows once, and one rescan follows.
        burst = [os.path.join(TREE, f"ov{i}.txt") for i in range(100)]
        proc.send_signal(signal.SIGSTOP)
        for path in burst:
            open(path, "w").close()
        proc.send_signal(signal.SIGCONT)
        wait_idle(proc.pid)
        rescan_cpu = (cpu_ticks(proc.pid) - before) * 1000 / os.sysconf("SC_CLK_TCK")
        with open(log_path) as fh:
            took = [int(line.split("elapsed_ms=")[1].split()[0]) for line in fh if "rescan found" in line]
        rescan = (took[0] if took else float("nan"), rescan_cpu, len(took))
    status = msg
    proc.terminate()
    proc.wait(timeout=30)
    notify.close()
    if OVERFLOW:
        for path in burst:
            os.unlink(path)
    return ready, rss, status, settled, cpu, rescan


def main():
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bins", "--example", "watch_floor"], check=True)
    make_tree()
    work = tempfile.mkdtemp(prefix="execlib-bench-")
    with open(os.path.join(work, "bench.toml"), "w") as fh:
        fh.write(f'[daemon]\nstate_dir = "{work}/state"\n[control]\nsocket = "control.sock"\n'
                 f'[[listener]]\nname = "tree"\ncatch_up = {"true" if CATCH_UP else "false"}\n'
                 f'  [[listener.route]]\n  path = "{TREE}"\n  glob = "**/*.md"\n  shell = "true"\n')
    run_floor(), run_daemon(work)  # warm the caches (and, with --catch-up, save the snapshot)
    floor, stat_floor, rescan_floor, daemon = [], [], [], []
    for _ in range(RUNS):
        floor.append(run_floor())
        if CATCH_UP:
            stat_floor.append(run_floor(stat=True))
        if OVERFLOW:
            rescan_floor.append(run_floor(stat=True, watch=False))
        daemon.append(run_daemon(work))
    shutil.rmtree(work)
    med = statistics.median
    f_ms = med(r[0] for r in floor)
    d_ms = med(r[0] for r in daemon)
    mode = " (catch_up = true)" if CATCH_UP else ""
    print(f"tree: {floor[0][2]} directories watched, {DIRS_TOP * (DIRS_SUB + 1) * FILES} files; {RUNS} runs each, medians")
    print(f"floor   (walk + one watch per dir): {f_ms:7.1f} ms   peak RSS {med(r[1] for r in floor) / 1024:5.1f} MiB")
    if CATCH_UP:
        s_ms = med(r[0] for r in stat_floor)
        print(f"floor   (walk + watch + lstat):     {s_ms:7.1f} ms   peak RSS {med(r[1] for r in stat_floor) / 1024:5.1f} MiB")
    print(f"execlibd{mode} start -> READY=1: {d_ms:7.1f} ms   RSS after READY {med(r[1] for r in daemon) / 1024:5.1f} MiB")
    print(f"execlibd RSS settled (sizes and mtimes filled in): {med(r[3] for r in daemon) / 1024:5.1f} MiB")
    print(f"ratio execlibd / floor: {d_ms / f_ms:.2f}x   (status: {daemon[-1][2].splitlines()[-1]})")
    if CATCH_UP:
        print(f"ratio execlibd / floor with lstat: {d_ms / s_ms:.2f}x")
    if OVERFLOW:
        r_ms, r_cpu = med(r[5][0] for r in daemon), med(r[5][1] for r in daemon)
        fl = med(r[0] for r in rescan_floor)
        print(f"floor   (walk + lstat, no watch):   {fl:7.1f} ms")
        print(f"overflow rescan: {r_ms:.0f} ms (daemon CPU {r_cpu:.0f} ms, rescans per run "
              f"{[r[5][2] for r in daemon]}); ratio rescan / floor {r_ms / fl:.2f}x")
    if EVENTS:
        f_cpu, d_cpu = med(r[3] for r in floor), med(r[4] for r in daemon)
        print(f"CPU for {EVENTS} files created and deleted: floor {f_cpu:.0f} ms, execlibd {d_cpu:.0f} ms "
              f"({d_cpu / EVENTS * 1000:.1f} us a file, floor {f_cpu / EVENTS * 1000:.1f}; ratio {d_cpu / max(f_cpu, 1):.2f}x)")


if __name__ == "__main__":
    main()
