#!/usr/bin/env python3
"""Polling cost: execlibd's CPU per poll cycle on a tree of 10,000 directories and
100,000 files (the tree of bench/watch_setup.py), next to a floor that only walks
the tree and stats every file (GNU find printing each file's inode, size and
times: what a poll must learn), measured in the same run.

Usage: python3 bench/poll_cost.py [CYCLES]   (from the repository root; default 10)

execlibd runs one listener on the tree with `poll = "always"` and `poll_ms = 1000`
(a local tree, so polling must be forced), logging at the default level; its CPU
(utime + stime from /proc/PID/stat) is read once it has settled after READY=1 and
again CYCLES seconds later, and divided by the cycles; then a second daemon runs
with the default interval for 30 s, and its CPU share is given. The floor runs CYCLES times;
its CPU is the children's rusage. Both read the tree warm from the page cache.
"""
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import watch_setup  # noqa: E402  (the same tree, made once)

CYCLES = int(sys.argv[1]) if len(sys.argv) > 1 else 10
TICK = os.sysconf("SC_CLK_TCK")
POLL_MS = 1000


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def floor_runs():
    times = []
    for _ in range(CYCLES):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(["find", watch_setup.TREE, "-printf", "%i %s %T@ %C@\\n"],
                       stdout=subprocess.DEVNULL, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return times


def execlibd_cycles(poll_ms=POLL_MS, seconds=None):
    """CPU seconds per cycle at `poll_ms` (or, with `seconds`, per second over that
    long at the default interval: `poll_ms` None)."""
    work = tempfile.mkdtemp(prefix="execlib-poll-")
    config = os.path.join(work, "poll.toml")
    with open(config, "w") as fh:
        fh.write(f"""[daemon]
state_dir = "state"
[control]
socket = "control.sock"
[[listener]]
name = "tree"
  [[listener.route]]
  path = "{watch_setup.TREE}"
  glob = "*.never"
  poll = "always"
  {f"poll_ms = {poll_ms}" if poll_ms else ""}
  run = ["true"]
""")
    notify_path = os.path.join(work, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    env.pop("RUST_LOG", None)
    with open(os.path.join(work, "execlibd.log"), "w") as log:
        proc = subprocess.Popen(["target/release/execlibd", "--config", config, "--log-format=text"],
                                env=env, stdout=log, stderr=log)
    try:
        while "READY=1" not in notify.recv(4096).decode().splitlines():
            pass
        time.sleep(3 * POLL_MS / 1000)  # the background stat pass and the first polls are done
        start = cpu_s(proc.pid)
        if seconds:
            time.sleep(seconds)
            return (cpu_s(proc.pid) - start) / seconds
        time.sleep(CYCLES * poll_ms / 1000)
        per_cycle = (cpu_s(proc.pid) - start) / CYCLES
    finally:
        proc.terminate()
        proc.wait()
        subprocess.run(["rm", "-rf", work])
    return per_cycle


def main():
    watch_setup.make_tree()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "execlibd"], check=True)
    floor_runs()  # warm the page cache
    floor = statistics.median(floor_runs())
    daemon = execlibd_cycles()
    print(f"{time.strftime('%Y-%m-%d')} {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"tree: 10,000 directories, 100,000 files; {CYCLES} cycles")
    print(f"  floor (find -printf inode size times)   {floor * 1000:7.1f} ms CPU per pass (median)")
    print(f"  execlibd poll cycle                     {daemon * 1000:7.1f} ms CPU per cycle (mean)"
          f"  = {daemon / floor:.2f}x the floor")
    share = execlibd_cycles(poll_ms=None, seconds=30)
    print(f"  execlibd at the default interval (2000 ms, stretched to 25x a poll's time): "
          f"{share * 100:.1f}% of one core over 30 s")


if __name__ == "__main__":
    main()
