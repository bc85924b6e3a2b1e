# Shared helpers of the bench/*.sh scripts (sourced, not run).

need() { command -v "$1" >/dev/null 2>&1; }

# Background processes started by the script; all killed on exit.
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Waits up to 10 s for a loopback port to accept connections.
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# wrk's latency figure (us, ms or s) in milliseconds.
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.3f", v }'; }

# awk functions the scripts' summaries share, put in front of their programs
# (awk "$AWK_STATS"'...'): median(list) of a space-separated list; by_round(a, b, label)
# prints the ratio of target a to target b in each round and the median of those ratios
# (the spread shows how far one run can be trusted on this machine), from by[target, round]
# and rounds, which the caller's rules fill.
AWK_STATS='
  function median(list,   a, n, i, j, t) { n=split(list, a, " "); for (i=1;i<=n;i++) for (j=i+1;j<=n;j++) if (a[j]+0 < a[i]+0) { t=a[i]; a[i]=a[j]; a[j]=t } return a[int((n+1)/2)] }
  function by_round(a, b, label,   r, v, list, line) { for (r=1;r<=rounds;r++) { v=sprintf("%.2f", by[a, r]/by[b, r]); list=list " " v; line=line " " v } printf "%s by round:%s (median %.2fx)\n", label, line, median(list) }
'

# Starts nginx as a plain reverse proxy on 127.0.0.1:$2 to the upstream on 127.0.0.1:$3, with
# upstream keep-alive and the access log on, as shipped; its files go under $1/nginx.
# Usage: start_nginx OUT_DIR LISTEN_PORT UPSTREAM_PORT
start_nginx() {
  local dir nginx
  # OUT_DIR relative to the repository (as the scripts pass it) or absolute.
  case $1 in /*) dir="$1/nginx" ;; *) dir="$PWD/$1/nginx" ;; esac
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<NGINX
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream app { server 127.0.0.1:$3; keepalive 128; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$proxy_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
  "$nginx" -c "$dir/nginx.conf" -g 'daemon off;' & pids+=($!)
  wait_port "$2"
}

# Config fragments the scripts share (printed; the caller writes the file).
# toml_server LISTEN_PORT ADMIN_PORT [DATA_DIR]
toml_server() {
  printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\ndata_dir = "%s"\n' "$1" "$2" "${3:-pcl-data}"
}
# The foundation benchmark's route: every GET, no policies. toml_bench_route UPSTREAM_PORT
toml_bench_route() {
  printf '[[routes]]\nid = "bench"\nmethods = ["GET"]\npath = "/{*rest}"\nupstream = "http://127.0.0.1:%s"\n' "$1"
}
# The client and the issue-5 route: API key + a rate limit never hit + JSON Schema
# (order.schema.json beside the config). toml_guarded_route UPSTREAM_PORT
toml_guarded_route() {
  cat <<TOML
[[clients]]
id = "bench-client"
[[routes]]
id = "guarded"
methods = ["POST"]
path = "/guarded/orders"
rewrite = "/orders"
upstream = "http://127.0.0.1:$1"
auth = ["api_key"]
rate_limits = [{ per = "client", limit = 1000000000, period = "1s" }]
request_schema = "order.schema.json"
TOML
}
# The issue-6 endpoint: Standard Webhooks on /hooks/events, direct delivery signed with the
# gateway's own secret. toml_events_webhook UPSTREAM_PORT
toml_events_webhook() {
  cat <<TOML
[webhook_signing]
secret = "{secret:pcl-signing}"
[[webhooks]]
id = "events"
path = "/hooks/events"
provider = "standard"
secrets = ["{secret:events-hook}"]
tolerance = "1h"
forward = "http://127.0.0.1:$1/orders"
TOML
}
# Stores the two webhook secrets that toml_events_webhook names.
# put_webhook_secrets BIN CONFIG HOOK_SECRET SIGNING_SECRET
put_webhook_secrets() {
  printf '%s' "$3" | "$1" secret put events-hook --consumer webhook:events --config "$2" 2>/dev/null
  printf '%s' "$4" | "$1" secret put pcl-signing --consumer gateway:webhook-signing --config "$2" 2>/dev/null
}
# A fresh Standard Webhooks secret.
new_whsec() { echo "whsec_$(head -c 32 /dev/urandom | base64)"; }
