#!/usr/bin/env bash
# What `make bench` needs on top of the build dependencies, from Debian packages, installed
# only when missing: haproxy (the reference proxy), nginx (the fixed backend), wrk and
# iperf3 (load), gnuplot (the PNG), jq and python3 (parsing and the report).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec ./deploy/install-deps.sh haproxy nginx-light:nginx wrk iperf3 gnuplot-nox:gnuplot jq python3
