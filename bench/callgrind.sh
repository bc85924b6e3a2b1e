#!/usr/bin/env bash
# Instructions per request on the no-policy route, counted by callgrind: user-space work of the
# gateway process only (kernel time is not counted), but repeatable whatever else the machine
# is doing, so it resolves changes of a few percent that wrk throughput on two shared cores
# cannot. Usage: bench/callgrind.sh  (env: BIN=another/portcullis for an A/B, ACCESS_LOG=false)
# Prints requests served under valgrind and instructions per request; the dump (for
# callgrind_annotate --inclusive=yes) stays in bench/out-callgrind/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ACCESS_LOG=${ACCESS_LOG:-true}
UP_PORT=${UP_PORT:-18391}
PCL_PORT=${PCL_PORT:-18393}
PCL_ADMIN=${PCL_ADMIN:-18394}
need valgrind || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
need wrk || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet
BIN=${BIN:-target/release/portcullis}
OUT=bench/out-callgrind
rm -rf "$OUT"; mkdir -p "$OUT/logs"

target/release/portcullis upstream --listen 127.0.0.1:$UP_PORT >"$OUT/upstream.log" 2>&1 & pids+=($!)
wait_port $UP_PORT
cat >"$OUT/portcullis.toml" <<TOML
[server]
listen = "127.0.0.1:$PCL_PORT"
admin_listen = "127.0.0.1:$PCL_ADMIN"
data_dir = "pcl-data"
[logging]
access_log = $ACCESS_LOG
[[routes]]
id = "bench"
methods = ["GET"]
path = "/{*rest}"
upstream = "http://127.0.0.1:$UP_PORT"
TOML
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
  "$BIN" serve --config "$OUT/portcullis.toml" >"$OUT/logs/access.log" 2>"$OUT/valgrind.log" & pids+=($!)
GW=${pids[-1]}
for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$PCL_PORT) 2>/dev/null && break; sleep 0.1; done
# Warm up (pools, caches, lazily built state), then count only the measured run.
wrk -t1 -c8 -d3s "http://127.0.0.1:$PCL_PORT/bench/item" >/dev/null
sleep 0.5
callgrind_control -z "$GW" >/dev/null 2>&1
out=$(wrk -t1 -c8 -d5s "http://127.0.0.1:$PCL_PORT/bench/item")
sleep 0.5
callgrind_control -d "$GW" >/dev/null 2>&1
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
dump=$(ls -t "$OUT"/callgrind.out* | head -n1)
ir=$(awk '/^(totals|summary):/ {print $2; exit}' "$dump")
echo "access_log=$ACCESS_LOG requests=$reqs instructions/request=$((ir / reqs)) dump=$dump"
