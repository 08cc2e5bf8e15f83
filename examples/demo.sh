#!/usr/bin/env bash
# Runs execlibd on a copy of examples/site in a temporary directory (no root,
# no systemd): changes a page, fetches the rebuilt page over HTTP, shows a
# LiveReload client told to reload after another edit, shows `execlibctl
# listeners`, then shuts the daemon down. Exits non-zero if any step does not work.
# With --keep it leaves the daemon running (Ctrl-C stops it) so you can open the
# printed URL in a browser and edit the pages under the printed directory.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = --keep ] && keep=true
cargo build --quiet --bins --example livereload_wait
bin=target/debug
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cp -r examples/site/. "$work/"
mkdir -p "$work/public"
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

addr=$(ctl --json status | sed -n 's/.*"listen":"\([^"]*\)".*/\1/p')
[ -n "$addr" ] || { echo "demo: no HTTP address in status" >&2; exit 1; }

echo "\$ echo '# Hello, execlib' > content/index.md"
echo '# Hello, execlib' > "$work/content/index.md"
wait_for "the page to be rebuilt" grep -q 'Hello, execlib' "$work/public/index.html"
# GET over bash's /dev/tcp: no HTTP client needed.
http_get() { # http_get PATH: the response, head and body
  exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}"
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" "$addr" >&3
  cat <&3
  exec 3<&-
}
echo "\$ curl http://$addr/index.html     # served with the LiveReload script injected"
page=$(http_get /index.html)
echo "$page" | sed 's/\r$//'
echo "$page" | grep -q 'Hello, execlib' || { echo "demo: the served page is not the rebuilt one" >&2; exit 1; }
echo "$page" | grep -q 'livereload.js' || { echo "demo: no LiveReload script in the served page" >&2; exit 1; }
echo

echo "A LiveReload client on /index.html (as a browser on http://$addr/ has):"
target/debug/examples/livereload_wait "$addr" /index.html >"$work/lr.out" 2>&1 &
lr=$!
wait_for "the LiveReload client" grep -q connected "$work/lr.out"
echo "\$ echo 'Edited: the browser reloads' >> content/index.md"
echo 'Edited: the browser reloads' >> "$work/content/index.md"
wait "$lr" || { cat "$work/lr.out" >&2; echo "demo: no reload reached the client" >&2; exit 1; }
echo "the client was sent: $(grep reload "$work/lr.out")"
echo
echo "\$ execlibctl listeners"
ctl listeners
echo
if $keep; then
  echo "Open http://$addr/ in a browser and edit $work/content/index.md: the page reloads."
  echo "Ctrl-C stops the daemon."
  trap 'ctl shutdown >/dev/null 2>&1 || true; wait "$pid" 2>/dev/null; pid=; cleanup; exit 0' INT
  wait "$pid"
  exit 0
fi
echo "\$ execlibctl shutdown"
ctl shutdown
wait "$pid"
pid=
echo
echo "The daemon's log:"
cat "$work/daemon.log"
