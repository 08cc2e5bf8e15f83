#!/usr/bin/env bash
# Builds target/debian/execlib_VERSION-1_ARCH.deb: release binaries, man pages and
# completions (examples/package_assets.rs), then cargo-deb (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi
cargo build --release --bins
cargo run --release --quiet --example package_assets -- target/assets
cargo deb --no-build --strip "$@"
