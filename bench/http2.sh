#!/usr/bin/env bash
# HTTP/2 data-plane benchmark: h2load (Debian's nghttp2-client; installed when missing) over
# cleartext HTTP/2 by prior knowledge, in one run and with the same load, against
#   (a) nginx as a plain reverse proxy (`listen ... http2`), (b) Portcullis, one route, no
#   policies. Both forward over HTTP/1.1 with keep-alive to the same upstream, as in
#   bench/proxy.sh, so the figure compares the HTTP/2 server sides.
# Usage: bench/http2.sh  (env: REQUESTS, CONNS, STREAMS, ROUNDS, BIN)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

REQUESTS=${REQUESTS:-200000}
CONNS=${CONNS:-32}
STREAMS=${STREAMS:-10}
ROUNDS=${ROUNDS:-3}
UP_PORT=${UP_PORT:-18181}
NGINX_PORT=${NGINX_PORT:-18182}
PCL_PORT=${PCL_PORT:-18183}
PCL_ADMIN=${PCL_ADMIN:-18184}

if ! need h2load || ! need nginx; then
  echo "bench: installing h2load and nginx (Debian packages)" >&2
  apt-get update -qq && apt-get install -y -qq nghttp2-client nginx-light >/dev/null 2>&1 || apt-get install -y -qq nghttp2-client nginx >/dev/null
fi

[ -n "${BIN:-}" ] || cargo build --release --quiet
BIN=${BIN:-target/release/portcullis}
OUT=bench/out-http2
rm -rf "$OUT"; mkdir -p "$OUT/logs"

"$BIN" upstream --listen 127.0.0.1:$UP_PORT >"$OUT/upstream.log" 2>&1 & pids+=($!)
wait_port $UP_PORT

# nginx: bench/proxy.sh's configuration, its listener speaking HTTP/2 without TLS.
start_nginx "$OUT" $NGINX_PORT $UP_PORT
# nginx ends an HTTP/2 connection after 1000 requests by default (keepalive_requests);
# h2load does not reconnect, so it is raised.
sed -i -e "s|listen 127.0.0.1:$NGINX_PORT;|listen 127.0.0.1:$NGINX_PORT http2;|" \
  -e "s|^http {|http {\n  keepalive_requests 100000000;|" "$OUT/nginx/nginx.conf"
kill -HUP "$(cat "$OUT/nginx/nginx.pid")"
sleep 1

{ toml_server $PCL_PORT $PCL_ADMIN; toml_bench_route $UP_PORT; } >"$OUT/portcullis.toml"
"$BIN" serve --config "$OUT/portcullis.toml" >"$OUT/logs/portcullis-access.log" 2>&1 & pids+=($!)
wait_port $PCL_PORT

run() { # name port round
  local f="$OUT/$1-$3.txt"
  h2load -n "$REQUESTS" -c "$CONNS" -m "$STREAMS" "http://127.0.0.1:$2/bench/item" >"$f"
  # Every request must have succeeded, or the figure means nothing.
  grep -q "status codes: $REQUESTS 2xx" "$f" || { echo "bench: $1 answered non-2xx or failed; see $f" >&2; exit 1; }
  local rps p_mean
  rps=$(awk '/^finished in/ {gsub(/,/,""); print $4}' "$f")
  # h2load's "time for request" row: min max mean sd; the mean in ms.
  p_mean=$(awk '/^time for request:/ {print $6}' "$f" | to_ms)
  echo "$1 $3 $rps $p_mean" >>"$OUT/results.txt"
}

for port in $NGINX_PORT $PCL_PORT; do h2load -n 20000 -c 8 -m "$STREAMS" "http://127.0.0.1:$port/bench/item" >/dev/null; done
for r in $(seq 1 "$ROUNDS"); do
  run nginx $NGINX_PORT "$r"
  run portcullis $PCL_PORT "$r"
done

echo "h2load -n $REQUESTS -c $CONNS -m $STREAMS (h2c), $ROUNDS rounds, median per target; machine: $(nproc) cores, $(uname -r)"
awk "$AWK_STATS"'
  { rps[$1]=rps[$1] " " $3; lat[$1]=lat[$1] " " $4; by[$1, $2]=$3; if ($2 > rounds) rounds=$2 }
  END {
    printf "%-12s %12s %16s\n", "target", "requests/s", "mean request ms"
    n=split("nginx portcullis", order, " ")
    for (k=1;k<=n;k++) { t=order[k]; R[t]=median(rps[t]); L[t]=median(lat[t]); printf "%-12s %12.0f %16.3f\n", t, R[t], L[t] }
    printf "\nportcullis/nginx throughput over HTTP/2: %.2fx\n", R["portcullis"]/R["nginx"]
    by_round("portcullis", "nginx", "portcullis/nginx")
  }' "$OUT/results.txt" | tee "$OUT/summary.txt"
