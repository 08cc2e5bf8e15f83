#!/usr/bin/env bash
# Watchman on the watch-setup tree: time from a cold server to the answer of a
# first synced query (`watch` then `query` with a sync cookie, which returns once
# the crawl is complete), and the server's RSS then. Same tree as
# bench/watch_setup.py FILES (run that first to create it).
#
# Usage: bash bench/watchman_setup.sh [RUNS] [FILES]   (needs the Debian package watchman)
set -euo pipefail
runs=${1:-3}
files=${2:-100000}
tmp=${TMPDIR:-/tmp}
tree="$tmp/execlib-bench-tree"
[ "$files" = 100000 ] || tree="$tmp/execlib-bench-tree-setup-$files"
[ -e "$tree/.complete" ] || { echo "no tree at $tree: run bench/watch_setup.py 1 $files first" >&2; exit 1; }
for run in $(seq "$runs"); do
  w=$(mktemp -d "$tmp/execlib-watchman-XXXXXX")
  opts=(--sockname="$w/sock" --statefile="$w/state" --logfile="$w/log" --pidfile="$w/pid" --no-pretty)
  # The server is stopped however the run ends (a failed query leaves it running otherwise).
  trap 'watchman "${opts[@]}" shutdown-server >/dev/null 2>&1 || true; rm -rf "$w"' EXIT
  start=$(date +%s%N)
  watchman "${opts[@]}" watch "$tree" >/dev/null
  count=$(watchman "${opts[@]}" -j <<JSON | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["files"]))'
["query", "$tree", {"expression": ["suffix", "md"], "fields": ["name"], "sync_timeout": 600000}]
JSON
)
  end=$(date +%s%N)
  pid=$(cat "$w/pid")
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  echo "run $run: watch + first synced query $(( (end - start) / 1000000 )) ms, $count files, server RSS $(( rss / 1024 )) MiB"
  watchman "${opts[@]}" shutdown-server >/dev/null
  trap - EXIT
  rm -rf "$w"
  sleep 2  # the kernel frees the server's watches after it exits
done
