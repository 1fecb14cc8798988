# Shared settings of the tests/cluster scripts. Sourced, not run.
# shellcheck shell=bash
CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$CLUSTER_DIR/versions.env"

# Built tools live outside the repo, one directory per pinned version, so a version
# bump rebuilds only what changed and a fresh clone on the same machine reuses them.
TOOLS_ROOT=${DRIFTWATCH_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/driftwatch/tools}
KUBE_BIN=$TOOLS_ROOT/kube-$KUBE_VERSION-etcd-$ETCD_VERSION
KUBECTL=$KUBE_BIN/kubectl   # same version as the server: no client/server skew
HELM3_BIN=$TOOLS_ROOT/helm-$HELM3_VERSION
HELM4_BIN=$TOOLS_ROOT/helm-$HELM4_VERSION
HELM_DIFF_DIR=$TOOLS_ROOT/helm-diff-$HELM_DIFF_VERSION
HELM_PLUGINS_DIR=$HELM_DIFF_DIR/plugins

# Runtime state of one local control plane (pid files, certs, data, logs, kubeconfig).
STATE_DIR=${DRIFTWATCH_CLUSTER_DIR:-${TMPDIR:-/tmp}/driftwatch-cluster}
# Ports: four in a row from DRIFTWATCH_PORT_BASE, so a second control plane (make test's,
# next to make demo's) only needs another base and another state dir.
PORT_BASE=${DRIFTWATCH_PORT_BASE:-26400}
ETCD_CLIENT_PORT=$((PORT_BASE + 1))
ETCD_PEER_PORT=$((PORT_BASE + 2))
APISERVER_PORT=$((PORT_BASE + 3))
KCM_PORT=$((PORT_BASE + 4))

export GOWORK=off GOTOOLCHAIN=local

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
case "$STATE_DIR" in ""|/|"$HOME") die "refusing to use '$STATE_DIR' as the state directory (DRIFTWATCH_CLUSTER_DIR)";; esac
