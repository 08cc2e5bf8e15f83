# shellcheck shell=bash
# tests/systemd/box.sh -- a throwaway systemd "box" for end-to-end tests.
#
# Boots /lib/systemd/systemd as PID 1 of fresh pid/mount/uts/ipc/cgroup
# namespaces, on an overlay whose lower layer is the host's / and whose upper
# layer is a tmpfs, so nothing the box does (tmpfiles, sysusers, dpkg, journal,
# unit files) reaches the host. No container engine needed. Root only.
#
# Usage (source it; call box_start from the main shell, not a subshell):
#
#   source tests/systemd/box.sh
#   trap box_stop EXIT
#   box_start /path/to/dir/with/debs      # bind-mounted read-only at /pkg
#   box_exec dpkg -i /pkg/execlib.deb
#   box_exec systemctl start execlib@site
#   box_journal_dump "$out/journal.txt"   # before box_stop: journal is on tmpfs
#   box_stop
#
# API
#   box_start <pkgdir>   Boot the box with <pkgdir> bind-mounted read-only at
#                        /pkg; return once `systemctl is-system-running`
#                        says running or degraded (gives up after
#                        $BOX_BOOT_TIMEOUT_MS, default 30000, printing the
#                        console log and tearing down). Sets:
#                          BOX_PID      PID 1 of the box, as seen from the host
#                          BOX_DIR      host temp dir (console.log, init.sh)
#                          BOX_CGROUP   host path of the box's cgroup (v2)
#                          BOX_CONSOLE  $BOX_DIR/console.log (box's /dev/console)
#                        Inside the box, /run/box/upper is a read-only view of
#                        the overlay's upper layer: every file the box created
#                        or changed (deleted ones show as 0:0 char devices).
#   box_exec <cmd...>    Run cmd in all of the box's namespaces (nsenter -a)
#                        with a clean environment (PATH, HOME, LANG, TERM,
#                        PAGER, DEBIAN_FRONTEND=noninteractive only; no host
#                        SYSTEMD_* variables). stdin/stdout/stderr and the exit
#                        status pass through. The command runs as root in the
#                        box's namespaces but in the host's cgroup.
#   box_wait <timeout_ms> <cmd...>
#                        Poll cmd every 50 ms until it succeeds (status 0) or
#                        the deadline passes (status 1). For "eventually" checks.
#   box_journal_dump <file> [mode]
#                        Write the box's whole journal to a host file
#                        (journalctl -o <mode>, default verbose; use export for
#                        a machine-readable dump).
#   box_stop             Power the box off (SIGRTMIN+4 to its PID 1, up to
#                        $BOX_STOP_TIMEOUT_MS, default 10000), else SIGKILL it;
#                        then remove its cgroups and BOX_DIR. Idempotent, never
#                        fails: safe in an EXIT trap. If BOX_CONSOLE_COPY names
#                        a host file, the console log (boot and shutdown
#                        messages of PID 1) is saved there first.
#
# Knobs: BOX_BOOT_TIMEOUT_MS, BOX_STOP_TIMEOUT_MS, BOX_CONSOLE_COPY,
#        BOX_TMPDIR (where BOX_DIR is made; default $TMPDIR or /tmp),
#        BOX_TRACE=1 (bash -x for the in-box setup script, into the console).
#
# Design notes
#   * Every mount (tmpfs for upper/work, overlay, proc, sysfs, /dev, /pkg) is
#     made inside the box's private mount namespace, so the host never sees
#     any of them and none can leak, even if the test is SIGKILLed. The
#     upper/work tmpfs is mounted on $BOX_DIR/t in that namespace only.
#   * script(1) and unshare get PR_SET_PDEATHSIG=SIGKILL (setpriv) and unshare
#     runs with --kill-child: if the test shell dies without box_stop (e.g.
#     SIGKILL), the whole box dies with it; only the empty dirs BOX_DIR and
#     BOX_CGROUP (with systemd's empty sub-cgroups) can then be left behind.
#   * The box shares the host's network namespace (ports bound in the box are
#     host ports) and user namespace (root is root).
#   * The box boots box.target (Requires=basic.target), not multi-user.target,
#     so the host's enabled services (nginx, postgresql, ...) are not started;
#     timers are removed from timers.target.wants.
#   * Processes started by box_exec join the box's namespaces but stay in the
#     host's cgroup; anything that must be supervised should be started
#     through systemctl/systemd-run inside the box.

