#!/usr/bin/env bash
# Save -> new content in headless Chromium, end to end, execlib against the
# LiveReload peers at their defaults, in one run (see bench/browser/run.mjs):
#   execlibd serve DIR (no config), node-livereload 0.10.3 (its own livereload.js;
#   files from nginx), live-server 1.2.2, browser-sync 3.0.4.
# Prints a table: save -> new page painted (p50, p90), DOMContentLoaded, and a
# stylesheet swapped without a reload, with misses and extra page loads.
# Usage: bash bench/browser.sh [SAVES [ROUNDS]]   (default 15 saves, 2 rounds)
# Installs chromium, nginx-light and nodejs/npm from Debian when missing (needs
# root for that), and the peers from npm at the versions pinned in
# bench/browser/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."
saves=${1:-15}
rounds=${2:-2}
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v nginx >/dev/null || need+=(nginx-light)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
# `npm install`, which keeps to the lock file: `npm ci` (npm 11) stops on entries
# it finds missing from it (nested dependencies of live-server) and installs nothing.
(cd bench/browser && npm install --no-audit --no-fund --no-save --loglevel=error)
cargo build --release --quiet --bins
node bench/browser/run.mjs --saves "$saves" --rounds "$rounds" --chromium "$(command -v chromium)"
