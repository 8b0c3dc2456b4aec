#!/usr/bin/env bash
# Installs what building and testing need on a Debian machine, only if missing:
# protoc and the well-known .proto files it imports (etcd-client compiles .proto files at build
# time; with --no-install-recommends, protobuf-compiler alone lacks google/protobuf/*.proto),
# etcd and etcdctl (tests and the demo run a real etcd), Chromium (the dashboard test drives
# the pages in a real headless browser), and iproute2 + iptables (the multi-host tests and
# `make cluster-demo` build their simulated hosts from network namespaces, veths and a bridge,
# and cut, block or slow their links; they run as root, so the tools may live in /sbin).
# Docker (docker.io: the container test and `make image`) is installed if it can be: where it
# cannot, the container test is skipped with a loud message, so a failed install of it does
# not stop the build.
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
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# The Kubernetes manifests test installs kubernetes-validate from PyPI into a venv.
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
optional=()
docker info >/dev/null 2>&1 || command -v dockerd >/dev/null 2>&1 || optional+=(docker.io)
for extra in "$@"; do
  case "$extra" in
    *:*) pkg=${extra%%:*}; cmd=${extra#*:} ;;
    *) pkg=$extra; cmd=$extra ;;
  esac
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ${#optional[@]} -gt 0 ]; then
  echo "installing (optional): ${optional[*]}"
  if ! { [ ${#missing[@]} -gt 0 ] || $sudo apt-get update -qq; } \
     || ! $sudo apt-get install -y -qq --no-install-recommends "${optional[@]}" >/dev/null; then
    echo "warning: could not install ${optional[*]}: the container test will be skipped" >&2
  fi
fi