BOX_NAME=${BOX_NAME:-execlib-box}

# ---------------------------------------------------------------------------
# Small helpers (host side)
# ---------------------------------------------------------------------------

_box_say() { echo "box: $*" >&2; }

# Milliseconds since the epoch (bash >= 5 EPOCHREALTIME, no subprocess).
_box_now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

# _box_until <timeout_ms> <cmd...>: poll cmd every 50 ms until it succeeds;
# return 1 if the deadline passes first.
_box_until() {
    local end=$(($(_box_now_ms) + $1))
    shift
    until "$@"; do
        (($(_box_now_ms) < end)) || return 1
        sleep 0.05
    done
}

# True if <pid> exists and is not a zombie (kill -0 succeeds on zombies).
_box_alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

_box_dead() { ! _box_alive "$1"; }

# Mount point of the cgroup2 hierarchy: /sys/fs/cgroup on unified hosts,
# /sys/fs/cgroup/unified on hybrid (v1 + v2) hosts like Debian 12 here.
_box_cgroup2_root() {
    local m
    m=$(findmnt -rn -t cgroup2 -o TARGET | head -n1)
    [[ -n $m ]] || { _box_say "no cgroup2 hierarchy mounted"; return 1; }
    echo "$m"
}

# ---------------------------------------------------------------------------
# Inside the box. These functions are written into $BOX_DIR/init.sh with
# `declare -f` and run by bash as PID 1 of the new namespaces; they only use
# their arguments. Their output goes to $BOX_DIR/console.log.
# ---------------------------------------------------------------------------

# Stage 1 (PID 1, new pid/mount/uts/ipc namespaces): move into the box's own
# v2 cgroup, then make that cgroup the root of a new cgroup namespace, so the
# box's systemd sees it as /sys/fs/cgroup and manages only that subtree.
_box_init_cgroup() { # <box_dir> <cgroup_dir> <pkgdir>
    echo 0 >"$2/cgroup.procs"
    exec unshare --cgroup bash ${BOX_TRACE:+-x} "$1/init.sh" \
        _box_init_root "$1" "$3"
}

# Stage 2: build the root file system, pivot into it, exec systemd.
_box_init_root() { # <box_dir> <pkgdir>
    local dir=$1 pkg=$2 root=$1/t/root console
    console=$(tty) # the pty slave from script(1), our stdin/stdout/stderr
    stty cols 160 rows 50 # a pty starts at 0x0; keeps status lines whole
    echo "${BOX_NAME:-execlib-box}" >/proc/sys/kernel/hostname # own UTS ns
    _box_mount_overlay "$dir"
    _box_mount_api "$root"
    _box_mount_dev "$root" "$console"
    _box_mount_binds "$root" "$pkg" "$dir/t/upper"
    _box_configure "$root"
    # pivot_root into the overlay and drop the host's tree entirely.
    cd "$root"
    mkdir .oldroot
    pivot_root . .oldroot
    cd /
    umount -l /.oldroot
    rmdir /.oldroot
    # PID 1's stdio: the console; no colours in console.log.
    exec </dev/null >/dev/console 2>&1
    exec env -i container="${BOX_NAME:-execlib-box}" SYSTEMD_COLORS=0 \
        /lib/systemd/systemd --system --unit=box.target
}

