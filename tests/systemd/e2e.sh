#!/usr/bin/env bash
# End-to-end test under a real systemd (run by .ci/run; needs root, else skips).
#
# Builds the .deb, boots a throwaway systemd (tests/systemd/box.sh), installs
# the package in it and drives execlib@site exactly as an operator would:
# start, listeners, a change running a job (journal fields), HTTP, a cgroup per
# job (escaped and timed-out descendants killed, memory_max, CPU and memory
# figures), reload (changed and broken config), execlibctl shutdown, stop with a
# running job, a broken config at start, and the watchdog restarting a frozen
# daemon.
# Also checks systemd-analyze verify/security and lintian on what was built.
# Prints each step; exits non-zero at the first failure, with the journal.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
  if [ "${TESTS_NO_SKIP:-}" = 1 ]; then
    echo "e2e.sh: FAIL: needs root to boot a throwaway systemd in namespaces (TESTS_NO_SKIP=1: no skipping)" >&2
    exit 1
  fi
  echo "e2e.sh: SKIP: needs root to boot a throwaway systemd in namespaces"
  exit 0
fi
root=$PWD
out=$(mktemp -d)
# shellcheck source=tests/systemd/box.sh
source tests/systemd/box.sh
finish() {
  local status=$?
  if [ "$status" != 0 ] && [ -n "${BOX_PID:-}" ]; then
    box_journal_dump "$out/journal.txt" short-precise 2>/dev/null || true
    echo "--- box journal (last 80 lines) ---"
    tail -n 80 "$out/journal.txt" 2>/dev/null || true
  fi
  box_stop
  rm -rf "$out"
  exit "$status"
}
trap finish EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "e2e.sh: FAIL: $*" >&2; exit 1; }
in_box() { box_exec "$@"; }
quiet_in_box() { box_exec "$@" 2>/dev/null; }
# Waits up to 15 s for a command in the box to succeed.
eventually() { box_wait 15000 quiet_in_box "$@" || fail "timed out waiting for: $*"; }
journal() { in_box journalctl --no-pager -u execlib@site "$@"; }

step "build the package"
bash packaging/build-deb.sh >"$out/build.log" 2>&1 || { cat "$out/build.log"; fail "package build"; }
# cargo-deb writes under the cargo target directory (CARGO_TARGET_DIR if set).
debdir=$(realpath -m "${CARGO_TARGET_DIR:-target}/debian")
deb=$(ls "$debdir"/execlib_*.deb)
echo "$deb"

step "lintian: no errors, and exactly the warnings packaging/README.md keeps"
lintian "$deb" >"$out/lintian.txt" 2>&1 || true
grep -v 'running with root privileges' "$out/lintian.txt" || true
if grep -q '^E:' "$out/lintian.txt"; then fail "lintian reports errors"; fi
# The README's figure ("0 errors, N warnings") and packaging/README.md's table of tags.
readme_warnings=$(sed -n 's/.*| 0 errors, \([0-9]*\) warnings.*/\1/p' README.md)
kept=$(sed -n 's/^| `\([a-z0-9-]*\)` |.*/\1/p' packaging/README.md | sort)
got=$(sed -n 's/^W: [^ ]* \([a-z0-9-]*\).*/\1/p' "$out/lintian.txt" | sort)
echo "warnings: $(echo $got) (README: $readme_warnings, kept: $(echo $kept))"
[ -n "$readme_warnings" ] || fail "no lintian figure found in README.md"
[ "$(printf '%s\n' "$got" | grep -c .)" = "$readme_warnings" ] || fail "lintian gives $(printf '%s\n' "$got" | grep -c .) warnings, README.md says $readme_warnings"
[ "$got" = "$kept" ] || fail "lintian warns about: $(echo $got); packaging/README.md keeps: $(echo $kept)"

step "boot a throwaway systemd and install the package"
box_start "$debdir"
# As on a fresh machine: the box's lower layer is the host's /, where an execlibd run
# by hand as root may have left /var/lib/execlib (removed in the box's overlay only).
in_box rm -rf /var/lib/execlib
in_box apt install -y "/pkg/$(basename "$deb")" >"$out/apt.log" 2>&1 || { cat "$out/apt.log"; fail "apt install"; }
in_box getent passwd execlib || fail "the package did not create the execlib user"
in_box test -f /usr/share/man/man5/execlib.toml.5.gz || fail "no execlib.toml(5)"
in_box test -f /usr/share/man/man7/execlib-troubleshooting.7.gz || fail "no execlib-troubleshooting(7)"

