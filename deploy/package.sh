#!/usr/bin/env bash
# Installs and packages nerve and synapse (make install / make dist / make deb call it).
#
#   package.sh install --bin-dir DIR [--prefix /usr/local] [--sysconfdir PREFIX/etc] [--destdir D]
#   package.sh dist    --bin-dir DIR --out DIR   # OUT/smartstack-rs-<version>-<arch>.tar.gz
#   package.sh deb     --bin-dir DIR --out DIR   # OUT/smartstack-rs_<version>_<debian arch>.deb
#
# The version is the one the binaries print (`nerve --version`), so a package always names
# what it holds. Everything is put in place with install(1):
#   PREFIX/bin/{nerve,synapse}                       0755, debug information stripped
#   SYSCONFDIR/nerve/nerve.yaml, SYSCONFDIR/synapse/synapse.yaml   example configs, 0644
#   PREFIX/lib/systemd/system/{nerve,synapse}.service  ExecStart rewritten to these paths
#   PREFIX/share/doc/smartstack-rs/                  README.md and the reference docs
#   PREFIX/share/doc/smartstack-rs/examples/         Prometheus, Grafana, Kubernetes, etcd roles
# The .deb is that tree (PREFIX=/usr, SYSCONFDIR=/etc, units in /lib/systemd/system) with a
# DEBIAN/ directory, built by dpkg-deb: no other tool to install (docs/deployment.md says why).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
name=smartstack-rs

die() { echo "package.sh: $*" >&2; exit 1; }

cmd=${1:-}; [ -n "$cmd" ] || die "usage: package.sh install|dist|deb --bin-dir DIR ..."
shift
bin_dir="" prefix=/usr/local sysconfdir="" destdir="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --sysconfdir) sysconfdir=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
[ -n "$bin_dir" ] || die "--bin-dir DIR (where nerve and synapse are) is required"
for b in nerve synapse; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found: build it first (cargo build --release)"
done
version=$("$bin_dir/nerve" --version | awk '{print $2}')
[ -n "$version" ] || die "cannot read the version from $bin_dir/nerve --version"

# install_tree DESTDIR PREFIX SYSCONFDIR UNITDIR
install_tree() {
  local dest=$1 pfx=$2 etc=$3 unitdir=$4
  local bindir=$pfx/bin docdir=$pfx/share/doc/$name
  install -d -m 0755 "$dest$bindir" "$dest$etc/nerve" "$dest$etc/synapse" \
    "$dest$unitdir" "$dest$docdir"
  install -m 0755 "$bin_dir/nerve" "$bin_dir/synapse" "$dest$bindir/"
  # Debug information out (symbols stay, so backtraces still name functions): the release
  # binaries shrink by about half, debug builds (the tests' input) by 90 %.
  strip --strip-debug "$dest$bindir/nerve" "$dest$bindir/synapse"
  install -m 0644 "$root/deploy/nerve.yaml" "$dest$etc/nerve/nerve.yaml"
  install -m 0644 "$root/deploy/synapse.yaml" "$dest$etc/synapse/synapse.yaml"
  local unit
  for unit in nerve synapse; do
    # The unit is the one in deploy/systemd with this tree's paths.
    sed -e "s#/usr/bin/$unit #$bindir/$unit #" \
        -e "s#/etc/$unit/#$etc/$unit/#g" \
        -e "s#file:///usr/share/doc/$name/#file://$docdir/#" \
        "$root/deploy/systemd/$unit.service" > "$dest$unitdir/$unit.service"
    chmod 0644 "$dest$unitdir/$unit.service"
  done
  install -m 0644 "$root/README.md" "$root/docs/nerve.md" "$root/docs/synapse.md" \
    "$root/docs/operations.md" "$root/docs/deployment.md" "$root/docs/registry.md" \
    "$root/docs/metrics.md" "$dest$docdir/"
  # Examples: the Prometheus scrape config, the Grafana dashboard, and (where the checkout
  # has them) the Kubernetes manifests and the etcd role script.
  install -d -m 0755 "$dest$docdir/examples"
  install -m 0644 "$root/deploy/prometheus/prometheus.yml" "$root/deploy/grafana/smartstack.json" \
    "$dest$docdir/examples/"
  if [ -d "$root/deploy/kubernetes" ]; then
    install -d -m 0755 "$dest$docdir/examples/kubernetes"
    find "$root/deploy/kubernetes" -maxdepth 1 -type f -name '*.yaml' \
      -exec install -m 0644 -t "$dest$docdir/examples/kubernetes" {} +
  fi
  if [ -f "$root/deploy/etcd/roles.sh" ]; then
    install -m 0755 "$root/deploy/etcd/roles.sh" "$dest$docdir/examples/etcd-roles.sh"
  fi
}

