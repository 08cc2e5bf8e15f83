#!/usr/bin/env bash
# The adversarial suite at full scale: builds in release, runs every case one at a
# time against the real execlibd, then prints the figures as a Markdown table.
#
#   bash tests/adversarial/run.sh            # every case
#   bash tests/adversarial/run.sh slowloris  # extra arguments filter the cases
#
# The table goes to stdout, everything else to stderr. Exits 0 only when every case held. CI runs the same cases at a smaller scale with
# the rest of the suite (`cargo nextest run`).
set -uo pipefail
cd "$(dirname "$0")/../.."

out=$(mktemp --suffix=.adversarial)
trap 'rm -f "$out"' EXIT

echo "== building (release)" >&2
cargo build --release --bins && cargo test --release --test adversarial --no-run || exit 2

echo "== running the adversarial cases (full scale)" >&2
export EXECLIB_ADVERSARIAL=full EXECLIB_ADVERSARIAL_OUT="$out"
# The runner's output goes to stderr: stdout is the table alone.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --test adversarial --no-capture --test-threads 1 --no-fail-fast "$@" >&2
else
  cargo test --release --test adversarial -- --test-threads=1 --nocapture "$@" >&2
fi
status=$?

echo
echo "| case | held | figures |"
echo "| --- | --- | --- |"
awk '/^ADVERSARIAL / {
  gsub(/\|/, "\\|")
  name = $2; held = $3; sub(/^case=/, "", name); sub(/^held=/, "", held)
  $1 = $2 = $3 = ""; sub(/^ +/, "")
  printf "| %s | %s | %s |\n", name, held, $0
}' "$out"

if [ "$status" -ne 0 ] || grep -q ' held=no' "$out" || [ ! -s "$out" ]; then
  echo >&2
  echo "adversarial: at least one case did not hold (test run exit $status)" >&2
  exit 1
fi
