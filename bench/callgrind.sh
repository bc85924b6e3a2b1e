#!/usr/bin/env bash
# Instructions per request, counted by callgrind: user-space work of the gateway process only
# (kernel time is not counted), but repeatable whatever else the machine is doing, so it
# resolves changes of a few percent that wrk throughput on two shared cores cannot.
# Usage: bench/callgrind.sh  (env: ROUTE=plain|guarded|webhook, BIN=another/portcullis for an
# A/B, ACCESS_LOG=false, BARE=target/release/examples/bare_hyper_proxy)
#   plain:   GET on a route with no policies (the foundation benchmark's route)
#   guarded: POST of a 1 KiB JSON order with API key + rate limit + JSON Schema (issue 5's)
#   webhook: a Standard Webhooks delivery of a 1 KiB event, direct delivery (issue 6's)
# BARE= counts the floor instead of the gateway: the bare hyper proxy (hyper, tokio and
# jemalloc only; `cargo build --release --example bare_hyper_proxy`) on the plain route's GET.
# Prints requests served under valgrind and instructions per request; the dump (for
# callgrind_annotate --inclusive=yes) stays in bench/out-callgrind/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ROUTE=${ROUTE:-plain}
ACCESS_LOG=${ACCESS_LOG:-true}
UP_PORT=${UP_PORT:-18391}
PCL_PORT=${PCL_PORT:-18393}
PCL_ADMIN=${PCL_ADMIN:-18394}
need valgrind || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
need wrk || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
# BIN= measures that binary as it is (and serves the upstream from it); no build.
[ -n "${BIN:-}" ] || cargo build --release --quiet
BIN=${BIN:-target/release/portcullis}
OUT=bench/out-callgrind
rm -rf "$OUT"; mkdir -p "$OUT/logs"

"$BIN" upstream --listen 127.0.0.1:$UP_PORT >"$OUT/upstream.log" 2>&1 & pids+=($!)
wait_port $UP_PORT
{
  toml_server $PCL_PORT $PCL_ADMIN
  printf '[logging]\naccess_log = %s\n' "$ACCESS_LOG"
  toml_events_webhook $UP_PORT
  toml_guarded_route $UP_PORT
  toml_bench_route $UP_PORT
} >"$OUT/portcullis.toml"
cp bench/order.schema.json "$OUT/order.schema.json"
HOOK_SECRET=$(new_whsec)
put_webhook_secrets "$BIN" "$OUT/portcullis.toml" "$HOOK_SECRET" "$(new_whsec)"
KEY=$("$BIN" client key issue bench-client --config "$OUT/portcullis.toml" 2>/dev/null)

# The bodies: the 1 KiB order of bench/policies.sh and the 1 KiB event of bench/webhooks.sh,
# with enough pre-signed webhook ids for both runs (each id is accepted once).
python3 bench/bodies.py "$OUT" "$HOOK_SECRET" 60000
cat >"$OUT/guarded.lua" <<LUA
wrk.method = "POST"
wrk.body = io.open("$OUT/order.json", "rb"):read("*a")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
# Two runs (warm-up, measured) take disjoint halves of the ids: BASE is set per run.
cat >"$OUT/webhook.lua" <<LUA
local body = io.open("$OUT/event.json", "rb"):read("*a")
local msgs, n = {}, 0
for line in io.lines("$OUT/messages.txt") do n = n + 1; msgs[n] = line end
local i = tonumber(os.getenv("BASE"))
function request()
  i = i + 1
  local id, ts, sig = msgs[i]:match("(%S+) (%S+) (%S+)")
  return wrk.format("POST", "/hooks/events", { ["content-type"] = "application/json", ["webhook-id"] = id, ["webhook-timestamp"] = ts, ["webhook-signature"] = sig }, body)
end
LUA
case $ROUTE in
  plain) load() { wrk -t1 -c8 -d"$1" "http://127.0.0.1:$PCL_PORT/bench/item"; } ;;
  guarded) load() { wrk -t1 -c8 -d"$1" -s "$OUT/guarded.lua" "http://127.0.0.1:$PCL_PORT/guarded/orders"; } ;;
  webhook) load() { BASE=$2 wrk -t1 -c8 -d"$1" -s "$OUT/webhook.lua" "http://127.0.0.1:$PCL_PORT/hooks/events"; } ;;
  *) echo "ROUTE must be plain, guarded or webhook" >&2; exit 2 ;;
esac

BARE=${BARE:-}
SUBJECT=("$BIN" serve --config "$OUT/portcullis.toml")
if [ -n "$BARE" ]; then
  [ "$ROUTE" = plain ] || { echo "BARE= measures the plain route only" >&2; exit 2; }
  SUBJECT=("$BARE" 127.0.0.1:$PCL_PORT 127.0.0.1:$UP_PORT)
fi
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
  "${SUBJECT[@]}" >"$OUT/logs/access.log" 2>"$OUT/valgrind.log" & pids+=($!)
GW=${pids[-1]}
for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$PCL_PORT) 2>/dev/null && break; sleep 0.1; done
# Warm up (pools, caches, lazily built state), then count only the measured run.
load 3s 0 >/dev/null
sleep 0.5
callgrind_control -z "$GW" >/dev/null 2>&1
out=$(load 5s 30000)
sleep 0.5
callgrind_control -d "$GW" >/dev/null 2>&1
if echo "$out" | grep -q "Non-2xx"; then echo "bench: the $ROUTE route answered non-2xx; see $OUT/logs" >&2; exit 1; fi
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
dump=$(ls -t "$OUT"/callgrind.out* | head -n1)
ir=$(awk '/^(totals|summary):/ {print $2; exit}' "$dump")
echo "${BARE:+bare=$BARE }route=$ROUTE access_log=$ACCESS_LOG requests=$reqs instructions/request=$((ir / reqs)) dump=$dump"