# tmpfs for upper/work (private to this mount namespace) + overlay over /.
# Checked: this works when the host's / is ext4, and when / is itself an
# overlay (as in docker/CI; also with index=on, nfs_export=on, metacopy=on).
# It fails only when / is already two overlays deep: the kernel allows a
# stacking depth of 2 ("overlayfs: maximum fs stacking depth exceeded" in
# dmesg). Binding / elsewhere first does not help there (the depth belongs
# to the superblock), so we just say so.
_box_mount_overlay() { # <box_dir>
    local t=$1/t
    mount -t tmpfs -o mode=0755 box-upper "$t"
    mkdir "$t/upper" "$t/work" "$t/root"
    mount -t overlay box-root \
        -o "lowerdir=/,upperdir=$t/upper,workdir=$t/work" "$t/root" || {
        echo "box: overlayfs refused / as lower layer: $(findmnt -no FSTYPE,OPTIONS /)" >&2
        echo "box: if / is an overlay on an overlay, the kernel's stacking" \
            "depth limit (2) is hit; run the box from a shallower root" >&2
        return 1
    }
}

# proc (with /proc/sys and /proc/sysrq-trigger read-only), read-only sysfs,
# the box's cgroup2 subtree, tmpfs /run and /tmp.
_box_mount_api() { # <root>
    local r=$1 p
    mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
    for p in "$r/proc/sys" "$r/proc/sysrq-trigger"; do
        [[ -e $p ]] || continue # no sysrq-trigger without CONFIG_MAGIC_SYSRQ
        mount --bind "$p" "$p"
        mount -o remount,bind,ro "$p"
    done
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$r/sys/fs/cgroup"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$r/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r/tmp"
}

# A minimal /dev: a few bound host nodes, a private devpts, /dev/shm, and the
# pty slave of script(1) bound over /dev/console, so PID 1 writes to the
# console log and never touches the real console.
_box_mount_dev() { # <root> <console_pty>
    local r=$1 n
    mount -t tmpfs -o mode=0755,nosuid box-dev "$r/dev"
    for n in null zero full random urandom tty; do
        touch "$r/dev/$n"
        mount --bind "/dev/$n" "$r/dev/$n"
    done
    mkdir -m 0755 "$r/dev/pts"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,nosuid,noexec \
        devpts "$r/dev/pts"
    ln -s pts/ptmx "$r/dev/ptmx"
    mkdir -m 1777 "$r/dev/shm"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r/dev/shm"
    ln -s /proc/self/fd "$r/dev/fd"
    ln -s /proc/self/fd/0 "$r/dev/stdin"
    ln -s /proc/self/fd/1 "$r/dev/stdout"
    ln -s /proc/self/fd/2 "$r/dev/stderr"
    touch "$r/dev/console"
    mount --bind "$2" "$r/dev/console"
}

# Read-only binds: the host's package directory at /pkg, and the overlay's
# upper layer (everything the box changed relative to the host) at
# /run/box/upper, so tests can see exactly what e.g. dpkg -i wrote.
_box_mount_binds() { # <root> <pkgdir> <upperdir>
    mkdir -p "$1/pkg" "$1/run/box/upper"
    mount --bind "$2" "$1/pkg"
    mount -o remount,bind,ro "$1/pkg"
    mount --bind "$3" "$1/run/box/upper"
    mount -o remount,bind,ro "$1/run/box/upper"
}

