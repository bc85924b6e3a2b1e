#!/usr/bin/env bash
# Webhook trigger benchmark (issue 6): POST of a 1 KiB JSON event, in one run, to
#   (a) a Portcullis route with no policies that forwards to the upstream, and
#   (b) a Standard Webhooks endpoint (signature check, replay cache, direct delivery with the
#       gateway's own signature) that forwards to the same upstream.
# Every request to (b) carries a distinct, validly signed message id (pre-generated), so each
# one is verified, remembered and forwarded; none is a duplicate (the script fails if one is).
# Both targets get the same requests, made by the same wrk Lua script: same headers, same
# body, only the path differs. Making a signed request in Lua costs wrk ~10 µs of CPU per
# request (a static request ~1 µs), on the cores the gateway also runs on; were only (b) to
# pay it, the ratio would measure wrk's Lua as much as the gateway (bench/RESULTS.md).
# Usage: bench/webhooks.sh   (env: DURATION, CONNS, ROUNDS, MESSAGES)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
THREADS=1   # one wrk thread: each request takes the next pre-signed message id
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-800000}
UP_PORT=${UP_PORT:-18281}
PCL_PORT=${PCL_PORT:-18283}
PCL_ADMIN=${PCL_ADMIN:-18284}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet
BIN=${BIN:-target/release/portcullis}   # BIN=another/portcullis to measure another build
OUT=bench/out-webhooks
rm -rf "$OUT"; mkdir -p "$OUT/logs"

"$BIN" upstream --listen 127.0.0.1:$UP_PORT >"$OUT/logs/upstream.log" 2>&1 & pids+=($!)
wait_port $UP_PORT

HOOK_SECRET=$(new_whsec)
{
  toml_server $PCL_PORT $PCL_ADMIN
  toml_events_webhook $UP_PORT
  cat <<TOML
[[routes]]
id = "plain"
methods = ["POST"]
path = "/orders"
upstream = "http://127.0.0.1:$UP_PORT"
TOML
} >"$OUT/portcullis.toml"
put_webhook_secrets "$BIN" "$OUT/portcullis.toml" "$HOOK_SECRET" "$(new_whsec)"
"$BIN" serve --config "$OUT/portcullis.toml" >"$OUT/logs/portcullis.log" 2>&1 & pids+=($!)
wait_port $PCL_PORT

# The 1 KiB event and MESSAGES signed (id, timestamp, signature) triples for it.
python3 bench/bodies.py "$OUT" "$HOOK_SECRET" "$MESSAGES"
# One script for both targets: it takes the next pre-signed message for every request and
# leaves the path to the URL. Messages are split once, at load, not per request.
cat >"$OUT/signed.lua" <<LUA
local base = 0
local body = io.open("$OUT/event.json", "rb"):read("*a")
local ids, tss, sigs, n = {}, {}, {}, 0
for line in io.lines("$OUT/messages.txt") do
  n = n + 1
  ids[n], tss[n], sigs[n] = line:match("(%S+) (%S+) (%S+)")
end
local i = base
function request()
  i = i + 1
  if i > n then error("bench: ran out of pre-signed messages; raise MESSAGES") end
  return wrk.format("POST", nil, { ["content-type"] = "application/json", ["webhook-id"] = ids[i], ["webhook-timestamp"] = tss[i], ["webhook-signature"] = sigs[i] }, body)
end
LUA

run() { # name round script path
  local f="$OUT/$1-$2.txt"
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$3" "http://127.0.0.1:$PCL_PORT$4" >"$f"
  if grep -q "Non-2xx" "$f"; then echo "bench: $1 answered non-2xx; see $f" >&2; exit 1; fi
  echo "$1 $2 $(awk '/^Requests\/sec/ {print $2}' "$f") $(awk '$1=="50%" {print $2}' "$f" | to_ms) $(awk '$1=="99%" {print $2}' "$f" | to_ms)" >>"$OUT/results.txt"
}
wrk -t1 -c8 -d2s -s "$OUT/signed.lua" "http://127.0.0.1:$PCL_PORT/orders" >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  # The plain route does not care which ids it sees; the webhook's must stay unique across
  # rounds, so each of its rounds starts at its own slice of the messages.
  sed -i "s/^local base = .*/local base = 0/" "$OUT/signed.lua"
  run plain "$r" "$OUT/signed.lua" /orders
  sed -i "s/^local base = .*/local base = $(( (r - 1) * MESSAGES / ROUNDS ))/" "$OUT/signed.lua"
  run webhook "$r" "$OUT/signed.lua" /hooks/events
done
if grep -q '"duplicate webhook' "$OUT/logs/portcullis.log"; then
  echo "bench: some webhook requests were duplicates (answered without a delivery); raise MESSAGES" >&2
  exit 1
fi

echo "POST 1 KiB JSON; wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, median; machine: $(nproc) cores, $(uname -r)"
awk "$AWK_STATS"'
  { rps[$1]=rps[$1] " " $3; p50[$1]=p50[$1] " " $4; p99[$1]=p99[$1] " " $5 }
  END {
    printf "%-10s %12s %10s %10s\n", "target", "requests/s", "p50 ms", "p99 ms"
    split("plain webhook", order, " ")
    for (k=1;k<=2;k++) { t=order[k]; R[t]=median(rps[t]); printf "%-10s %12.0f %10.3f %10.3f\n", t, R[t], median(p50[t]), median(p99[t]) }
    printf "\nwebhook / no-policy route (same run): %.2fx (target >= 0.80x)\n", R["webhook"]/R["plain"]
  }' "$OUT/results.txt" | tee "$OUT/summary.txt"
