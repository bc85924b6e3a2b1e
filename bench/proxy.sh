#!/usr/bin/env bash
# Data-plane benchmark: the same wrk load, in one run, against
#   (a) the upstream directly, (b) nginx as a plain reverse proxy, (c) Portcullis, one route,
#   no policies beyond the defaults.
# Every process runs on this machine's loopback. Results: requests/s, p50 and p99 latency, and
# the ratios of Portcullis to nginx. Usage: bench/proxy.sh  (env: DURATION, CONNS, THREADS, ROUNDS, BIN)
# With BASELINE_BIN=/path/to/another/portcullis, that binary also serves the no-policy route
# (target "baseline") in the same rounds, for an A/B comparison within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
UP_PORT=${UP_PORT:-18081}
NGINX_PORT=${NGINX_PORT:-18082}
PCL_PORT=${PCL_PORT:-18083}
PCL_ADMIN=${PCL_ADMIN:-18084}
BASE_PORT=${BASE_PORT:-18085}
BASE_ADMIN=${BASE_ADMIN:-18086}
BASELINE_BIN=${BASELINE_BIN:-}

if ! need wrk || ! need nginx; then
  echo "bench: installing wrk and nginx (Debian packages)" >&2
  apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null 2>&1 || apt-get install -y -qq wrk nginx >/dev/null
fi

# BIN= measures that binary as it is (and serves the upstream from it); no build.
[ -n "${BIN:-}" ] || cargo build --release --quiet
BIN=${BIN:-target/release/portcullis}
OUT=bench/out
rm -rf "$OUT"; mkdir -p "$OUT"



# (a) the upstream: Portcullis's own example service (plain hyper).
"$BIN" upstream --listen 127.0.0.1:$UP_PORT >"$OUT/upstream.log" 2>&1 & pids+=($!)
wait_port $UP_PORT

# (b) nginx: a plain reverse proxy with upstream keep-alive, access log on, as shipped.
start_nginx "$OUT" $NGINX_PORT $UP_PORT

# (c) Portcullis: a route with no policies, access log on (to a file, like nginx); and
# (d) the same upstream behind API-key authentication and one required scope.
{
  toml_server $PCL_PORT $PCL_ADMIN
  cat <<TOML
[[clients]]
id = "bench-client"
scopes = ["bench:read"]
[[routes]]
id = "bench-auth"
methods = ["GET"]
path = "/auth/{*rest}"
upstream = "http://127.0.0.1:$UP_PORT"
auth = ["api_key"]
scopes = ["bench:read"]
TOML
  toml_bench_route $UP_PORT
} >"$OUT/portcullis.toml"
KEY=$("$BIN" client key issue bench-client --config "$OUT/portcullis.toml" 2>/dev/null)
# The access log goes outside the config's directory: the hot-reload watcher watches that
# directory, and a log file inside it would wake the watcher on every write.
mkdir -p "$OUT/logs"
"$BIN" serve --config "$OUT/portcullis.toml" >"$OUT/logs/portcullis-access.log" 2>&1 & pids+=($!)
wait_port $PCL_PORT

# (e) optionally, a baseline Portcullis binary with the no-policy route, for A/B runs.
if [ -n "$BASELINE_BIN" ]; then
  { toml_server $BASE_PORT $BASE_ADMIN pcl-data-baseline; toml_bench_route $UP_PORT; } >"$OUT/baseline.toml"
  "$BASELINE_BIN" serve --config "$OUT/baseline.toml" >"$OUT/logs/baseline-access.log" 2>&1 & pids+=($!)
  wait_port $BASE_PORT
fi

run() { # name port round [path] [header]
  local f="$OUT/$1-$3.txt"
  local path=${4:-/bench/item}
  if [ -n "${5:-}" ]; then
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "$5" "http://127.0.0.1:$2$path" >"$f"
  else
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$2$path" >"$f"
  fi
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' "$f")
  p50=$(awk '$1=="50%" {print $2}' "$f" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' "$f" | to_ms)
  echo "$1 $3 $rps $p50 $p99" >>"$OUT/results.txt"
}

# Warm up every path, then interleave the targets round by round so drift hits all alike.
for port in $UP_PORT $NGINX_PORT $PCL_PORT ${BASELINE_BIN:+$BASE_PORT}; do wrk -t1 -c8 -d2s "http://127.0.0.1:$port/bench/item" >/dev/null; done
for r in $(seq 1 "$ROUNDS"); do
  run direct $UP_PORT "$r"
  run nginx $NGINX_PORT "$r"
  run portcullis $PCL_PORT "$r"
  run portcullis-apikey $PCL_PORT "$r" /auth/bench/item "Authorization: Bearer $KEY"
  if [ -n "$BASELINE_BIN" ]; then run baseline $BASE_PORT "$r"; fi
done
grep -q "Non-2xx" "$OUT"/portcullis-apikey-*.txt && { echo "bench: the API-key route answered non-2xx; see $OUT" >&2; exit 1; }

echo "wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, median per target; machine: $(nproc) cores, $(uname -r)"
awk "$AWK_STATS"'
  { rps[$1]=rps[$1] " " $3; p50[$1]=p50[$1] " " $4; p99[$1]=p99[$1] " " $5; by[$1, $2]=$3; if ($2 > rounds) rounds=$2 }
  END {
    printf "%-18s %12s %10s %10s\n", "target", "requests/s", "p50 ms", "p99 ms"
    n=split("direct nginx portcullis portcullis-apikey baseline", order, " ")
    for (k=1;k<=n;k++) { t=order[k]; if (!(t in rps)) continue; R[t]=median(rps[t]); P5[t]=median(p50[t]); P9[t]=median(p99[t]); printf "%-18s %12.0f %10.3f %10.3f\n", t, R[t], P5[t], P9[t] }
    printf "\nportcullis/nginx throughput: %.2fx (target >= 0.90x)\n", R["portcullis"]/R["nginx"]
    printf "portcullis p99 - nginx p99:  %+.3f ms (target <= +1.000 ms)\n", P9["portcullis"]-P9["nginx"]
    printf "portcullis/direct throughput: %.2fx\n", R["portcullis"]/R["direct"]
    printf "api-key route / no-policy route throughput: %.2fx (target >= 0.90x)\n", R["portcullis-apikey"]/R["portcullis"]
    if ("baseline" in R) printf "portcullis/baseline throughput: %.2fx; baseline/nginx: %.2fx\n", R["portcullis"]/R["baseline"], R["baseline"]/R["nginx"]
    by_round("portcullis", "nginx", "portcullis/nginx")
  }' "$OUT/results.txt" | tee "$OUT/summary.txt"