case "$cmd" in
  install)
    prefix=${prefix%/}
    install_tree "$destdir" "$prefix" "${sysconfdir:-$prefix/etc}" "$prefix/lib/systemd/system"
    ;;
  dist)
    [ -n "$out" ] || die "--out DIR is required"
    arch=$(uname -m)
    base=$name-$version-$arch
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    # The tarball unpacks to base/{bin,etc,lib,share}: a PREFIX of its own.
    install_tree "$stage/$base" "" /etc /lib/systemd/system
    mkdir -p "$out"
    tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$out/$base.tar.gz" "$base"
    echo "$out/$base.tar.gz"
    ;;
  deb)
    [ -n "$out" ] || die "--out DIR is required"
    command -v dpkg-deb >/dev/null || die "dpkg-deb not found (Debian: dpkg)"
    arch=$(dpkg --print-architecture)
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    pkg=$stage/pkg
    install_tree "$pkg" /usr /etc /lib/systemd/system
    install -d -m 0755 "$pkg/DEBIAN"
    # The newest glibc symbol version the binaries use is the libc6 they need.
    glibc=$(objdump -T "$bin_dir/nerve" "$bin_dir/synapse" 2>/dev/null \
      | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
    size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
    cat > "$pkg/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: smartstack-rs maintainers <smartstack-rs@localhost>
Installed-Size: $size
Depends: libc6 (>= ${glibc:-2.34}), libgcc-s1, adduser
Section: net
Priority: optional
Description: SmartStack-style service discovery: nerve and synapse
 nerve health-checks the app instances of a host and registers the healthy
 ones in etcd; synapse proxies 127.0.0.1:PORT to the instances registered
 there. Ships both programs, systemd units (not enabled: edit
 /etc/nerve/nerve.yaml and /etc/synapse/synapse.yaml first) and the docs.
EOF
    printf '/etc/nerve/nerve.yaml\n/etc/synapse/synapse.yaml\n' > "$pkg/DEBIAN/conffiles"
    cat > "$pkg/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  # The system user both units run as (User=smartstack).
  # A user that was there before is left alone, also on purge.
  if ! getent passwd smartstack >/dev/null; then
    adduser --system --group --quiet --no-create-home --home /nonexistent smartstack
    mkdir -p /var/lib/smartstack-rs
    echo "adduser by the smartstack-rs package; removed on purge" > /var/lib/smartstack-rs/created-user
  fi
  # The configs may hold etcd passwords: readable by root and the service user only.
  for f in /etc/nerve/nerve.yaml /etc/synapse/synapse.yaml; do
    chgrp smartstack "$f" && chmod 0640 "$f"
  done
  # The units are installed, not enabled or started: the example configs name example
  # instances. Edit them, then: systemctl enable --now nerve synapse
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
exit 0
EOF
    cat > "$pkg/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && { [ "$1" = remove ] || [ "$1" = purge ]; }; then
  systemctl stop nerve.service synapse.service 2>/dev/null || true
  systemctl disable nerve.service synapse.service 2>/dev/null || true
fi
exit 0
EOF
    cat > "$pkg/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -rf /var/lib/synapse /run/nerve
  rmdir /etc/nerve /etc/synapse 2>/dev/null || true
  # The user goes only if this package created it.
  if [ -f /var/lib/smartstack-rs/created-user ]; then
    if getent passwd smartstack >/dev/null && command -v deluser >/dev/null; then
      deluser --system --quiet smartstack || true
    fi
    if getent group smartstack >/dev/null && command -v delgroup >/dev/null; then
      delgroup --system --quiet smartstack || true
    fi
  fi
  rm -rf /var/lib/smartstack-rs
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
exit 0
EOF
    chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"
    mkdir -p "$out"
    deb=$out/${name}_${version}_$arch.deb
    dpkg-deb --root-owner-group --build "$pkg" "$deb" >/dev/null
    echo "$deb"
    ;;
  *) die "unknown command $cmd (install, dist or deb)" ;;
esac
