#!/usr/bin/env bash
# Least-privilege etcd for the mesh: a role and a user per program.
#   nerve:   read and write under the registry prefix (its registrations; leases need no
#            permission of their own in etcd 3.4, and revoking one needs write on its keys).
#   synapse: read-only under the prefix (get + watch).
# Then turns authentication on (creating `root`, which etcd requires for that, if missing).
# Idempotent: running it again keeps what exists and sets the passwords again.
#
# Environment:
#   ETCDCTL_ENDPOINTS    etcd members (default http://127.0.0.1:2379); TLS flags can be given
#                        the usual way (ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY).
#   PREFIX               the registry prefix (default /smartstack/services), as in `etcd.prefix`.
#   ROOT_PASSWORD        required: root's password (set if root is created, used afterwards).
#   NERVE_PASSWORD       required: the `nerve` user's password.
#   SYNAPSE_PASSWORD     required: the `synapse` user's password.
# With TLS client certificates instead of passwords, etcd takes the user from the
# certificate's common name: issue nerve's with CN=nerve and synapse's with CN=synapse (the
# passwords then only matter for etcdctl use by hand).
set -euo pipefail
: "${ROOT_PASSWORD:?set ROOT_PASSWORD}" "${NERVE_PASSWORD:?set NERVE_PASSWORD}" "${SYNAPSE_PASSWORD:?set SYNAPSE_PASSWORD}"
export ETCDCTL_API=3
PREFIX=${PREFIX:-/smartstack/services}
PREFIX=${PREFIX%/}/
etcdctl=(etcdctl)

# Before auth is on, commands need no user; afterwards, root's. (etcdctl 3.4 has no
# `auth status`: a user list without a user is refused exactly when auth is on.)
auth_on=false
if ! etcdctl user list >/dev/null 2>&1; then
  auth_on=true
  etcdctl+=(--user "root:$ROOT_PASSWORD")
fi

has() { "${etcdctl[@]}" "$1" list | grep -qx "$2"; }

if ! has user root; then
  "${etcdctl[@]}" user add "root:$ROOT_PASSWORD" >/dev/null
  "${etcdctl[@]}" user grant-role root root >/dev/null
fi
for role in nerve synapse; do
  has role "$role" || "${etcdctl[@]}" role add "$role" >/dev/null
done
"${etcdctl[@]}" role grant-permission --prefix=true nerve readwrite "$PREFIX" >/dev/null
"${etcdctl[@]}" role grant-permission --prefix=true synapse read "$PREFIX" >/dev/null
for pair in "nerve:$NERVE_PASSWORD" "synapse:$SYNAPSE_PASSWORD"; do
  user=${pair%%:*}
  if has user "$user"; then
    "${etcdctl[@]}" user passwd "$user" --interactive=false <<<"${pair#*:}" >/dev/null
  else
    "${etcdctl[@]}" user add "$pair" >/dev/null
  fi
  "${etcdctl[@]}" user grant-role "$user" "$user" >/dev/null
done
if [ "$auth_on" = false ]; then
  "${etcdctl[@]}" auth enable >/dev/null
fi
echo "roles nerve (readwrite $PREFIX) and synapse (read $PREFIX) in place; authentication is on"
