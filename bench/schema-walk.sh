#!/usr/bin/env bash
# Instructions per streaming schema check of bench/policies.sh's 1 KiB order, counted by
# callgrind (crates/policy/examples/walk_count.rs): two runs of different lengths, so the
# set-up cancels out. Exact and repeatable, unlike wall-clock figures on two shared cores.
# Usage: bench/schema-walk.sh   (env: N1, N2)
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-1000}
N2=${N2:-11000}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
cargo build --release --quiet -p portcullis-policy --example walk_count
OUT=bench/out-schema-walk
rm -rf "$OUT"; mkdir -p "$OUT"
python3 bench/bodies.py "$OUT"
count() {
  valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$1" \
    target/release/examples/walk_count bench/order.schema.json "$OUT/order.json" "$1" \
    2>"$OUT/valgrind.$1" >"$OUT/accepted.$1"
  [ "$(cat "$OUT/accepted.$1")" = "$1" ] || { echo "bench: the order was not accepted" >&2; exit 1; }
  awk '/Collected/ {print $4}' "$OUT/valgrind.$1"
}
a=$(count "$N1")
b=$(count "$N2")
echo "instructions per check of the 1 KiB order: $(( (b - a) / (N2 - N1) ))  (dump: $OUT/callgrind.$N2)"
