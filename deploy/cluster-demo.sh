#!/usr/bin/env bash
# The simulated cluster of tests/e2e/multi_host.rs, narrated: eight network namespaces on one
# bridge (three etcd members, four provider hosts, one consumer), each with its own
# 198.18.0.x address that exists only inside the namespaces. Real etcd, nerve and synapse,
# two load clients on the consumer dialling 127.0.0.1:3000; then the scenarios one after the
# other: scale out and in, a rolling release, a canary, a provider host cut off, the etcd
# leader's host cut off, the consumer cut off from etcd, an instance moving host, a slow
# network. Prints `<scenario>: N requests, M failed` for each.
#
# It is the multi-host test itself, run with its narration shown: everything it creates
# (namespaces, veths, the bridge, iptables rules, processes) is removed when it ends, even
# when it fails, and whatever a killed run left behind is removed when the next one starts.
# Needs root (network namespaces), iproute2 and iptables (`make deps` installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "make cluster-demo needs root: it creates network namespaces, veths and a bridge." >&2
  echo "Run it as root (e.g. sudo make cluster-demo); nothing leaves the namespaces it creates." >&2
  exit 1
fi

log=$(mktemp /tmp/smartstack-cluster-demo.XXXXXX)
trap 'rm -f "$log"' EXIT
trap "exit 130" INT TERM HUP PIPE

printf '\n%s== the simulated cluster: building hosts, starting etcd, nerve, synapse (about a minute and a half)%s\n' "$bold" "$plain"
set +e
"$CARGO" test -q -p testkit --test multi_host a_simulated_cluster -- --nocapture --test-threads=1 2>&1 |
  tee "$log" |
  awk -v bold="$bold" -v plain="$plain" '
    /^== / { printf "\n%s%s%s\n", bold, $0, plain; fflush(); next }
    /^[a-z].*: [0-9]+ requests, [0-9]+ failed/ { print "   " $0; fflush(); next }
    /^SKIPPED|^\*\*\*\*/ { print; fflush() }
  '
status=${PIPESTATUS[0]}
set -e

if [ "$status" -ne 0 ]; then
  printf '\nCLUSTER DEMO FAILED (exit %s); the end of its output:\n' "$status" >&2
  tail -n 60 "$log" >&2
  exit 1
fi
printf '\n%s== results%s\n' "$bold" "$plain"
# The scenario lines, cut to `<scenario>: N requests, M failed`, then the measurements.
sed -n '/^summary (/,$p' "$log" | sed -n 's/^  \(.*: [0-9]* requests, [0-9]* failed\).*/\1/p'
echo
sed -n '/^summary (/,$p' "$log" | grep -v ' requests, ' | grep -Ev '^test result|^\.*$'
printf '\n%s== demo finished; every namespace, link, rule and process it created is gone:%s\n' "$bold" "$plain"
left=$(ip netns list | grep -c '^ssrs-' || true)
echo "   namespaces named ssrs-* left: $left"
