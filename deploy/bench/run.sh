#!/usr/bin/env bash
# `make bench`: synapse against HAProxy (TCP mode, same thread count) and against the
# backend itself, on loopback, measured in one run with the paths alternating (A B C A B C
# ...) over several rounds; medians are reported. Also the datapath relay strategies alone
# (smartstack-bench relay), synapse's memory, registration -> routable latency, and
# failover. Writes docs/benchmarks.md and docs/benchmarks.png.
#
# Every process it starts is recorded and killed by PID on exit. Every load step is bounded
# in time. Knobs (environment): BENCH_ROUNDS (3), BENCH_SECS (5 s per load step),
# BENCH_CONNS (50), BENCH_HOLD (10000 idle connections), BENCH_REGS (1000 registrations),
# BENCH_RELAY=0 (skip the relay strategies), SYNAPSE_BIN (default target/release/synapse),
# SYNAPSE_ALT_BIN + SYNAPSE_ALT_NAME (a second synapse build measured as a 4th path),
# BENCH_OUT (docs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
ROUNDS=${BENCH_ROUNDS:-3}
SECS=${BENCH_SECS:-5}
CONNS=${BENCH_CONNS:-50}
HOLD=${BENCH_HOLD:-10000}
REGS=${BENCH_REGS:-1000}
RELAY=${BENCH_RELAY:-1}
OUT=${BENCH_OUT:-docs}
SYNAPSE_BIN=${SYNAPSE_BIN:-$ROOT/target/release/synapse}
SYNAPSE_ALT_BIN=${SYNAPSE_ALT_BIN:-}
SYNAPSE_ALT_NAME=${SYNAPSE_ALT_NAME:-synapse-alt}
BENCH_BIN=$ROOT/target/release/smartstack-bench
DEMO_BIN=$ROOT/target/release/demo-backend
THREADS=$(nproc)
PREFIX=/smartstack/services
T0=$SECONDS
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

die() { echo "bench: $*" >&2; exit 1; }
for b in "$SYNAPSE_BIN" "$BENCH_BIN" "$DEMO_BIN" ${SYNAPSE_ALT_BIN:+"$SYNAPSE_ALT_BIN"}; do
  [ -x "$b" ] || die "missing binary $b (run: cargo build --release --bins)"
done
for c in etcd etcdctl haproxy nginx wrk iperf3 gnuplot jq python3; do
  command -v "$c" >/dev/null || die "missing $c (run: deploy/bench/install.sh)"
done
# 10,000 proxied connections need 20,000+ descriptors in the proxy. Raise the limit as far
# as allowed; where the hard limit is lower (some sandboxes cap it at 20,000 and forbid
# raising it), hold as many as fit and say so in the report.
# synapse holds each service to its share of the descriptor limit when the limit cannot
# cover every max_connections (docs/synapse.md, "Descriptor limit"): so each service's
# max_connections is what its step opens at once (web: wrk's connections; fo: the failover
# load's 16; iperf: 9 streams; probe: 1; bulk: none), and HOLD leaves room for the others.
SYN_MAX_WEB=$((CONNS * 2)) SYN_MAX_IPERF=16 SYN_MAX_FO=32 SYN_MAX_PROBE=8 SYN_MAX_BULK=16
SYN_OTHERS=$((SYN_MAX_WEB + SYN_MAX_IPERF + SYN_MAX_FO + SYN_MAX_PROBE + SYN_MAX_BULK))
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
if [ $(((HOLD + SYN_OTHERS) * 2 + 400)) -gt "$FD_LIMIT" ]; then
  HOLD=$(((FD_LIMIT - 400) / 2 - SYN_OTHERS))
  echo "bench: descriptor limit $FD_LIMIT: holding $HOLD idle connections instead of ${BENCH_HOLD:-10000}" >&2
