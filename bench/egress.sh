#!/usr/bin/env bash
# Egress benchmark (issue 7): GET through an egress integration (workflow API key, allowlist,
# credential injected from the vault, SSRF-guarded client, response scrubbing) versus calling
# the upstream directly, in the same run. Reports throughput ratio and added p50 latency.
# nginx as a plain reverse proxy to the same upstream is measured in the same rounds: on a
# machine where wrk, the upstream and the proxy share the cores, it shows what any proxy in
# the path costs against calling the upstream directly.
# Usage: bench/egress.sh   (env: DURATION, CONNS, THREADS, ROUNDS)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
UP_PORT=${UP_PORT:-18381}
PCL_PORT=${PCL_PORT:-18383}
PCL_ADMIN=${PCL_ADMIN:-18384}
NGINX_PORT=${NGINX_PORT:-18385}

need wrk && need nginx || { apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null; }
cargo build --release --quiet
BIN=${BIN:-target/release/portcullis}   # BIN=another/portcullis to measure another build
OUT=bench/out-egress
rm -rf "$OUT"; mkdir -p "$OUT/logs"

"$BIN" upstream --listen 127.0.0.1:$UP_PORT >"$OUT/logs/upstream.log" 2>&1 & pids+=($!)
wait_port $UP_PORT
start_nginx "$OUT" $NGINX_PORT $UP_PORT
cat >"$OUT/portcullis.toml" <<TOML
[server]
listen = "127.0.0.1:$PCL_PORT"
admin_listen = "127.0.0.1:$PCL_ADMIN"
data_dir = "pcl-data"
[[clients]]
id = "bench-workflow"
[[integrations]]
id = "api"
base_url = "http://127.0.0.1:$UP_PORT"
allow = [{ methods = ["GET"], path = "/bench/{item}" }]
clients = ["bench-workflow"]
credential = { type = "bearer", secret = "{secret:api-token}" }
dangerous_allow_cidrs = ["127.0.0.1/32"]
TOML
printf 'bench-third-party-token-0123456789' | "$BIN" secret put api-token --consumer integration:api --config "$OUT/portcullis.toml" 2>/dev/null
KEY=$("$BIN" client key issue bench-workflow --config "$OUT/portcullis.toml" 2>/dev/null)
"$BIN" serve --config "$OUT/portcullis.toml" >"$OUT/logs/portcullis.log" 2>&1 & pids+=($!)
wait_port $PCL_PORT
curl -sf -o /dev/null -H "authorization: Bearer $KEY" "http://127.0.0.1:$PCL_PORT/egress/api/bench/item" || { echo "bench: the egress route refused" >&2; exit 1; }

run() { # name round url [header]
  local f="$OUT/$1-$2.txt"
  if [ -n "${4:-}" ]; then wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "$4" "$3" >"$f"; else wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$3" >"$f"; fi
  if grep -q "Non-2xx" "$f"; then echo "bench: $1 answered non-2xx; see $f" >&2; exit 1; fi
  echo "$1 $2 $(awk '/^Requests\/sec/ {print $2}' "$f") $(awk '$1=="50%" {print $2}' "$f" | to_ms) $(awk '$1=="99%" {print $2}' "$f" | to_ms)" >>"$OUT/results.txt"
}
wrk -t1 -c8 -d2s -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PCL_PORT/egress/api/bench/item" >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  run direct "$r" "http://127.0.0.1:$UP_PORT/bench/item"
  run nginx "$r" "http://127.0.0.1:$NGINX_PORT/bench/item"
  run egress "$r" "http://127.0.0.1:$PCL_PORT/egress/api/bench/item" "Authorization: Bearer $KEY"
done
echo "GET; wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, median; machine: $(nproc) cores, $(uname -r)"
awk "$AWK_STATS"'
  { rps[$1]=rps[$1] " " $3; p50[$1]=p50[$1] " " $4; p99[$1]=p99[$1] " " $5 }
  END {
    printf "%-8s %12s %10s %10s\n", "target", "requests/s", "p50 ms", "p99 ms"
    split("direct nginx egress", order, " ")
    for (k=1;k<=3;k++) { t=order[k]; R[t]=median(rps[t]); P[t]=median(p50[t]); printf "%-8s %12.0f %10.3f %10.3f\n", t, R[t], P[t], median(p99[t]) }
    printf "\negress / direct throughput: %.2fx (target >= 0.80x)\n", R["egress"]/R["direct"]
    printf "added p50 latency:          %+.3f ms (target < 0.300 ms)\n", P["egress"]-P["direct"]
    printf "for scale, nginx / direct:  %.2fx, nginx added p50 %+.3f ms; egress / nginx %.2fx\n", R["nginx"]/R["direct"], P["nginx"]-P["direct"], R["egress"]/R["nginx"]
  }' "$OUT/results.txt" | tee "$OUT/summary.txt"
