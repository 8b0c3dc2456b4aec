#!/usr/bin/env bash
# Installs what building and testing need on a Debian machine, only if missing:
# protoc and the well-known .proto files it imports (etcd-client compiles .proto files at build
# time; with --no-install-recommends, protobuf-compiler alone lacks google/protobuf/*.proto),
# etcd and etcdctl (tests and the demo run a real etcd), Chromium (the dashboard test drives
# the pages in a real headless browser), and iproute2 + iptables (the multi-host tests and
# `make cluster-demo` build their simulated hosts from network namespaces, veths and a bridge,
# and cut, block or slow their links; they run as root, so the tools may live in /sbin).
set -euo pipefail
missing=()
have_admin_tool() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have_admin_tool ip || missing+=(iproute2)
have_admin_tool iptables || missing+=(iptables)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
for extra in "$@"; do
  case "$extra" in
    *:*) pkg=${extra%%:*}; cmd=${extra#*:} ;;
    *) pkg=$extra; cmd=$extra ;;
  esac
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
