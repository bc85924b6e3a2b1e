#!/usr/bin/env bash
# Traffic-protection benchmark (issue 5): POST of a 1 KiB JSON body, in one run, to
#   (a) nginx as a plain reverse proxy,
#   (b) Portcullis, a route with no policies,
#   (c) Portcullis, a route with API-key authentication + a rate limit that is never hit +
#       JSON Schema validation of the body (and the default JSON structure limits).
# All on loopback, the same upstream (`portcullis upstream`, which reads the body).
# Usage: bench/policies.sh   (env: DURATION, CONNS, THREADS, ROUNDS, PIN)
# PIN=1 puts wrk and the upstream on CPU 0 and the proxy under test (nginx or Portcullis, all
# threads) on CPU 1, so each proxy has a core of its own instead of sharing both with the load.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
UP_PORT=${UP_PORT:-18181}
NGINX_PORT=${NGINX_PORT:-18182}
PCL_PORT=${PCL_PORT:-18183}
PCL_ADMIN=${PCL_ADMIN:-18184}

if ! need wrk || ! need nginx; then
  echo "bench: installing wrk and nginx (Debian packages)" >&2
  apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null 2>&1 || apt-get install -y -qq wrk nginx >/dev/null
fi

cargo build --release --quiet
BIN=${BIN:-target/release/portcullis}   # BIN=another/portcullis to measure another build
OUT=bench/out-policies
rm -rf "$OUT"; mkdir -p "$OUT"


"$BIN" upstream --listen 127.0.0.1:$UP_PORT >"$OUT/upstream.log" 2>&1 & pids+=($!)
wait_port $UP_PORT

start_nginx "$OUT" $NGINX_PORT $UP_PORT

# The order schema, shared with bench/callgrind.sh.
cp bench/order.schema.json "$OUT/order.schema.json"
{
  toml_server $PCL_PORT $PCL_ADMIN
  toml_guarded_route $UP_PORT
  cat <<TOML
[[routes]]
id = "plain"
methods = ["POST"]
path = "/orders"
upstream = "http://127.0.0.1:$UP_PORT"
TOML
} >"$OUT/portcullis.toml"
KEY=$("$BIN" client key issue bench-client --config "$OUT/portcullis.toml" 2>/dev/null)
# The access log goes to a subdirectory: the config watcher watches the config's own
# directory, and a log file beside the config would wake it on every line written.
mkdir -p "$OUT/logs"
"$BIN" serve --config "$OUT/portcullis.toml" >"$OUT/logs/portcullis-access.log" 2>&1 & pids+=($!)
wait_port $PCL_PORT

# A 1 KiB order that satisfies the schema.
python3 bench/bodies.py "$OUT"
BODY=$(cat "$OUT/order.json")
cat >"$OUT/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
LUA
# Every target must accept the body: one request each, checked before measuring.
for url in "http://127.0.0.1:$NGINX_PORT/orders" "http://127.0.0.1:$PCL_PORT/orders"; do
  curl -sf -o /dev/null -H 'content-type: application/json' --data "$BODY" "$url" || { echo "bench: $url refused the body" >&2; exit 1; }
done
curl -sf -o /dev/null -H "authorization: Bearer $KEY" -H 'content-type: application/json' --data "$BODY" "http://127.0.0.1:$PCL_PORT/guarded/orders" || { echo "bench: the guarded route refused the body" >&2; exit 1; }

run() { # name port round path [header]
  local f="$OUT/$1-$3.txt"
  if [ -n "${5:-}" ]; then
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$OUT/post.lua" -H "$5" "http://127.0.0.1:$2$4" >"$f"
  else
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$OUT/post.lua" "http://127.0.0.1:$2$4" >"$f"
  fi
  if grep -q "Non-2xx" "$f"; then echo "bench: $1 answered non-2xx; see $f" >&2; exit 1; fi
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' "$f")
  p50=$(awk '$1=="50%" {print $2}' "$f" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' "$f" | to_ms)
  echo "$1 $3 $rps $p50 $p99" >>"$OUT/results.txt"
}

WRK=(command wrk)
if [ -n "${PIN:-}" ]; then
  WRK=(taskset -c 0 wrk)
  taskset -a -p -c 0 "${pids[0]}" >/dev/null
  for p in $(cat "$OUT/nginx/nginx.pid") $(pgrep -P "$(cat "$OUT/nginx/nginx.pid")") "${pids[-1]}"; do
    taskset -a -p -c 1 "$p" >/dev/null
  done
fi
wrk() { "${WRK[@]}" "$@"; }

wrk -t1 -c8 -d2s -s "$OUT/post.lua" "http://127.0.0.1:$NGINX_PORT/orders" >/dev/null
wrk -t1 -c8 -d2s -s "$OUT/post.lua" "http://127.0.0.1:$PCL_PORT/orders" >/dev/null
wrk -t1 -c8 -d2s -s "$OUT/post.lua" -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PCL_PORT/guarded/orders" >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  run nginx $NGINX_PORT "$r" /orders
  run portcullis-plain $PCL_PORT "$r" /orders
  run portcullis-guarded $PCL_PORT "$r" /guarded/orders "Authorization: Bearer $KEY"
done

echo "POST 1 KiB JSON; wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, median per target; machine: $(nproc) cores, $(uname -r)"
awk "$AWK_STATS"'
  { rps[$1]=rps[$1] " " $3; p50[$1]=p50[$1] " " $4; p99[$1]=p99[$1] " " $5; by[$1, $2]=$3; if ($2 > rounds) rounds=$2 }
  END {
    printf "%-20s %12s %10s %10s\n", "target", "requests/s", "p50 ms", "p99 ms"
    split("nginx portcullis-plain portcullis-guarded", order, " ")
    for (k=1;k<=3;k++) { t=order[k]; R[t]=median(rps[t]); P5[t]=median(p50[t]); P9[t]=median(p99[t]); printf "%-20s %12.0f %10.3f %10.3f\n", t, R[t], P5[t], P9[t] }
    printf "\nguarded / plain (same run): %.2fx (target >= 0.80x)\n", R["portcullis-guarded"]/R["portcullis-plain"]
    printf "guarded / nginx:            %.2fx (target >= 1.00x)\n", R["portcullis-guarded"]/R["nginx"]
    by_round("portcullis-guarded", "portcullis-plain", "guarded/plain")
    by_round("portcullis-guarded", "nginx", "guarded/nginx")
  }' "$OUT/results.txt" | tee "$OUT/summary.txt"
