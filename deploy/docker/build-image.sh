#!/usr/bin/env bash
# Builds a container image holding nerve, synapse and etcdctl without pulling anything: the
# root filesystem is assembled from binaries already built on this machine, each with the
# shared libraries `ldd` names (and the dynamic loader) copied to the same paths, and handed
# to `docker import`. No base image, no registry, no shell inside the image.
#
# Usage: deploy/docker/build-image.sh [--bin-dir DIR] [--tag NAME:TAG]... [--add FILE]...
#                                     [--no-strip] [--rootfs DIR]
#   --bin-dir DIR   where nerve and synapse are (default: $CARGO_TARGET_DIR/release, else
#                   target/release of this checkout). `make image` builds them first.
#   --tag NAME:TAG  tag the image NAME:TAG (repeatable). Default: smartstack-rs:<version>
#                   and smartstack-rs:latest, <version> being what `nerve --version` says.
#   --add FILE      put another executable into /usr/local/bin, with its libraries
#                   (repeatable; the end-to-end test adds etcd and its test app this way).
#   --no-strip      keep debug information (by default it is stripped from the copies;
#                   symbols stay, so a panic's backtrace still names functions).
#   --rootfs DIR    only assemble the root filesystem into DIR (must not exist); no Docker.
#
# etcdctl is taken from this machine's PATH (Debian: etcd-client). Prints the image id.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
tags=()
extras=()
strip=1
rootfs_only=""

die() { echo "build-image.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a directory"; bin_dir=$2; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs NAME:TAG"; tags+=("$2"); shift 2 ;;
    --add) [ $# -ge 2 ] || die "--add needs a file"; extras+=("$2"); shift 2 ;;
    --no-strip) strip=0; shift ;;
    --rootfs) [ $# -ge 2 ] || die "--rootfs needs a directory"; rootfs_only=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

for program in nerve synapse; do
  [ -x "$bin_dir/$program" ] || die "$bin_dir/$program not found: build it first (cargo build --release)"
done
etcdctl=$(command -v etcdctl) || die "etcdctl not found: install Debian's etcd-client (make deps)"
for extra in "${extras[@]}"; do
  [ -x "$extra" ] || die "--add $extra: not an executable file"
done
command -v ldd >/dev/null || die "ldd not found"

version=$("$bin_dir/nerve" --version | awk '{print $2}')
[ -n "$version" ] || die "$bin_dir/nerve --version printed no version"
[ ${#tags[@]} -gt 0 ] || tags=("smartstack-rs:$version" "smartstack-rs:latest")

if [ -n "$rootfs_only" ]; then
  [ ! -e "$rootfs_only" ] || die "--rootfs $rootfs_only already exists"
  mkdir -p "$rootfs_only"
  root=$rootfs_only
else
  command -v docker >/dev/null || die "docker not found (Debian: docker.io)"
  docker info >/dev/null 2>&1 \
    || die "no Docker daemon answers: start one (systemctl start docker, or dockerd &) and run again"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  root=$work/rootfs
  mkdir "$root"
fi

# An executable and every library it loads, at the paths the loader will look for them.
# ldd prints "name => /path (0x...)" for libraries and "/path (0x...)" for the loader;
# the vDSO has no path and is skipped. Statically linked programs need nothing.
add_libraries() {
  local exe=$1 lib
  while read -r lib; do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done < <(ldd "$exe" 2>/dev/null | awk '/=> \// {print $3} /^\t\// {print $1}')
}

add_program() {
  local src=$1 name
  name=$(basename "$src")
  cp -L "$src" "$root/usr/local/bin/$name"
  chmod 0755 "$root/usr/local/bin/$name"
  if [ "$strip" -eq 1 ] && command -v strip >/dev/null; then
    strip --strip-debug "$root/usr/local/bin/$name"
  fi
  add_libraries "$src"
}

mkdir -p "$root"/{usr/local/bin,etc/smartstack,tmp}
chmod 1777 "$root/tmp"
add_program "$bin_dir/nerve"
add_program "$bin_dir/synapse"
add_program "$etcdctl"
for extra in "${extras[@]}"; do
  add_program "$extra"
done
[ -e "$root/lib64/ld-linux-x86-64.so.2" ] || [ "$(uname -m)" != x86_64 ] \
  || die "ldd named no dynamic loader for nerve: is ldd working?"

# Names for uid/gid 0 and 65534 (the image runs as 65534), and name resolution from
# /etc/hosts then DNS (Docker bind-mounts both files into each container).
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/nonexistent
nobody:x:65534:65534:nobody:/nonexistent:/nonexistent
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF

if [ -n "$rootfs_only" ]; then
  echo "root filesystem assembled in $rootfs_only"
  exit 0
fi

# Every file belongs to root; the programs run as nobody and write only to /tmp (or to
# volumes mounted for them). The image has no ENTRYPOINT: the command names the program.
id=$(tar -C "$root" --numeric-owner --owner=0 --group=0 -c . | docker import \
  --change 'ENV PATH=/usr/local/bin' \
  --change 'ENV ETCDCTL_API=3' \
  --change 'WORKDIR /' \
  --change 'USER 65534:65534' \
  --change 'CMD ["nerve", "--help"]' \
  --change "LABEL org.opencontainers.image.title=smartstack-rs" \
  --change "LABEL org.opencontainers.image.description=\"nerve, synapse and etcdctl: run 'nerve -c FILE' or 'synapse -c FILE'\"" \
  --change "LABEL org.opencontainers.image.version=$version" \
  --change "LABEL org.opencontainers.image.licenses=Apache-2.0" \
  --message "smartstack-rs $version assembled by deploy/docker/build-image.sh" \
  - "${tags[0]}")
for tag in "${tags[@]:1}"; do
  docker tag "$id" "$tag"
done
echo "$id"
