#!/usr/bin/env bash
# Job latency: time from a file write to its job starting (p50, p99; debounce_ms = 0,
# delay_ms = 0) for execlibd, next to a floor (inotifywait -m feeding a shell loop that
# starts the same job), to a bare spawner (bench/spawn_floor.c: inotify + posix_spawn, nothing
# else) and to watchexec doing the same job, interleaved in the same run;
# then a burst of new files: time until all their jobs have finished, and the watcher's
# CPU seconds per 1,000 files. See bench/job_latency.py for the method.
# Usage: bash bench/job_latency.sh [SAMPLES [BURST]]   (defaults 200 and 10000)
# Runs twice: with the soft open-files limit at 1024 below a higher hard limit (as
# outside systemd: execlibd raises its own and gives jobs 1024 back), and with soft =
# hard (as under the shipped unit's LimitNOFILE=65536). LIMITS="1024" or "hard" runs one.
# BIG_FILES=N adds a fourth contender, execlibd with a second listener on a tree of N
# files (10 per directory, made once under $TMPDIR and kept): a job's start must not
# cost more when the daemon holds a big snapshot.
# FULL_DIR=N adds a fifth, execlibd watching a directory that already holds N randomly
# named files (made once under $TMPDIR and kept, like the tree): a new file in a big
# directory must not cost more either.
# Installs inotify-tools (apt) and watchexec-cli (cargo install --locked) when missing.
# Honours CARGO_TARGET_DIR (default: target/).
set -euo pipefail
cd "$(dirname "$0")/.."
samples=${1:-200}
burst=${2:-10000}
target=${CARGO_TARGET_DIR:-target}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
export PATH="$PATH:$cargo_bin"
command -v inotifywait >/dev/null || { apt-get update -qq && apt-get install -y -qq inotify-tools; }
command -v watchexec >/dev/null || cargo install --quiet --locked watchexec-cli
command -v cc >/dev/null || { apt-get update -qq && apt-get install -y -qq gcc libc6-dev; }
cargo build --release --quiet --bins
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The job, the same for all three: a static program that reads CLOCK_MONOTONIC first
# thing and sends it (and the file's path, when it knows it) to the socket in argv[1].
cat > "$work/stamp.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc < 2) return 2;
    const char *path = argc > 2 ? argv[2] : getenv("EXECLIB_PATH");
    const char *dir = "";
    if (!path && (path = getenv("WATCHEXEC_CREATED_PATH"))) dir = getenv("WATCHEXEC_COMMON_PATH");
    if (!path) path = "";
    if (!dir) dir = "";
    char buf[8192];
    int n = snprintf(buf, sizeof buf, "%lld %s%s%s", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec,
                     dir, *dir ? "/" : "", path);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    return sendto(fd, buf, n, 0, (struct sockaddr *)&addr, sizeof addr) == n ? 0 : 1;
}
C
cc -O2 -static -o "$work/stamp" "$work/stamp.c" 2>/dev/null || cc -O2 -o "$work/stamp" "$work/stamp.c"
# The bare spawner: the least a watcher that starts a process per file can do (a second floor).
cc -O2 -o "$work/spawn_floor" bench/spawn_floor.c

# kept LAYOUT ROOT N: makes ROOT once (kept under $TMPDIR between runs) with N files:
# LAYOUT "tree" puts 10 per directory, "flat" all in ROOT with random names.
kept() {
  [ -e "$2/.complete" ] || python3 - "$@" <<'PY'
import os, shutil, sys
layout, root, files = sys.argv[1], sys.argv[2], int(sys.argv[3])
shutil.rmtree(root, ignore_errors=True)
os.makedirs(root)
if layout == "flat":
    for i in range(files):
        open(os.path.join(root, os.urandom(16).hex() + ".dat"), "w").close()
else:
    for i in range(max(1, files // 10)):
        d = os.path.join(root, f"t{i // 100:04}", f"s{i % 100:02}")
        os.makedirs(d)
        for f in range(10):
            with open(os.path.join(d, f"f{f}.md"), "w") as fh:
                fh.write("x")
open(os.path.join(root, ".complete"), "w").close()
PY
}
big="" full=""
[ -z "${BIG_FILES:-}" ] || { big="${TMPDIR:-/tmp}/execlib-bench-tree-$BIG_FILES"; kept tree "$big" "$BIG_FILES"; }
[ -z "${FULL_DIR:-}" ] || { full="${TMPDIR:-/tmp}/execlib-bench-dir-$FULL_DIR"; kept flat "$full" "$FULL_DIR"; }

echo "$(date -u +%F) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(watchexec --version | head -n1); inotifywait $(inotifywait --help 2>&1 | head -n1 | awk '{print $2}')"
# A network or FUSE mount anywhere on the host (a test's leftover bindfs included) makes
# every job start look where its program and interpreter lie: say so beside the figures.
remote=$(awk '{for (i = 7; $i != "-"; i++); t = $(i + 1)} t ~ /^(nfs|nfs4|cifs|smb3|fuse|fuse\..*|fuseblk|9p|ceph|glusterfs|sshfs|autofs|afs|lustre)$/ {n++} END {print n + 0}' /proc/self/mountinfo)
[ "$remote" = 0 ] || echo "note: $remote network or FUSE mounts on this host: execlibd's job starts look up their program's mounts (figures not comparable with a host without)"
hard=$(ulimit -Hn)
for limit in ${LIMITS:-1024 hard}; do
  (
    if [ "$limit" = hard ]; then
      ulimit -Sn "$(ulimit -Hn)"
      echo "== soft open-files limit = hard ($(ulimit -Sn)): nothing to restore in jobs, as under the unit"
    else
      [ "$hard" = unlimited ] || [ "$hard" -gt 1024 ] || ulimit -Hn 4096 2>/dev/null || true
      ulimit -Sn 1024
      echo "== soft open-files limit 1024, hard $(ulimit -Hn): execlibd raises its own and restores 1024 in each job"
    fi
    python3 bench/job_latency.py "$target/release" "$work/stamp" "$(command -v watchexec)" "$samples" "$burst" "$big" "$full" "$work/spawn_floor"
  )
done