# Configuration written into the overlay's upper layer only.
_box_configure() { # <root>
    local r=$1 u
    # No timers: they would start apt/man-db/fstrim/... jobs during tests.
    rm -f "$r"/etc/systemd/system/timers.target.wants/*.timer \
        "$r"/usr/lib/systemd/system/timers.target.wants/*.timer
    # Host-global kernel interfaces the box has no business with: debugfs,
    # tracefs, configfs, fusectl mounts, and the kernel audit stream (the box
    # shares the host's network namespace, so it would get the host's audit
    # records in its journal).
    for u in sys-kernel-debug.mount sys-kernel-tracing.mount \
        sys-kernel-config.mount sys-fs-fuse-connections.mount \
        systemd-journald-audit.socket; do
        ln -sf /dev/null "$r/etc/systemd/system/$u"
    done
    # The boot target: basic.target and nothing from multi-user.target.
    cat >"$r/etc/systemd/system/box.target" <<'EOF'
[Unit]
Description=execlib test box
Requires=basic.target
After=basic.target
AllowIsolate=yes
EOF
    # Own identity, so its journal files are not confused with the host's.
    tr -d - </proc/sys/kernel/random/uuid >"$r/etc/machine-id"
    echo "${BOX_NAME:-execlib-box}" >"$r/etc/hostname"
}

# ---------------------------------------------------------------------------
# Host side: start
# ---------------------------------------------------------------------------

# Write the in-box script: the functions above plus a dispatcher line.
_box_write_init() { # <file>
    {
        echo '#!/bin/bash'
        echo 'set -Eeuo pipefail' # -E: the ERR trap also fires in functions
        # shellcheck disable=SC2016 # expanded when init.sh runs
        echo 'trap '\''echo "box init: ${FUNCNAME[0]:-main}: $BASH_COMMAND failed" >&2'\'' ERR'
        declare -f _box_init_cgroup _box_init_root _box_mount_overlay \
            _box_mount_api _box_mount_dev _box_mount_binds _box_configure
        echo '"$@"'
    } >"$1"
}

# Start the box in the background:
#   script           allocates a pty; its slave becomes the box's /dev/console
#                    and everything written to it is logged to $BOX_CONSOLE
#                    (systemd only writes to a console that is a tty)
#   setpriv          PR_SET_PDEATHSIG=SIGKILL on script and on unshare, so
#                    the box dies with the test shell even without box_stop
#   unshare          new pid/mount/uts/ipc namespaces; --kill-child SIGKILLs
#                    the box's PID 1 when unshare dies
_box_launch() { # <pkgdir>
    local cmd
    cmd=exec\ $(printf '%q ' setpriv --pdeathsig KILL \
        unshare --pid --fork --kill-child --mount --uts --ipc \
        --propagation private \
        bash ${BOX_TRACE:+-x} "$BOX_DIR/init.sh" _box_init_cgroup "$BOX_DIR" "$BOX_CGROUP" "$1")
    BOX_NAME=$BOX_NAME BOX_TRACE=${BOX_TRACE:-} SHELL=/bin/sh setpriv --pdeathsig KILL \
        script --quiet --flush --return --command "$cmd" "$BOX_CONSOLE" \
        </dev/null >/dev/null 2>&1 &
    _BOX_LAUNCH_PID=$!
    _box_until 5000 _box_find_pid1 || {
        _box_say "no box PID 1 appeared under pid $_BOX_LAUNCH_PID"
        return 1
    }
}

# PID 1 of the box is the first descendant of the launcher that lives in
# another pid namespace; its parent is the unshare process.
_box_find_pid1() {
    local todo=("$_BOX_LAUNCH_PID") kids p own ns stat
    own=$(readlink /proc/self/ns/pid)
    while ((${#todo[@]})); do
        p=${todo[0]}
        todo=("${todo[@]:1}")
        ns=$(readlink "/proc/$p/ns/pid" 2>/dev/null) || continue # gone
        if [[ $ns != "$own" ]]; then
            stat=$(cat "/proc/$p/stat" 2>/dev/null) || return 1
            stat=${stat##*) }
            BOX_PID=$p
            _BOX_UNSHARE_PID=$(echo "$stat" | cut -d' ' -f2)
            return 0
        fi
        mapfile -t kids < <(pgrep -P "$p" || true)
        todo+=("${kids[@]}")
    done
    return 1
}

# True once PID 1 has exec'd systemd and it reports running or degraded.
# Sets _BOX_STATE. Fails fast (return 2) if the box died.
_box_booted() {
    _box_alive "$BOX_PID" || return 2
    [[ $(cat "/proc/$BOX_PID/comm" 2>/dev/null) == systemd ]] || return 1
    _BOX_STATE=$(box_exec systemctl is-system-running 2>/dev/null) || true
    [[ $_BOX_STATE == running || $_BOX_STATE == degraded ]]
}

_box_wait_booted() {
    local end=$(($(_box_now_ms) + ${BOX_BOOT_TIMEOUT_MS:-30000})) rc
    _BOX_STATE=
    while :; do
        rc=0
        _box_booted || rc=$?
        ((rc == 0)) && return 0
        ((rc == 2)) && { _box_say "box PID 1 exited during boot"; return 1; }
        (($(_box_now_ms) < end)) || {
            _box_say "boot timed out (state: ${_BOX_STATE:-unknown})"
            return 1
        }
        sleep 0.05
    done
}

box_start() { # <pkgdir>
    local pkg t0
    [[ $# -eq 1 && -d $1 ]] || { _box_say "usage: box_start <pkgdir>"; return 2; }
    [[ -z ${_BOX_LAUNCH_PID:-} ]] || { _box_say "a box is already running"; return 1; }
    [[ $EUID -eq 0 ]] || { _box_say "box_start needs root"; return 1; }
    pkg=$(realpath -e "$1")
    t0=$(_box_now_ms)
    # Host state: one temp dir (empty mount point t/ for the in-box tmpfs,
    # console log, init script) and one empty v2 cgroup, same name.
    BOX_DIR=$(mktemp -d "${BOX_TMPDIR:-${TMPDIR:-/tmp}}/$BOX_NAME.XXXXXX")
    BOX_CONSOLE=$BOX_DIR/console.log
    BOX_CGROUP=$(_box_cgroup2_root)/${BOX_DIR##*/}
    mkdir "$BOX_DIR/t" "$BOX_CGROUP"
    : >"$BOX_CONSOLE"
    _box_write_init "$BOX_DIR/init.sh"
    if _box_launch "$pkg" && _box_wait_booted; then
        _box_say "up in $(($(_box_now_ms) - t0)) ms ($_BOX_STATE), PID 1 = $BOX_PID"
        return 0
    fi
    _box_say "boot failed; console log ($BOX_CONSOLE):"
    sed 's/\r//g; s/^/  | /' "$BOX_CONSOLE" >&2 || true
    if [[ -n ${BOX_PID:-} ]] && _box_alive "$BOX_PID"; then
        box_exec systemctl list-jobs --no-pager >&2 || true
        box_exec systemctl --failed --no-pager >&2 || true
        box_exec journalctl -b --no-pager -n 50 >&2 || true
    fi
    box_stop
    return 1
}