step "systemd-analyze verify prints nothing; security exposure as the README says"
verify=$(in_box systemd-analyze verify execlib@site.service execlib@site.socket 2>&1 || true)
[ -z "$verify" ] || fail "systemd-analyze verify said: $verify"
exposure_of() { sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'; }
readme_exposure=$(sed -n 's/.*exposure \*\*\([0-9.]*\)\*\*.*/\1/p' README.md)
exposure=$(in_box systemd-analyze security execlib@site.service 2>&1 | exposure_of)
offline=$(systemd-analyze security --offline=true "$root/systemd/execlib@.service" 2>&1 | exposure_of)
echo "exposure: $exposure, offline on the unit file: $offline (README: $readme_exposure)"
[ -n "$readme_exposure" ] || fail "no exposure figure found in README.md"
[ "$exposure" = "$readme_exposure" ] || fail "exposure $exposure, README.md says $readme_exposure"
[ "$offline" = "$readme_exposure" ] || fail "offline exposure $offline, README.md says $readme_exposure"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The site: jobs write public/ (granted by the drop-in the unit's comment shows).
site_config() { # site_config TAG: the config, whose job writes "TAG NAME" pages
  cat <<EOF
[daemon]
shutdown_grace_ms = 5000

[server]
listen = "127.0.0.1:$port"
root = "/srv/www/site/public"

[[listener]]
name = "pages"
  [[listener.route]]
  name = "convert"
  path = "/srv/www/site/content"
  glob = "**/*.md"
  debounce_ms = 50
  workdir = "/srv/www/site"
  shell = '''
out="public/\${EXECLIB_NAME%.md}.html"
make -s OUT="\$out" SRC="\$EXECLIB_PATH" TAG=$1
echo "built \$out"
'''
  [[listener.route]]
  name = "slow"
  path = "/srv/www/site/content"
  glob = "**/*.slow"
  debounce_ms = 0
  workdir = "/srv/www/site"
  shell = 'trap "echo got SIGTERM; exit 0" TERM; echo slow job started; sleep 60 & wait'
  # Leaves a grandchild in a session of its own (setsid), then ends.
  [[listener.route]]
  name = "escape"
  path = "/srv/www/site/content"
  glob = "**/*.escape"
  debounce_ms = 0
  workdir = "/srv/www/site"
  shell = '''
setsid sh -c 'sleep 300 & echo \$! > out/escaped' &
wait
'''
  # Outlives its timeout; its setsid grandchild ignores SIGTERM.
  [[listener.route]]
  name = "stubborn"
  path = "/srv/www/site/content"
  glob = "**/*.stubborn"
  debounce_ms = 0
  workdir = "/srv/www/site"
  timeout_ms = 2000
  kill_grace_ms = 300
  shell = '''
setsid sh -c 'trap "" TERM; sleep 300 & echo \$! > out/stubborn; wait' &
wait
'''
  # Touches 512 MiB under a memory_max of 64M.
  [[listener.route]]
  name = "hog"
  path = "/srv/www/site/content"
  glob = "**/*.hog"
  debounce_ms = 0
  workdir = "/srv/www/site"
  memory_max = "64M"
  shell = '''
python3 -c 'x = b"x" * (512 << 20); print("allocated", len(x))'
'''
EOF
}
write_config() { site_config "$1" | in_box sh -c 'cat > /etc/execlib/site.toml'; }
# The "site generator" the job runs: make, python3 and cp, as ordinary builds do.
makefile() {
  printf 'all:\n\tpython3 -c %s "$(TAG)" "$(SRC)" > $(OUT).tmp\n\tcp $(OUT).tmp $(OUT)\n\trm $(OUT).tmp\n' \
    "'import sys, html; print(\"<p>%s %s</p>\" % (sys.argv[1], html.escape(open(sys.argv[2]).read().strip())))'"
}
in_box sh -c 'mkdir -p /srv/www/site/content /srv/www/site/public /srv/www/site/out'
makefile | in_box sh -c 'cat > /srv/www/site/Makefile'
in_box chown -R execlib:execlib /srv/www/site
in_box sh -c 'mkdir -p /etc/systemd/system/execlib@site.service.d && printf "[Service]\nReadWritePaths=/srv/www/site\n" > /etc/systemd/system/execlib@site.service.d/site.conf && systemctl daemon-reload'
write_config v1

step "systemctl start returns after READY: the unit is active"
in_box systemctl start execlib@site
[ "$(in_box systemctl is-active execlib@site)" = active ] || fail "not active after start"

step "execlibctl (as root, no --instance) finds the instance"
in_box execlibctl listeners | tee "$out/listeners.txt"
grep -q '^pages *running' "$out/listeners.txt" || fail "listener pages not running"
in_box execlibctl status | tee "$out/status.txt"
grep -q 'unit     execlib@site.service' "$out/status.txt" || fail "status does not show the unit"

step "a change runs the job; the journal has its lines with their fields"
in_box sh -c 'echo hello > /srv/www/site/content/index.md'
eventually grep -q 'v1 hello' /srv/www/site/public/index.html
eventually sh -c 'journalctl --no-pager -u execlib@site LISTENER=pages ROUTE=convert STREAM=stdout -o verbose | grep -q "MESSAGE=built public/index.html"'
# Its state directory works: running jobs are recorded, snapshots saved.
if journal -o cat | grep -E "running jobs are not recorded|cannot record a running job|cannot save the snapshot"; then
  fail "the service cannot write its state"
fi
journal LISTENER=pages ROUTE=convert -o verbose | grep -E '^ *(MESSAGE|LISTENER|ROUTE|EVENT_PATH|EXIT_CODE|DURATION_MS)=' | head -12

step "HTTP: the site is served"
body=$(curl -fsS "http://127.0.0.1:$port/index.html") || fail "HTTP request failed"
echo "$body"
[[ "$body" == *"v1 hello"* ]] || fail "unexpected page: $body"

# The unit's cgroup (Delegate=yes: the daemon's tree), as the box sees it.
cg=/sys/fs/cgroup$(in_box systemctl show -P ControlGroup execlib@site)
no_job_cgroups() { in_box sh -c "! ls -d '$cg'/job-* >/dev/null 2>&1"; }
# Whether process PID of the box is gone (reaped: a zombie still has /proc/PID).
gone() { quiet_in_box sh -c "! test -e /proc/$1"; }

step "containment: status says a cgroup per job, under the unit's delegated cgroup"
grep '^jobs ' "$out/status.txt" || fail "status has no jobs line"
grep -q "^jobs *a cgroup per job under $cg " "$out/status.txt" || fail "jobs do not get a cgroup each under $cg"

step "a job's setsid grandchild is gone once the job ends; its cgroup is removed"
in_box rm -f /srv/www/site/out/escaped
in_box touch /srv/www/site/content/x.escape
eventually test -s /srv/www/site/out/escaped
escaped=$(in_box cat /srv/www/site/out/escaped)
eventually sh -c 'journalctl --no-pager -u execlib@site ROUTE=escape -o cat | grep -q "job finished"'
box_wait 15000 gone "$escaped" || fail "the escaped grandchild $escaped outlived its job"
box_wait 15000 no_job_cgroups || fail "a job cgroup is left: $(in_box sh -c "ls -d $cg/job-*")"
echo "grandchild $escaped gone, no job-* cgroup left under $cg"

step "a timed-out job: its escaped grandchild ignoring SIGTERM is killed; its cgroup is removed"
in_box rm -f /srv/www/site/out/stubborn
in_box touch /srv/www/site/content/x.stubborn
eventually test -s /srv/www/site/out/stubborn
stubborn=$(in_box cat /srv/www/site/out/stubborn)
in_box grep '^0::' "/proc/$stubborn/cgroup" | tee "$out/stubborn.txt"
grep -q '/job-[0-9-]*$' "$out/stubborn.txt" || fail "the grandchild $stubborn is not in a job cgroup"
# SIGTERM is bit 15 of the ignored set.
[ $(( 0x$(in_box sed -n 's/^SigIgn:\t*//p' "/proc/$stubborn/status") >> 14 & 1 )) = 1 ] || fail "the grandchild does not ignore SIGTERM"
eventually sh -c 'journalctl --no-pager -u execlib@site ROUTE=stubborn -o cat | grep -q "killed after its timeout"'
box_wait 15000 gone "$stubborn" || fail "the grandchild $stubborn of the timed-out job survived"
box_wait 15000 no_job_cgroups || fail "a job cgroup is left: $(in_box sh -c "ls -d $cg/job-*")"
journal ROUTE=stubborn -o cat | grep -E 'timed out|SIGTERM|grace|failed' || true
echo "grandchild $stubborn (ignoring SIGTERM, in its job's cgroup) gone, no job-* cgroup left under $cg"

step "memory_max: enforced where the memory controller is on cgroup v2, else warned"
controllers=$(in_box cat "$cg/cgroup.controllers")
echo "controllers available to $cg: ${controllers:-none}"
if [[ " $controllers " == *" memory "* ]]; then
  # memory.max does not cover swap: with no swap at all, the job must hit its limit.
  in_box systemctl set-property --runtime execlib@site MemorySwapMax=0
  in_box touch /srv/www/site/content/x.hog
  eventually sh -c 'journalctl --no-pager -u execlib@site ROUTE=hog -o cat | grep -q "exceeded memory_max"'
  journal ROUTE=hog -o cat | grep 'exceeded memory_max'
  if journal ROUTE=hog -o cat | grep '^allocated'; then fail "the job allocated past its memory_max"; fi
else
  eventually sh -c 'journalctl --no-pager -u execlib@site -o cat | grep -q "route hog: memory_max is not enforced"'
  journal -o cat | grep -m1 'route hog: memory_max is not enforced' || true
  v1=$(in_box awk '$1 == "memory" && $2 != 0 { print $2 }' /proc/cgroups)
  if [ -n "$v1" ]; then
    echo "NOT EXERCISED: memory_max enforcement: this host's memory controller is bound to cgroup v1 (hierarchy $v1), so no cgroup v2 job can have it; checked the warning instead"
  else
    echo "NOT EXERCISED: memory_max enforcement: the memory controller is not available in $cg; checked the warning instead"
  fi
fi

step "the journal's \"job finished\" entry has CPU_USEC and MEMORY_PEAK"
journal ROUTE=convert 'MESSAGE=job finished' -n 1 -o verbose >"$out/finished.txt"
grep -E '^ *(MESSAGE|EXIT_CODE|CPU_USEC|MEMORY_PEAK)=' "$out/finished.txt" || true
grep -qE '^ *CPU_USEC=[0-9]+$' "$out/finished.txt" || fail "no CPU_USEC on \"job finished\""
grep -qE '^ *MEMORY_PEAK=[1-9][0-9]*$' "$out/finished.txt" || fail "no MEMORY_PEAK on \"job finished\""

step "systemctl reload applies a changed route"
write_config v2
in_box systemctl reload execlib@site
in_box sh -c 'echo again > /srv/www/site/content/index.md'
eventually grep -q 'v2 again' /srv/www/site/public/index.html
journal -g 'reloaded' | tail -n 1

step "systemctl reload with a broken config fails and keeps the old one"
in_box sh -c 'printf "[[listener]]\nname = \"pages\"\nbogus = 1\n" > /etc/execlib/site.toml'
if in_box systemctl reload execlib@site; then fail "reload of a broken config succeeded"; fi
[ "$(in_box systemctl is-active execlib@site)" = active ] || fail "not active after a failed reload"
eventually sh -c 'journalctl --no-pager -u execlib@site -g "reload failed" | grep -q "site.toml:3:1"'
in_box sh -c 'echo still > /srv/www/site/content/index.md'
eventually grep -q 'v2 still' /srv/www/site/public/index.html
write_config v2

step "execlibctl shutdown: inactive with Result=success"
in_box execlibctl shutdown
eventually sh -c '[ "$(systemctl is-active execlib@site)" = inactive ]'
[ "$(in_box systemctl show -P Result execlib@site)" = success ] || fail "Result is not success"

step "systemctl stop: listeners stop before the server; a running job gets SIGTERM"
in_box systemctl start execlib@site
in_box sh -c 'touch /srv/www/site/content/job.slow'
eventually sh -c 'journalctl --no-pager -u execlib@site ROUTE=slow | grep -q "slow job started"'
pid=$(in_box systemctl show -P MainPID execlib@site)
in_box systemctl stop execlib@site
[ "$(in_box systemctl show -P Result execlib@site)" = success ] || fail "stop did not end with Result=success"
# The daemon's own lines only (systemd's "Stopping..." may be stamped either side).
eventually sh -c "journalctl --no-pager _PID=$pid -o cat | grep -q 'shutdown complete'"
in_box journalctl --no-pager _PID="$pid" -o cat >"$out/stop.txt"
grep -n -E 'stopping listeners|got SIGTERM|listeners stopped|stopping HTTP server|shutdown complete' "$out/stop.txt" || true
line_of() { grep -n -m1 "$1" "$out/stop.txt" | cut -d: -f1 || true; }
listeners=$(line_of 'listeners stopped')
server=$(line_of 'stopping HTTP server')
term=$(line_of 'got SIGTERM')
[ -n "$listeners" ] && [ -n "$server" ] && [ "$listeners" -lt "$server" ] || fail "listeners did not stop before the server"
[ -n "$term" ] && [ "$term" -lt "$listeners" ] || fail "the running job did not get SIGTERM while its listener stopped"

step "a broken config makes systemctl start fail, with the error in the journal"
in_box sh -c 'printf "[[listener]]\nname = \"pages\"\nbogus = 1\n" > /etc/execlib/site.toml'
if in_box systemctl start execlib@site; then fail "start with a broken config succeeded"; fi
eventually sh -c 'journalctl --no-pager -u execlib@site -o cat | grep -q "site.toml:3:1: unknown field .bogus."'
# Restart=on-failure retries a failed start: stop that before the config is fixed.
in_box systemctl stop execlib@site
in_box systemctl reset-failed execlib@site 2>/dev/null || true
write_config v2

step "watchdog: a healthy daemon outlives several periods; a frozen one is restarted"
in_box sh -c 'printf "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=2s\n" > /etc/systemd/system/execlib@site.service.d/watchdog.conf && systemctl daemon-reload'
in_box systemctl start execlib@site
frozen=$(in_box systemctl show -P MainPID execlib@site)
restarts=$(in_box systemctl show -P NRestarts execlib@site)
# Four periods of WatchdogSec=2s: pings at half the period keep it alive throughout.
sleep 8
[ "$(in_box systemctl show -P MainPID execlib@site)" = "$frozen" ] || fail "the healthy daemon was replaced"
[ "$(in_box systemctl show -P NRestarts execlib@site)" = "$restarts" ] || fail "the healthy daemon was restarted"
[ "$(in_box systemctl is-active execlib@site)" = active ] || fail "the healthy daemon is not active"
# (grep reads all: with -q it could stop early, and pipefail would hide the match)
if journal -o cat | grep -i "watchdog timeout" >/dev/null; then fail "watchdog timeout on a healthy daemon"; fi
echo "pid $frozen alive and pinging after 8 s (4 periods)"
in_box kill -STOP "$frozen"
box_wait 20000 quiet_in_box sh -c "pid=\$(systemctl show -P MainPID execlib@site); [ \"\$pid\" != 0 ] && [ \"\$pid\" != $frozen ] && [ \"\$(systemctl is-active execlib@site)\" = active ]" \
  || fail "systemd did not restart the frozen daemon"
eventually sh -c 'journalctl --no-pager -u execlib@site -o cat | grep -qi "watchdog timeout"'
in_box systemctl show -P NRestarts execlib@site

step "socket activation: execlib@site.socket owns the port and starts the service"
in_box sh -c 'rm /etc/systemd/system/execlib@site.service.d/watchdog.conf && systemctl daemon-reload'
in_box systemctl stop execlib@site
sport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
in_box sh -c "mkdir -p /etc/systemd/system/execlib@site.socket.d && printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:$sport\n' > /etc/systemd/system/execlib@site.socket.d/port.conf && systemctl daemon-reload"
in_box systemctl start execlib@site.socket
[ "$(in_box systemctl is-active execlib@site)" = inactive ] || fail "the service started before a connection"
body=$(curl -fsS "http://127.0.0.1:$sport/index.html") || fail "HTTP through the socket unit failed"
[[ "$body" == *"v2"* ]] || fail "unexpected page: $body"
# The HTTP server answers before the listeners are up and READY=1 is sent, so
# systemd may still say "activating" when the reply arrives.
box_wait 15000 quiet_in_box sh -c '[ "$(systemctl is-active execlib@site)" = active ]' || fail "the connection did not start the service"
in_box execlibctl status | grep -q "127.0.0.1:$sport (socket from systemd)" || fail "status does not show the socket"
# A changed [server] restarts the HTTP server on the same socket from systemd.
in_box sed -i 's/^root = /delay_ms = 40\nroot = /' /etc/execlib/site.toml
in_box systemctl reload execlib@site
eventually sh -c 'journalctl --no-pager -u execlib@site -o cat | grep -q "stopping the HTTP server for the new"'
curl -fsS "http://127.0.0.1:$sport/index.html" >/dev/null || fail "the socket from systemd stopped serving after the server restarted"

step "removing the package stops running instances"
in_box dpkg -r execlib >/dev/null
[ "$(in_box systemctl is-active execlib@site)" != active ] || fail "still active after dpkg -r"
[ "$(in_box systemctl is-active execlib@site.socket)" != active ] || fail "socket still active after dpkg -r"

printf '\ne2e.sh: all steps passed\n'
