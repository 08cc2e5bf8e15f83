#!/usr/bin/env bash
# tests/systemd/smoke.sh -- checks that the systemd test box (box.sh) works:
# boot, a unit's output in the journal, Type=notify, dpkg -i of a .deb from
# the bind-mounted /pkg (writing only to the box's overlay), journal dump,
# teardown leaving nothing on the host.
#
#   sudo bash tests/systemd/smoke.sh
set -euo pipefail

if [[ $EUID -ne 0 ]]; then
    why="needs root (the box uses mount/pid/cgroup namespaces, overlayfs and cgroupfs, which need CAP_SYS_ADMIN on the host)"
    if [[ ${TESTS_NO_SKIP:-} == 1 ]]; then
        echo "smoke.sh: FAIL: $why (TESTS_NO_SKIP=1: no skipping)" >&2
        exit 1
    fi
    echo "smoke.sh: SKIP: $why"
    exit 0
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/systemd/box.sh
source "$here/box.sh"

step() { echo "smoke: $*" >&2; }
fail() {
    echo "smoke: FAIL: $*" >&2
    exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/execlib-box-smoke.XXXXXX")
cleanup() {
    box_stop
    rm -rf "$work"
}
trap cleanup EXIT

# A trivial .deb: one file, and a postinst that talks to the box's systemd.
build_deb() { # <out_dir>
    local src=$work/src
    mkdir -p "$src/DEBIAN" "$src/usr/share/execlib-box-smoke" "$1"
    cat >"$src/DEBIAN/control" <<'EOF'
Package: execlib-box-smoke
Version: 1.0
Architecture: all
Maintainer: execlib tests <tests@invalid>
Description: execlib systemd box smoke-test package
EOF
    cat >"$src/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
systemctl is-system-running >/var/lib/execlib-box-smoke.postinst || true
EOF
    chmod 0755 "$src/DEBIAN/postinst"
    echo "hello from the deb" >"$src/usr/share/execlib-box-smoke/hello.txt"
    dpkg-deb --root-owner-group --build "$src" "$1/execlib-box-smoke_1.0_all.deb" >/dev/null
}

# journal_has <unit> <exact line>: the unit's messages include the line.
journal_has() {
    local out
    out=$(box_exec journalctl --no-pager -o cat -u "$1") || return 1
    grep -qxF -- "$2" <<<"$out"
}

check_state() {
    local state
    state=$(box_exec systemctl is-system-running) || true
    [[ $state == running || $state == degraded ]] || fail "system state: $state"
    step "is-system-running: $state"
    [[ $state == running ]] || box_exec systemctl --failed --no-pager >&2 || true
}

check_oneshot() {
    local out
    box_exec tee /etc/systemd/system/hello.service >/dev/null <<'EOF'
[Unit]
Description=box smoke oneshot

[Service]
Type=oneshot
ExecStart=/bin/echo hi
EOF
    box_exec systemctl daemon-reload
    box_exec systemctl start hello.service
    box_wait 5000 journal_has hello.service hi || fail "journalctl -u hello lacks 'hi'"
    # (capture first: grep -q closing the pipe early would trip pipefail)
    out=$(box_exec journalctl --no-pager -o verbose -u hello.service)
    grep -q '_SYSTEMD_UNIT=hello.service' <<<"$out" || fail "no _SYSTEMD_UNIT=hello.service"
    step "hello.service ran; journalctl -u hello shows 'hi'"
}

# Type=notify with the main process itself sending READY=1 (like execlibd):
# systemd-run returns only once READY=1 has arrived.
check_notify() {
    local sub
    # shellcheck disable=SC2016 # perl code
    box_exec systemd-run --quiet --unit=hello-notify -p Type=notify \
        perl -MSocket -e '
            $| = 1;
            (my $p = $ENV{NOTIFY_SOCKET}) =~ s/^@/\0/;
            socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or die "socket: $!";
            send($s, "READY=1", 0, pack_sockaddr_un($p)) or die "send: $!";
            print "notify-ready\n";
            sleep 600;'
    sub=$(box_exec systemctl show -P SubState hello-notify.service)
    [[ $sub == running ]] || fail "hello-notify is $sub after start"
    box_wait 5000 journal_has hello-notify.service notify-ready ||
        fail "hello-notify output missing from journal"
    box_exec systemctl stop hello-notify.service
    step "Type=notify service became ready, logged, stopped"
}

# dpkg -i inside the box: installed there, invisible on the host.
check_dpkg() {
    box_exec dpkg -i /pkg/execlib-box-smoke_1.0_all.deb >/dev/null
    box_exec dpkg-query -W execlib-box-smoke >/dev/null || fail "not installed in box"
    [[ $(box_exec cat /usr/share/execlib-box-smoke/hello.txt) == "hello from the deb" ]] ||
        fail "package file missing in box"
    [[ $(box_exec cat /var/lib/execlib-box-smoke.postinst) =~ ^(running|degraded)$ ]] ||
        fail "postinst did not reach the box's systemd"
    box_exec test -f /run/box/upper/usr/share/execlib-box-smoke/hello.txt ||
        fail "package file not in the overlay's upper layer"
    [[ ! -e /usr/share/execlib-box-smoke && ! -e /var/lib/execlib-box-smoke.postinst ]] ||
        fail "dpkg wrote to the host"
    [[ ! -e /var/lib/dpkg/info/execlib-box-smoke.list ]] || fail "host dpkg db touched"
    ! dpkg-query -W execlib-box-smoke >/dev/null 2>&1 || fail "installed on the host"
    step "dpkg -i worked in the box and left the host alone"
}

check_journal_dump() {
    box_journal_dump "$work/journal.txt"
    grep -q '_SYSTEMD_UNIT=hello.service' "$work/journal.txt" || fail "journal dump incomplete"
    step "journal dump: $(grep -c '^    MESSAGE=' "$work/journal.txt") entries"
}

# After box_stop: no processes, host mounts, cgroups or temp dirs left.
check_nothing_left() { # <pid1> <launcher_pid> <box_dir> <cgroup>
    local p st
    for p in "$1" "$2"; do # gone, or at most a zombie not yet reaped by init
        st=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        st=${st##*) }
        [[ ${st%% *} == Z ]] || fail "process $p still running"
    done
    [[ ! -e $3 ]] || fail "$3 left behind"
    [[ ! -e $4 ]] || fail "cgroup $4 left behind"
    ! findmnt -rn -o TARGET,SOURCE | grep -E "$BOX_NAME|box-(root|upper|dev)" ||
        fail "mounts left on the host"
    step "nothing left behind"
}

main() {
    local pid1 launcher dir cg
    build_deb "$work/pkg"
    box_start "$work/pkg"
    pid1=$BOX_PID launcher=$_BOX_LAUNCH_PID dir=$BOX_DIR cg=$BOX_CGROUP
    check_state
    check_oneshot
    check_notify
    check_dpkg
    check_journal_dump
    box_stop
    check_nothing_left "$pid1" "$launcher" "$dir" "$cg"
    step "PASS"
}

main "$@"