# ---------------------------------------------------------------------------
# Host side: drive
# ---------------------------------------------------------------------------

box_exec() { # <cmd...>
    [[ -n ${BOX_PID:-} ]] || { _box_say "box_exec: no box"; return 1; }
    nsenter --target "$BOX_PID" --all \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb PAGER=cat \
        DEBIAN_FRONTEND=noninteractive "$@"
}

# box_wait <timeout_ms> <cmd...>: poll cmd (every 50 ms) until it succeeds;
# status 1 if it never did before the deadline.
box_wait() { _box_until "$@"; }

box_journal_dump() { # <file> [output-mode]
    [[ $# -ge 1 ]] || { _box_say "usage: box_journal_dump <file> [mode]"; return 2; }
    box_exec journalctl --sync 2>/dev/null || true # flush stream buffers
    box_exec journalctl --no-pager --all -o "${2:-verbose}" >"$1"
}

# ---------------------------------------------------------------------------
# Host side: stop
# ---------------------------------------------------------------------------

# Poweroff via SIGRTMIN+4 (only once systemd runs: before that PID 1 is bash,
# and a pid-namespace init ignores signals it has no handler for). The box is
# gone when the launcher (script) has exited: that happens after unshare has
# reaped PID 1, and PID 1's exit has killed everything in its pid namespace.
_box_poweroff() {
    [[ -n ${BOX_PID:-} ]] && _box_alive "$BOX_PID" || return 1
    [[ $(cat "/proc/$BOX_PID/comm" 2>/dev/null) == systemd ]] || return 1
    kill -s SIGRTMIN+4 "$BOX_PID" 2>/dev/null || return 1
    _box_until "${BOX_STOP_TIMEOUT_MS:-10000}" _box_dead "$_BOX_LAUNCH_PID"
}

# SIGKILL PID 1 (and, belt and braces, everything in the box's cgroup): the
# kernel then kills the whole pid namespace, unshare reaps PID 1 and exits,
# script exits. Only if that chain stalls, SIGKILL unshare and script too.
_box_kill() {
    local p
    [[ -z ${BOX_PID:-} ]] || kill -s KILL "$BOX_PID" 2>/dev/null || true
    if [[ -n ${BOX_CGROUP:-} && -w $BOX_CGROUP/cgroup.kill ]]; then
        echo 1 >"$BOX_CGROUP/cgroup.kill" 2>/dev/null || true
    fi
    _box_until 3000 _box_dead "$_BOX_LAUNCH_PID" && return 0
    for p in ${_BOX_UNSHARE_PID:-} "$_BOX_LAUNCH_PID"; do
        kill -s KILL "$p" 2>/dev/null || true
    done
    _box_until 3000 _box_dead "$_BOX_LAUNCH_PID" ||
        _box_say "launcher $_BOX_LAUNCH_PID survived SIGKILL"
}

# rmdir the cgroup tree bottom-up; succeeds once it is gone.
_box_rmdir_tree() {
    find "$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ ! -d $1 ]]
}

_box_rm_cgroup() { # <cgroup_dir>
    [[ -d $1 && ${1##*/} == "$BOX_NAME".* ]] || return 0
    [[ -w $1/cgroup.kill ]] && echo 1 >"$1/cgroup.kill" 2>/dev/null || true
    _box_until 5000 _box_rmdir_tree "$1" || _box_say "could not remove cgroup $1"
}

_box_rm_dir() { # <box_dir>
    local m
    [[ -d $1 && ${1##*/} == "$BOX_NAME".* ]] || return 0
    # Nothing should be mounted here on the host (all box mounts are in its
    # own namespace), but never rm -rf through a mount point.
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(findmnt -rn -o TARGET | grep -F "$1" | sort -r || true)
    rm -rf --one-file-system "$1" || _box_say "could not remove $1"
}

box_stop() {
    local t0 how=poweroff
    t0=$(_box_now_ms)
    if [[ -n ${_BOX_LAUNCH_PID:-} ]]; then
        if ! _box_poweroff; then
            how=SIGKILL
            _box_kill
        fi
        wait "$_BOX_LAUNCH_PID" 2>/dev/null || true # reap our child
        _box_say "stopped by $how in $(($(_box_now_ms) - t0)) ms"
    fi
    if [[ -n ${BOX_CONSOLE_COPY:-} && -f ${BOX_CONSOLE:-} ]]; then
        tr -d '\r' <"$BOX_CONSOLE" >"$BOX_CONSOLE_COPY" || true
    fi
    [[ -z ${BOX_CGROUP:-} ]] || _box_rm_cgroup "$BOX_CGROUP"
    [[ -z ${BOX_DIR:-} ]] || _box_rm_dir "$BOX_DIR"
    unset BOX_PID BOX_DIR BOX_CGROUP BOX_CONSOLE _BOX_STATE \
        _BOX_LAUNCH_PID _BOX_UNSHARE_PID
    return 0
}
