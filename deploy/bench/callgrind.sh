#!/usr/bin/env bash
# User-space instructions per proxied connection in synapse, counted by callgrind: a figure
# that, unlike rates and CPU times on a shared machine, does not move with the neighbours'
# load. Not part of `make bench` (valgrind slows synapse ~50x); run it by hand before and
# after a change to synapse's own per-connection path:
#
#   cargo build --release --bins && deploy/bench/callgrind.sh [CONNECTIONS]
#
# synapse serves nginx through `default_servers` (etcd is not needed: its endpoint is a
# closed port), once without and once with `retry_unanswered`; `smartstack-bench load`
# makes CONNECTIONS (default 3000) one-request connections through each, and callgrind's
# counters are zeroed before and dumped after each. Prints instructions per connection and
# keeps the profiles in $CALLGRIND_OUT (default /tmp/synapse-callgrind) for
# callgrind_annotate. Every process it starts is killed by PID on exit. Needs valgrind,
# nginx and python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${1:-3000}
OUT=${CALLGRIND_OUT:-/tmp/synapse-callgrind}
BIN=$ROOT/target/release
for b in synapse smartstack-bench; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (run: cargo build --release --bins)" >&2; exit 1; }
done
for t in valgrind callgrind_control nginx python3; do
  command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 1; }
done

BASE=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$BASE"
}
trap cleanup EXIT
read -r NGINX PLAIN REPLAY DEAD <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(4):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)"

mkdir -p "$BASE/nginx" "$OUT"
cat >"$BASE/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $BASE/nginx/nginx.pid;
error_log $BASE/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $BASE/nginx/body;
  proxy_temp_path $BASE/nginx/proxy;
  fastcgi_temp_path $BASE/nginx/fastcgi;
  uwsgi_temp_path $BASE/nginx/uwsgi;
  scgi_temp_path $BASE/nginx/scgi;
  server {
    listen 127.0.0.1:$NGINX backlog=4096;
    location / { return 200 "hello from nginx\n"; }
  }
}
EOF
nginx -c "$BASE/nginx.conf" -p "$BASE" >"$BASE/nginx.log" 2>&1 &
PIDS+=($!)

cat >"$BASE/synapse.yaml" <<EOF
etcd: {endpoints: ["http://127.0.0.1:$DEAD"]}
services:
  - {name: plain, listen: "127.0.0.1:$PLAIN", default_servers: [{host: 127.0.0.1, port: $NGINX}]}
  - {name: replay, listen: "127.0.0.1:$REPLAY", retry_unanswered: true, default_servers: [{host: 127.0.0.1, port: $NGINX}]}
EOF
rm -f "$OUT"/*.out*
RUST_LOG=error valgrind --tool=callgrind --compress-strings=no --compress-pos=no \
  --callgrind-out-file="$OUT/synapse.%p.out" "$BIN/synapse" --config "$BASE/synapse.yaml" \
  >"$BASE/synapse.log" 2>&1 &
SYN=$!
PIDS+=("$SYN")
ready() { "$BIN/smartstack-bench" load --target "127.0.0.1:$1" --concurrency 1 --secs 2 --max-requests 1 | grep -q '^ok=1$'; }
for _ in $(seq 1 120); do ready "$REPLAY" && ready "$PLAIN" && break; sleep 0.5; done
ready "$REPLAY" || { echo "synapse under valgrind did not come up: $(tail -n 5 "$BASE/synapse.log")" >&2; exit 1; }

measure() { # NAME PORT
  # Warm up (thread-local pools, buffers), then count only the measured connections.
  "$BIN/smartstack-bench" load --target "127.0.0.1:$2" --concurrency 4 --secs 5 --max-requests 50 >/dev/null
  callgrind_control --zero "$SYN" >/dev/null 2>&1
  "$BIN/smartstack-bench" load --target "127.0.0.1:$2" --concurrency 4 --secs 300 --max-requests "$N" >"$BASE/load.txt"
  callgrind_control --dump="$1" "$SYN" >/dev/null 2>&1
  local f ir ok
  for _ in $(seq 1 50); do
    f=$(grep -l "^desc: Trigger: dump $1\$" "$OUT"/synapse.*.out* 2>/dev/null | head -n1) && [ -n "$f" ] && break
    sleep 0.1
  done
  ir=$(sed -n 's/^summary: //p' "$f")
  ok=$(sed -n 's/^ok=//p' "$BASE/load.txt")
  cp "$f" "$OUT/$1.out"
  echo "$1: $ok connections, $((ir / ok)) instructions per connection (profile: $OUT/$1.out)"
}
measure plain "$PLAIN"
measure replay "$REPLAY"
