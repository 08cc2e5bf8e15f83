#!/usr/bin/env bash
# HTTP benchmarks, each next to its comparison in the same run:
#  1. requests per second for a small file: wrk against execlibd and against nginx
#     serving the same directory (rounds alternate; medians);
#  2. LiveReload latency, file write -> reload message at a WebSocket client, p50/p99,
#     with delay_ms = 0 and with the default 30.
# Usage: bash bench/http.sh [ROUNDS]   (installs wrk and nginx-light when missing; needs root for that)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk nginx-light; break; }
done
cargo build --release --quiet --bins --example reload_latency
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/public" "$work/src"
head -c 1024 /dev/urandom | base64 | head -c 1024 > "$work/public/small.html"
head -c $((10 * 1024 * 1024)) /dev/urandom > "$work/public/large.bin"

start_execlibd() { # start_execlibd DELAY_MS; sets $addr to its HTTP address
  cat > "$work/site.toml" <<TOML
[control]
socket = "control.sock"
[server]
listen = "127.0.0.1:0"
root = "public"
delay_ms = $1
[[listener]]
name = "idle"
  [[listener.route]]
  path = "src"
  shell = "true"
TOML
  RUST_LOG=warn target/release/execlibd --config "$work/site.toml" --log-format text 2>>"$work/daemon.log" &
  pids+=($!)
  for _ in $(seq 100); do
    addr=$(target/release/execlibctl --socket "$work/control.sock" --json status 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["server"]["listen"])' 2>/dev/null) && break
    sleep 0.05
  done
}
stop_execlibd() { target/release/execlibctl --socket "$work/control.sock" shutdown >/dev/null; wait "${pids[-1]}" || true; }

nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/nginx.conf" <<NGINX
user root;
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  types { text/html html; application/octet-stream bin; }
  server { listen 127.0.0.1:$nginx_port; root $work/public; add_header Cache-Control no-cache; }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
sleep 0.3

rps() { wrk -t2 -c32 -d5s "$1" | awk '/Requests\/sec/ {print $2}'; }
start_execlibd 30
ours=(); theirs=()
for _ in $(seq "$rounds"); do
  ours+=("$(rps "http://$addr/small.html")")
  theirs+=("$(rps "http://127.0.0.1:$nginx_port/small.html")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_ours=$(median "${ours[@]}"); m_theirs=$(median "${theirs[@]}")
echo "small file (1 KiB), wrk -t2 -c32 -d5s, $rounds rounds each, medians:"
echo "  execlibd: $m_ours req/s   (rounds: ${ours[*]})"
echo "  nginx:    $m_theirs req/s   (rounds: ${theirs[*]})"
python3 -c "print(f'  ratio execlibd / nginx: {$m_ours / $m_theirs:.2f}')"
# CPU ticks (utime + stime) of the given processes, summed.
ticks() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{t += $1} END {print t}'; }
# wrk against URL while PIDS run; prints "REQ/S CPU-MS-PER-REQUEST" for those processes.
rps_large() {
  local url=$1; shift
  local t0 out t1
  t0=$(ticks "$@"); out=$(wrk -t2 -c8 -d5s "$url" | awk '/Requests\/sec/ {print $2}'); t1=$(ticks "$@")
  python3 -c "print($out, round(($t1 - $t0) * 1000 / $(getconf CLK_TCK) / ($out * 5), 2))"
}
ours=(); theirs=(); ours_cpu=(); theirs_cpu=()
daemon_pid=${pids[-1]}; nginx_pids="${pids[0]} $(pgrep -P "${pids[0]}" | tr "\n" " ")"
for _ in $(seq "$rounds"); do
  read -r r c < <(rps_large "http://$addr/large.bin" "$daemon_pid"); ours+=("$r"); ours_cpu+=("$c")
  # shellcheck disable=SC2086
  read -r r c < <(rps_large "http://127.0.0.1:$nginx_port/large.bin" $nginx_pids); theirs+=("$r"); theirs_cpu+=("$c")
done
m_ours=$(median "${ours[@]}"); m_theirs=$(median "${theirs[@]}")
echo "large file (10 MiB), wrk -t2 -c8 -d5s, $rounds rounds each, medians:"
echo "  execlibd: $m_ours req/s, $(median "${ours_cpu[@]}") CPU ms per request   (rounds: ${ours[*]})"
echo "  nginx:    $m_theirs req/s, $(median "${theirs_cpu[@]}") CPU ms per request   (rounds: ${theirs[*]})"
python3 -c "print(f'  ratio execlibd / nginx: {$m_ours / $m_theirs:.2f}')"
latency=$(target/release/examples/reload_latency "$addr" "$work/public" 200)
stop_execlibd
start_execlibd 0
latency0=$(target/release/examples/reload_latency "$addr" "$work/public" 200)
stop_execlibd
read -r n p50 p99 <<<"$latency0"
echo "LiveReload, write -> reload message, $n changes each:"
echo "  delay_ms = 0:  p50 $p50 ms, p99 $p99 ms"
read -r n p50 p99 <<<"$latency"
echo "  delay_ms = 30: p50 $p50 ms, p99 $p99 ms"
