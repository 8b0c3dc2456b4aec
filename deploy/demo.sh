#!/usr/bin/env bash
# The walking skeleton in one go: a single-node etcd, two backends, a nerve registering
# them and a synapse forwarding 127.0.0.1:23000 to them. Shows traffic reaching both
# backends, what operators see in etcd, and a backend failure that no request notices.
# Everything it starts runs on loopback and is killed (by PID) when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
ETCD_PORT=${ETCD_PORT:-23791}
PEER_PORT=${PEER_PORT:-23792}
SYNAPSE_PORT=${SYNAPSE_PORT:-23000}
A_PORT=${A_PORT:-28081}
B_PORT=${B_PORT:-28082}
PREFIX=/smartstack/services

work=$(mktemp -d /tmp/smartstack-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM HUP PIPE

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
fail() { printf '\nDEMO FAILED: %s\n(logs were in %s)\n' "$*" "$work" >&2; tail -n 20 "$work"/*.log >&2 || true; exit 1; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $ETCD_PORT $PEER_PORT $SYNAPSE_PORT $A_PORT $B_PORT; do
  port_free "$p" || fail "port $p on 127.0.0.1 is in use (override with ETCD_PORT, SYNAPSE_PORT, ...)"
done
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out waiting for $what"
    sleep 0.1
  done
}
# One HTTP request through a TCP port, with bash alone; prints the body's last line.
request() {
  local body
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET / HTTP/1.0\r\nHost: demo\r\n\r\n' >&3
  body=$(timeout 2 cat <&3) || { exec 3<&-; return 1; }
  exec 3<&-
  [ -n "$body" ] || return 1
  printf '%s\n' "${body##*$'\n'}"
}
etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT" "$@"; }
keys() { etcdctl_ get --prefix "$PREFIX" --keys-only | grep -c . || true; }

say "starting etcd on 127.0.0.1:$ETCD_PORT (data in $work/etcd)"
etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "demo=http://127.0.0.1:$PEER_PORT" --log-level error --logger zap >"$work/etcd.log" 2>&1 &
pids+=($!)
wait_for 20 "etcd to answer" etcdctl_ endpoint health

say "starting two backends: a on :$A_PORT, b on :$B_PORT"
"$BIN/demo-backend" a "127.0.0.1:$A_PORT" >"$work/a.log" 2>&1 & pid_a=$!; pids+=($pid_a)
"$BIN/demo-backend" b "127.0.0.1:$B_PORT" >"$work/b.log" 2>&1 & pids+=($!)

cat >"$work/nerve.yaml" <<YAML
etcd:
  endpoints: ["http://127.0.0.1:$ETCD_PORT"]
lease_ttl: 5s
services:
  - name: web
    host: 127.0.0.1
    port: $A_PORT
    instance_id: web-a
    check_interval: 200ms
    rise: 2
    fall: 2
    checks: [{type: tcp}]
  - name: web
    host: 127.0.0.1
    port: $B_PORT
    instance_id: web-b
    check_interval: 200ms
    rise: 2
    fall: 2
    checks: [{type: tcp}]
YAML
cat >"$work/synapse.yaml" <<YAML
etcd:
  endpoints: ["http://127.0.0.1:$ETCD_PORT"]
services:
  - name: web
    listen: 127.0.0.1:$SYNAPSE_PORT
YAML
say "starting nerve (health-checks both, registers them in etcd)"
"$BIN/nerve" -c "$work/nerve.yaml" >"$work/nerve.log" 2>&1 & pid_nerve=$!; pids+=($pid_nerve)
say "starting synapse (127.0.0.1:$SYNAPSE_PORT -> instances of 'web')"
"$BIN/synapse" -c "$work/synapse.yaml" >"$work/synapse.log" 2>&1 & pids+=($!)

wait_for 20 "both instances to be registered" bash -c "[ \$(ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:$ETCD_PORT get --prefix $PREFIX --keys-only | grep -c .) -eq 2 ]"
say "what operators see: etcdctl get --prefix $PREFIX"
etcdctl_ get --prefix "$PREFIX"

wait_for 20 "synapse to route" request "$SYNAPSE_PORT"
say "6 requests to 127.0.0.1:$SYNAPSE_PORT"
seen=""
for i in 1 2 3 4 5 6; do
  r=$(request "$SYNAPSE_PORT") || fail "request $i failed"
  echo "  request $i: $r"; seen+="$r"$'\n'
done
grep -q "hello from a" <<<"$seen" && grep -q "hello from b" <<<"$seen" || fail "traffic did not reach both backends"

say "killing backend a (kill -9) and sending 10 more requests at once"
kill -9 "$pid_a"; wait "$pid_a" 2>/dev/null || true
for i in $(seq 1 10); do
  r=$(request "$SYNAPSE_PORT") || fail "request $i failed after backend a died"
  echo "  request $i: $r"
  [ "$r" = "hello from b" ] || fail "unexpected answer: $r"
done
echo "  every request succeeded on b"
wait_for 10 "nerve to deregister web-a" bash -c "! ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:$ETCD_PORT get --prefix $PREFIX --keys-only | grep -q web-a"
say "nerve noticed (fall=2 x 200ms) and removed web-a:"
etcdctl_ get --prefix "$PREFIX"

say "stopping nerve (SIGTERM): its registrations go with it"
kill -TERM "$pid_nerve"; wait "$pid_nerve" || fail "nerve exited with an error"
echo "  keys left under $PREFIX: $(keys)"
[ "$(keys)" -eq 0 ] || fail "keys left after nerve stopped"

say "demo finished; stopping everything it started"
