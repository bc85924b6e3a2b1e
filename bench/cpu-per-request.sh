#!/usr/bin/env bash
# Gateway CPU time per request (user + system, all threads, from /proc/PID/stat) of two
# Portcullis binaries on the no-policy route, alternating A and B for PAIRS pairs under the
# same wrk load, with nginx measured the same way in every pair. Whole-run throughput on two
# shared cores moves ±10-30% between runs; CPU per request of the gateway process moves far
# less, and alternating the binaries spreads the machine's drift over both.
# Usage: bench/cpu-per-request.sh A_BIN [B_BIN]   (env: PAIRS, DURATION, CONNS, BARE, PIN, ROUTE)
# ROUTE=guarded measures issue 5's route instead (POST of the 1 KiB order with an API key,
# a rate limit and the JSON Schema; nginx proxies the same POST), as bench/policies.sh does.
# PIN=1 puts wrk and the upstream on CPU 0 and every proxy (all threads) on CPU 1, so the
# proxies' time is not spread over cores they share with the load (taskset).
# BARE=target/release/examples/bare_hyper_proxy adds the floor: hyper and tokio alone, with
# none of the gateway's work (crates/cli/examples/bare_hyper_proxy.rs; build it with
# `cargo build --release --example bare_hyper_proxy`).
# B_ACCESS_LOG=false turns B's access log off: with B the same binary as A, the pairs give the
# access log's own cost per request.
# Prints one line per measurement and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

A=${1:?usage: bench/cpu-per-request.sh A_BIN [B_BIN]}
B=${2:-}
PAIRS=${PAIRS:-5}
DURATION=${DURATION:-5}
DURATION=${DURATION%s}   # seconds; "5s" as the other scripts take it is read as 5
CONNS=${CONNS:-32}
UP_PORT=18491
NGINX_PORT=18492
OUT=bench/out-cpu
rm -rf "$OUT"; mkdir -p "$OUT/nginx"
need wrk && need nginx || { apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null; }
TICK=$(getconf CLK_TCK)

"$A" upstream --listen 127.0.0.1:$UP_PORT >"$OUT/upstream.log" 2>&1 & pids+=($!)
wait_port $UP_PORT

start_nginx "$OUT" $NGINX_PORT $UP_PORT
sleep 0.3
NGINX_PIDS=$(pgrep -P "$(cat "$OUT/nginx/nginx.pid")" | tr "\n" " ")

ROUTE=${ROUTE:-plain}
if [ "$ROUTE" = guarded ]; then
  python3 bench/bodies.py "$OUT"
  printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' \
    "'$(cat "$OUT/order.json")'" >"$OUT/post.lua"
fi
declare -A KEYS
start_gateway() { # name bin port
  mkdir -p "$OUT/$1"
  {
    toml_server "$3" $(($3 + 1))
    [ "$1" != b ] || [ -z "${B_ACCESS_LOG:-}" ] || printf '[logging]\naccess_log = %s\n' "$B_ACCESS_LOG"
    toml_bench_route $UP_PORT
    [ "$ROUTE" != guarded ] || toml_guarded_route $UP_PORT
  } >"$OUT/$1/portcullis.toml"
  if [ "$ROUTE" = guarded ]; then
    cp bench/order.schema.json "$OUT/$1/order.schema.json"
    KEYS[$1]=$("$2" client key issue bench-client --config "$OUT/$1/portcullis.toml" 2>/dev/null)
  fi
  mkdir -p "$OUT/logs-$1"
  "$2" serve --config "$OUT/$1/portcullis.toml" >"$OUT/logs-$1/access.log" 2>&1 & pids+=($!)
  wait_port "$3"
}
# wrk on the measured route; load PORT GATEWAY_NAME|"" [wrk options]
load() {
  local port=$1 key=""
  [ -z "$2" ] || key=${KEYS[$2]:-}
  shift 2
  if [ "$ROUTE" = guarded ]; then
    "${LOAD[@]}" wrk -t1 "$@" -s "$OUT/post.lua" ${key:+-H "Authorization: Bearer $key"} "http://127.0.0.1:$port/guarded/orders"
  else
    "${LOAD[@]}" wrk -t1 "$@" "http://127.0.0.1:$port/bench/item"
  fi || { echo "bench: wrk failed on port $port" >&2; return 1; }
}
start_gateway a "$A" 18493; A_PID=${pids[-1]}
[ -n "$B" ] && { start_gateway b "$B" 18495; B_PID=${pids[-1]}; }
BARE=${BARE:-}
if [ -n "$BARE" ]; then
  "$BARE" 127.0.0.1:18497 127.0.0.1:$UP_PORT >"$OUT/bare.log" 2>&1 & pids+=($!)
  BARE_PID=${pids[-1]}
  wait_port 18497
fi

PIN=${PIN:-}
LOAD=()
if [ -n "$PIN" ]; then
  LOAD=(taskset -c 0)
  taskset -a -p -c 0 "${pids[0]}" >/dev/null
  for p in $NGINX_PIDS $(cat "$OUT/nginx/nginx.pid") "$A_PID" ${B:+"$B_PID"} ${BARE:+"$BARE_PID"}; do
    taskset -a -p -c 1 "$p" >/dev/null
  done
fi

ticks() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s += $1} END {print s}'; }
measure() { # name port gateway pids...
  local name=$1 port=$2 gw=$3; shift 3
  local t0 t1 n out
  t0=$(ticks "$@")
  out=$(load "$port" "$gw" -c"$CONNS" -d"${DURATION}s")
  if grep -q "Non-2xx" <<<"$out"; then echo "bench: $name answered non-2xx" >&2; exit 1; fi
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  t1=$(ticks "$@")
  awk -v name="$name" -v n="$n" -v d=$((t1 - t0)) -v tick="$TICK" -v secs="$DURATION" \
    'BEGIN { printf "%-8s %8.0f req/s %6.1f us/request\n", name, n / secs, d / tick * 1e6 / n }' | tee -a "$OUT/results.txt"
}
load $NGINX_PORT "" -c8 -d2s >/dev/null
load 18493 a -c8 -d2s >/dev/null
[ -z "$B" ] || load 18495 b -c8 -d2s >/dev/null
[ -z "$BARE" ] || load 18497 "" -c8 -d2s >/dev/null
for _ in $(seq 1 "$PAIRS"); do
  measure nginx $NGINX_PORT "" $NGINX_PIDS
  measure A 18493 a "$A_PID"
  if [ -n "$B" ]; then measure B 18495 b "$B_PID"; fi
  if [ -n "$BARE" ]; then measure bare 18497 "" "$BARE_PID"; fi
done
echo "medians over $PAIRS pairs (A=$A${B:+, B=$B}${BARE:+, bare=$BARE}):"
awk "$AWK_STATS"'{ v[$1] = v[$1] " " $4; r[$1] = r[$1] " " $2 }
  END { for (k in v) printf "%-8s %8.0f req/s %6.1f us/request\n", k, median(r[k]), median(v[k]) }' "$OUT/results.txt" | sort
