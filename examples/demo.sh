#!/usr/bin/env bash
# Runs execlibd on a copy of examples/site in a temporary directory (no root,
# no systemd), changes a page, shows the job's result and `execlibctl listeners`,
# then shuts the daemon down. Exits non-zero if any step does not work.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bins
bin=target/debug
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cp -r examples/site/. "$work/"
ctl() { "$bin/execlibctl" --socket "$work/control.sock" "$@"; }

# Its state (running jobs, snapshots) in the temporary directory too: as root it
# would otherwise go to /var/lib/execlib/site.
STATE_DIRECTORY="$work/state" "$bin/execlibd" --config "$work/site.toml" --log-format text 2>"$work/daemon.log" &
pid=$!
wait_for() { # wait_for DESCRIPTION COMMAND...: poll for up to 10 s
  local what=$1; shift
  for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "demo: timed out waiting for $what" >&2; cat "$work/daemon.log" >&2; exit 1
}
wait_for "the daemon" sh -c "'$bin/execlibctl' --socket '$work/control.sock' --json listeners | grep -q '\"state\":\"running\"'"

echo "\$ echo '# Hello, execlib' > content/index.md"
echo '# Hello, execlib' > "$work/content/index.md"
wait_for "the page to be rebuilt" grep -q 'Hello, execlib' "$work/public/index.html"
echo "\$ cat public/index.html"
cat "$work/public/index.html"
echo
echo "\$ execlibctl listeners"
ctl listeners
echo
echo "\$ execlibctl shutdown"
ctl shutdown
wait "$pid"
pid=
echo
echo "The daemon's log:"
cat "$work/daemon.log"