fi
HAP_MAXCONN=$(((FD_LIMIT - 200) / 2))
BASE=$(mktemp -d /dev/shm/smartstack-bench.XXXXXX 2>/dev/null || mktemp -d /tmp/smartstack-bench.XXXXXX)
RES=$BASE/results.tsv
: >"$RES"
PIDS=()
cleanup() {
  local rc=$? p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$rc" != 0 ]; then # keep the logs (not etcd's data) for a post-mortem
    rm -rf /tmp/smartstack-bench-failed && mkdir -p /tmp/smartstack-bench-failed
    cp "$BASE"/*.log "$BASE"/*.cfg "$BASE"/*.yaml "$BASE"/*.conf /tmp/smartstack-bench-failed/ 2>/dev/null || true
    echo "bench: logs kept in /tmp/smartstack-bench-failed" >&2
  fi
  rm -rf "$BASE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[bench %4ds] %s\n' $((SECONDS - T0)) "$*"; }
# start NAME CMD...: runs CMD in the background with its output in $BASE/NAME.log.
start() { local n=$1; shift; "$@" >"$BASE/$n.log" 2>&1 & PIDS+=($!); LAST_PID=$!; }
stop() { kill -9 "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# Free loopback ports, all distinct.
read -r -a P <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(40):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)"
ETCD_PORT=${P[0]} PEER_PORT=${P[1]} NGINX_PORT=${P[2]} IPERF_PORT=${P[3]} HOLD_PORT=${P[4]}
FO_A=${P[5]} FO_B=${P[6]}
H_WEB=${P[7]} H_IPERF=${P[8]} H_HOLD=${P[9]} H_FO=${P[10]}
S_WEB=${P[11]} S_IPERF=${P[12]} S_HOLD=${P[13]} S_FO=${P[14]} S_PROBE=${P[15]} S_BULK=${P[16]}
A_WEB=${P[17]} A_IPERF=${P[18]} A_HOLD=${P[19]} A_FO=${P[20]} A_PROBE=${P[21]} A_BULK=${P[22]}
R_PORTS=("${P[@]:23:8}")

wait_for() { # wait_for SECONDS WHAT CMD...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what (logs: $BASE)"
    sleep 0.1
  done
}
http_ok() { # one HTTP/1.0 request with bash alone
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET / HTTP/1.0\r\nHost: bench\r\n\r\n' >&3
  local first
  first=$(timeout 2 head -n1 <&3) || { exec 3<&-; return 1; }
  exec 3<&-
  [[ $first == *" 200 "* ]]
}
etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT" "$@"; }
register() { etcdctl_ put "$PREFIX/$1/$2" "{\"host\":\"127.0.0.1\",\"port\":$3}" >/dev/null; }
rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# CPU time (user + system) of a process in clock ticks, from /proc (no perf needed).
cpu_ticks() { [ -n "${1:-}" ] && awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
TCK=$(getconf CLK_TCK)
result() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RES"; } # metric path round value

# --- fixed parts: etcd, backend (nginx), iperf3 server, two failover backends ----------------
log "etcd on :$ETCD_PORT (data on $BASE)"
start etcd etcd --name bench --data-dir "$BASE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "bench=http://127.0.0.1:$PEER_PORT" --log-level error --logger zap
wait_for 20 etcd etcdctl_ endpoint health

mkdir -p "$BASE/nginx"
cat >"$BASE/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $BASE/nginx/nginx.pid;
error_log $BASE/nginx/error.log warn;
worker_rlimit_nofile $FD_LIMIT;
events { worker_connections 4096; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path $BASE/nginx/body;
  proxy_temp_path $BASE/nginx/proxy;
  fastcgi_temp_path $BASE/nginx/fastcgi;
  uwsgi_temp_path $BASE/nginx/uwsgi;
  scgi_temp_path $BASE/nginx/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / { return 200 "hello from nginx\n"; }
  }
}
EOF
log "nginx backend on :$NGINX_PORT (1 worker, 17-byte body); iperf3 server on :$IPERF_PORT"
start nginx nginx -p "$BASE/nginx" -c "$BASE/nginx.conf"
start iperf3 iperf3 -s -p "$IPERF_PORT"
start fo-a "$DEMO_BIN" a "127.0.0.1:$FO_A"
FO_A_PID=$LAST_PID
start fo-b "$DEMO_BIN" b "127.0.0.1:$FO_B"
wait_for 10 nginx http_ok "$NGINX_PORT"
wait_for 10 "failover backends" http_ok "$FO_A"
wait_for 10 "failover backends" http_ok "$FO_B"

register web nginx "$NGINX_PORT"
register iperf iperf3 "$IPERF_PORT"
register hold holder "$HOLD_PORT"
register fo a "$FO_A"
register fo b "$FO_B"

# --- HAProxy, TCP mode, as many threads as synapse's runtime has workers ---------------------
cat >"$BASE/haproxy.cfg" <<EOF
global
  nbthread $THREADS
  maxconn $HAP_MAXCONN
defaults
  mode tcp
  timeout connect 1s
  timeout client 300s
  timeout server 300s
  retries 3
  option redispatch 1
listen web
  bind 127.0.0.1:$H_WEB
  server nginx 127.0.0.1:$NGINX_PORT
listen iperf
  bind 127.0.0.1:$H_IPERF
  server iperf 127.0.0.1:$IPERF_PORT
listen hold
  bind 127.0.0.1:$H_HOLD
  server holder 127.0.0.1:$HOLD_PORT
listen fo
  bind 127.0.0.1:$H_FO
  balance roundrobin
  server a 127.0.0.1:$FO_A check inter 500ms fall 2 rise 2
  server b 127.0.0.1:$FO_B check inter 500ms fall 2 rise 2
EOF
synapse_config() { # FILE WEB IPERF HOLD FO PROBE BULK
  cat >"$1" <<EOF
etcd:
  endpoints: ["http://127.0.0.1:$ETCD_PORT"]
services:
  - {name: web, listen: "127.0.0.1:$2", max_connections: $SYN_MAX_WEB}
  - {name: iperf, listen: "127.0.0.1:$3", max_connections: $SYN_MAX_IPERF}
  - {name: hold, listen: "127.0.0.1:$4", max_connections: $HOLD}
  - {name: fo, listen: "127.0.0.1:$5", retry_unanswered: true, max_connections: $SYN_MAX_FO}
  - {name: probe, listen: "127.0.0.1:$6", startup_wait: 30s, max_connections: $SYN_MAX_PROBE}
  - {name: bulk, listen: "127.0.0.1:$7", startup_wait: 30s, max_connections: $SYN_MAX_BULK}
EOF
}
synapse_config "$BASE/synapse.yaml" "$S_WEB" "$S_IPERF" "$S_HOLD" "$S_FO" "$S_PROBE" "$S_BULK"
"$SYNAPSE_BIN" --config "$BASE/synapse.yaml" --check-config >/dev/null || die "synapse rejects the bench config: $("$SYNAPSE_BIN" --config "$BASE/synapse.yaml" --check-config 2>&1)"

log "synapse ($SYNAPSE_BIN) and haproxy (nbthread $THREADS)"
start synapse env RUST_LOG=warn "$SYNAPSE_BIN" --config "$BASE/synapse.yaml"
SYN_PID=$LAST_PID
start haproxy haproxy -db -f "$BASE/haproxy.cfg"
HAP_PID=$LAST_PID
wait_for 20 "synapse to route web" http_ok "$S_WEB"
wait_for 20 "haproxy" http_ok "$H_WEB"
PATHS=(direct haproxy synapse)
declare -A WEB=([direct]=$NGINX_PORT [haproxy]=$H_WEB [synapse]=$S_WEB)
declare -A IPERF=([direct]=$IPERF_PORT [haproxy]=$H_IPERF [synapse]=$S_IPERF)
declare -A PID_WEB=([haproxy]=$HAP_PID [synapse]=$SYN_PID)
declare -A PID_IPERF=([haproxy]=$HAP_PID [synapse]=$SYN_PID)
if [ -n "$SYNAPSE_ALT_BIN" ]; then
  synapse_config "$BASE/synapse-alt.yaml" "$A_WEB" "$A_IPERF" "$A_HOLD" "$A_FO" "$A_PROBE" "$A_BULK"
  start synapse-alt env RUST_LOG=warn "$SYNAPSE_ALT_BIN" --config "$BASE/synapse-alt.yaml"
  ALT_PID=$LAST_PID
  wait_for 20 "$SYNAPSE_ALT_NAME to route web" http_ok "$A_WEB"
  PATHS+=("$SYNAPSE_ALT_NAME")
  WEB[$SYNAPSE_ALT_NAME]=$A_WEB
  IPERF[$SYNAPSE_ALT_NAME]=$A_IPERF
  PID_WEB[$SYNAPSE_ALT_NAME]=$ALT_PID
  PID_IPERF[$SYNAPSE_ALT_NAME]=$ALT_PID
fi
sleep 1

# --- memory ------------------------------------------------------------------------------------
# Per synapse build: its PID and its service ports.
SYNS=(synapse)
declare -A SPID=([synapse]=$SYN_PID) SHOLD=([synapse]=$S_HOLD) SFO=([synapse]=$S_FO) SPROBE=([synapse]=$S_PROBE)
if [ -n "$SYNAPSE_ALT_BIN" ]; then
  SYNS+=("$SYNAPSE_ALT_NAME")
  SPID[$SYNAPSE_ALT_NAME]=$ALT_PID
  SHOLD[$SYNAPSE_ALT_NAME]=$A_HOLD
  SFO[$SYNAPSE_ALT_NAME]=$A_FO
  SPROBE[$SYNAPSE_ALT_NAME]=$A_PROBE
fi
result rss_idle_mb haproxy 1 "$(rss_mb "$HAP_PID")"
for s in "${SYNS[@]}"; do
  result rss_idle_mb "$s" 1 "$(rss_mb "${SPID[$s]}")"
  log "idle RSS: $s $(rss_mb "${SPID[$s]}") MB, haproxy $(rss_mb "$HAP_PID") MB"
done
"$BENCH_BIN" register --etcd "http://127.0.0.1:$ETCD_PORT" --service bulk --count 1000 >"$BASE/register.log"
sleep 2
for s in "${SYNS[@]}"; do
  result rss_1k_backends_mb "$s" 1 "$(rss_mb "${SPID[$s]}")"
  log "RSS with 1000 registered backends: $s $(rss_mb "${SPID[$s]}") MB"
done

hold_rss() { # PATH VIA_PORT PID
  local out=$BASE/hold-$1.log before
  before=$(rss_mb "$3")
  "$BENCH_BIN" hold --via "127.0.0.1:$2" --count "$HOLD" --secs 4 >"$out" 2>&1 &
  local h=$!
  PIDS+=($h)
  local deadline=$((SECONDS + 120))
  until grep -q '^ready=' "$out" 2>/dev/null; do
    if ! kill -0 "$h" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      log "hold through $1 failed: $(tail -n 3 "$out" | tr '\n' ' ')"
      stop "$h"
      return 0
    fi
    sleep 0.2
  done
  sleep 1
  local rss n
  rss=$(rss_mb "$3")
  n=$(sed -n 's/^ready=//p' "$out")
  result rss_held_conns "$1" 1 "$n"
  result rss_held_mb "$1" 1 "$rss"
  # Per-connection cost, and the figure for exactly 10,000 connections.
  result rss_per_conn_kb "$1" 1 "$(awk -v a="$before" -v b="$rss" -v n="$n" 'BEGIN {printf "%.2f", (b - a) * 1024 / n}')"
  result rss_10k_conns_mb "$1" 1 "$(awk -v a="$before" -v b="$rss" -v n="$n" 'BEGIN {printf "%.1f", a + (b - a) * 10000 / n}')"
  log "RSS with $n idle proxied connections: $1 $rss MB (before: $before MB) ($(tr '\n' ' ' <"$out"))"
  wait "$h" 2>/dev/null || true
}
start sink "$BENCH_BIN" sink --listen "127.0.0.1:$HOLD_PORT" --max-secs 900
for s in "${SYNS[@]}"; do hold_rss "$s" "${SHOLD[$s]}" "${SPID[$s]}"; done
hold_rss haproxy "$H_HOLD" "$HAP_PID"
sleep 2

# --- throughput and latency, paths alternating ------------------------------------------------
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }
wrk_run() { # PREFIX PATH ROUND PORT [extra wrk args]
  local prefix=$1 path=$2 round=$3 port=$4; shift 4
  local out pid=${PID_WEB[$path]:-} c0 c1
  c0=$(cpu_ticks "$pid")
  out=$(timeout $((SECS + 30)) wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "$@" "http://127.0.0.1:$port/" 2>&1) || true
  c1=$(cpu_ticks "$pid")
  local rps p50 p99 errs n
  rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out" | to_ms)
  errs=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10} /Non-2xx/ {print $5}' <<<"$out" | awk '{s+=$1} END {print s+0}')
  [ -n "$rps" ] || { log "wrk failed on $path: $out"; return 0; }
  result "${prefix}_rps" "$path" "$round" "$rps"
  result "${prefix}_p50_ms" "$path" "$round" "$p50"
  result "${prefix}_p99_ms" "$path" "$round" "$p99"
  result "${prefix}_errors" "$path" "$round" "$errs"
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  local cpu="-"
  if [ -n "$pid" ] && [ "${n:-0}" -gt 0 ]; then
    cpu=$(awk -v t=$((c1 - c0)) -v n="$n" -v hz="$TCK" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    result "${prefix}_cpu_us_per_req" "$path" "$round" "$cpu"
  fi
  log "$prefix $path #$round: $rps req/s p50 ${p50}ms p99 ${p99}ms errors $errs, proxy CPU ${cpu} us/req"
}
iperf_run() { # PREFIX PATH ROUND PORT STREAMS
  local out gbps pid=${PID_IPERF[$2]:-} c0 c1 bytes
  c0=$(cpu_ticks "$pid")
  out=$(timeout $((SECS + 30)) iperf3 -c 127.0.0.1 -p "$4" -t "$SECS" -P "$5" -J 2>&1) || true
  c1=$(cpu_ticks "$pid")
  gbps=$(jq -r '.end.sum_received.bits_per_second / 1e9' <<<"$out" 2>/dev/null || true)
  [[ $gbps =~ ^[0-9.]+$ ]] || { log "iperf3 failed on $2: $(head -c 300 <<<"$out")"; sleep 1; return 0; }
  gbps=$(printf '%.2f' "$gbps")
  result "$1_gbps" "$2" "$3" "$gbps"
  bytes=$(jq -r '.end.sum_received.bytes' <<<"$out")
  local cpu="-"
  if [ -n "$pid" ] && [ "${bytes%.*}" -gt 0 ]; then
    cpu=$(awk -v t=$((c1 - c0)) -v b="$bytes" -v hz="$TCK" 'BEGIN {printf "%.3f", t / hz / (b / 1e9)}')
    result "$1_cpu_s_per_gb" "$2" "$3" "$cpu"
  fi
  log "$1 $2 #$3: $gbps Gb/s, proxy CPU ${cpu} s/GB"
}
# The paths in round R's order: each round starts one path later (A B C, B C A, C A B), so
# no path is always measured first or last in a round (the machine's load drifts within one).
rotated() { # ROUND PATH...
  local r=$1 n i
  shift
  n=$#
  local paths=("$@")
  for ((i = 0; i < n; i++)); do echo "${paths[$(((i + r - 1) % n))]}"; done
}
run_suite() { # PATH-LIST... (ports in WEB/IPERF)
  local r p
  for r in $(seq 1 "$ROUNDS"); do for p in $(rotated "$r" "$@"); do wrk_run keepalive "$p" "$r" "${WEB[$p]}"; done; done
  for r in $(seq 1 "$ROUNDS"); do for p in $(rotated "$r" "$@"); do wrk_run newconn "$p" "$r" "${WEB[$p]}" -H "Connection: close"; done; done
  for r in $(seq 1 "$ROUNDS"); do for p in $(rotated "$r" "$@"); do iperf_run bulk1 "$p" "$r" "${IPERF[$p]}" 1; done; done
  for r in $(seq 1 "$ROUNDS"); do for p in $(rotated "$r" "$@"); do iperf_run bulk8 "$p" "$r" "${IPERF[$p]}" 8; done; done
}
log "load: $ROUNDS rounds x ${SECS}s per step, wrk -t1 -c$CONNS, paths ${PATHS[*]}"
run_suite "${PATHS[@]}"

# --- the relay alone: datapath strategies against tokio::io::copy_bidirectional ---------------
if [ "$RELAY" = 1 ]; then
  RPATHS=()
  i=0
  for s in tokio buffered splice auto; do
    start "relay-$s-web" "$BENCH_BIN" relay --strategy "$s" --threads "$THREADS" --max-secs 900 \
      --listen "127.0.0.1:${R_PORTS[$i]}" --upstream "127.0.0.1:$NGINX_PORT"
    PID_WEB[relay:$s]=$LAST_PID
    start "relay-$s-iperf" "$BENCH_BIN" relay --strategy "$s" --threads "$THREADS" --max-secs 900 \
      --listen "127.0.0.1:${R_PORTS[$((i + 4))]}" --upstream "127.0.0.1:$IPERF_PORT"
    PID_IPERF[relay:$s]=$LAST_PID
    WEB[relay:$s]=${R_PORTS[$i]}
    IPERF[relay:$s]=${R_PORTS[$((i + 4))]}
    wait_for 10 "relay $s" http_ok "${R_PORTS[$i]}"
    RPATHS+=("relay:$s")
    i=$((i + 1))
  done
  # HAProxy again, in this rotation, so the strategies have a reference from the same window.
  WEB[relay:haproxy]=$H_WEB
  IPERF[relay:haproxy]=$H_IPERF
  PID_WEB[relay:haproxy]=$HAP_PID
  PID_IPERF[relay:haproxy]=$HAP_PID
  log "relay strategies alone: relay:haproxy ${RPATHS[*]}"
  run_suite relay:haproxy "${RPATHS[@]}"
fi

# --- registration -> routable ------------------------------------------------------------------
log "registration -> routable and removal -> unroutable through ${SYNS[*]}, $REGS times each"
for s in "${SYNS[@]}"; do
  "$BENCH_BIN" probe --etcd "http://127.0.0.1:$ETCD_PORT" --service probe --via "127.0.0.1:${SPROBE[$s]}" \
    --count "$REGS" --max-secs 150 >"$BASE/probe-$s.log" 2>&1 || log "probe failed: $(tail -n 3 "$BASE/probe-$s.log")"
  while IFS='=' read -r k v; do
    case $k in reg_p50_ms|reg_p99_ms|rem_p50_ms|rem_p99_ms|reg_miss|rem_miss|etcd_rtt_p50_ms|etcd_rtt_p99_ms|reg_n)
      result "$k" "$s" 1 "$v" ;;
    esac
  done <"$BASE/probe-$s.log"
  log "probe $s: $(tr '\n' ' ' <"$BASE/probe-$s.log")"
done

# --- failover: one of two backends killed -9 under new-connection load -------------------------
failover() { # PATH PORT ROUND
  wait_for 10 "failover backend a" http_ok "$FO_A"
  sleep 1.5 # let health checks / ejections settle after a restart
  local out=$BASE/failover-$1-$3.log
  "$BENCH_BIN" load --target "127.0.0.1:$2" --concurrency 16 --secs 6 >"$out" 2>&1 &
  local l=$!
  PIDS+=($l)
  sleep 2
  stop "$FO_A_PID"
  wait "$l" 2>/dev/null || true
  result failover_failed "$1" "$3" "$(sed -n 's/^failed=//p' "$out")"
  result failover_ok "$1" "$3" "$(sed -n 's/^ok=//p' "$out")"
  log "failover $1 #$3: $(tr '\n' ' ' <"$out")"
  start fo-a "$DEMO_BIN" a "127.0.0.1:$FO_A"
  FO_A_PID=$LAST_PID
}
for r in $(seq 1 "$ROUNDS"); do
  failover haproxy "$H_FO" "$r"
  for s in "${SYNS[@]}"; do failover "$s" "${SFO[$s]}" "$r"; done
done

# --- report ------------------------------------------------------------------------------------
{
  echo "nproc=$(nproc)"
  echo "cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "kernel=$(uname -r)"
  echo "haproxy=$(haproxy -v | awk 'NR==1 {print $3}')"
  echo "nginx=$(nginx -v 2>&1 | sed 's/.*\///')"
  echo "wrk=$(wrk -v 2>&1 | awk 'NR==1 {print $2}')"
  echo "iperf3=$(iperf3 -v | awk 'NR==1 {print $2}')"
  echo "etcd=$(etcd --version | awk 'NR==1 {print $3}')"
  echo "rustc=$(rustc --version | awk '{print $2}')"
  echo "synapse_commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "load_avg_at_start=$LOAD_AT_START"
  echo "load_avg_at_end=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "command=make bench (BENCH_ROUNDS=$ROUNDS BENCH_SECS=$SECS BENCH_CONNS=$CONNS BENCH_HOLD=$HOLD BENCH_REGS=$REGS${SYNAPSE_ALT_BIN:+ SYNAPSE_ALT_NAME=$SYNAPSE_ALT_NAME})"
  echo "duration_s=$((SECONDS - T0))"
  echo "threads=$THREADS"
  echo "conns=$CONNS"
  echo "secs=$SECS"
  echo "rounds=$ROUNDS"
} >"$BASE/meta.env"
mkdir -p "$OUT/bench-raw"
cp "$RES" "$BASE/meta.env" "$OUT/bench-raw/"
python3 "$ROOT/deploy/bench/report.py" "$OUT/bench-raw/results.tsv" "$OUT/bench-raw/meta.env" "$OUT"
log "done in $((SECONDS - T0)) s"
