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
IMAGES_DIR=$TOOLS_ROOT/images-$IMAGES_VERSION

# Runtime state of one local control plane (pid files, certs, data, logs, kubeconfig).
STATE_DIR=${DRIFTWATCH_CLUSTER_DIR:-${TMPDIR:-/tmp}/driftwatch-cluster}
# Ports: four in a row from DRIFTWATCH_PORT_BASE, so a second control plane (make test's,
# next to make demo's) only needs another base and another state dir.
PORT_BASE=${DRIFTWATCH_PORT_BASE:-26400}
ETCD_CLIENT_PORT=$((PORT_BASE + 1))
ETCD_PEER_PORT=$((PORT_BASE + 2))
APISERVER_PORT=$((PORT_BASE + 3))
KCM_PORT=$((PORT_BASE + 4))

# kube-controller-manager's request rate (its default is 20/s, burst 30: a small cluster's).
# bench/fleet raises it, as large clusters do, so that the ReplicaSets and Pods of 10,000
# releases are made in minutes, not in the hours that 20 requests a second takes.
KCM_QPS=${DRIFTWATCH_KCM_QPS:-20}

# The node (containerd, kubelet, kube-scheduler), when DRIFTWATCH_NODE=1. Each control plane
# gets its own bridge, pod subnet, cgroup and ports from its port base, so several can run.
NODE=${DRIFTWATCH_NODE:-0}
NODE_NAME=driftwatch-node
KUBELET_PORT=$((PORT_BASE + 5))
KUBELET_HEALTHZ_PORT=$((PORT_BASE + 6))
SCHEDULER_PORT=$((PORT_BASE + 7))
NET_INDEX=$(( (PORT_BASE / 100) % 256 ))
POD_SUBNET=10.200.$NET_INDEX.0/24
NODE_IP=10.200.$NET_INDEX.1          # the bridge's own address: local to this machine
BRIDGE=dw$PORT_BASE
SERVICE_CIDR=${DRIFTWATCH_SERVICE_CIDR:-10.0.0.0/24}
# The `kubernetes` Service's address (the range's first): pods reach the API server there.
API_SERVICE_IP=${SERVICE_CIDR%.*/*}.1
CGROUP_NAME=driftwatch-$PORT_BASE
# Kernel settings the kubelet changes; saved by the first node up, put back by the last down.
NODES_RUN_DIR=/run/driftwatch-nodes
KUBELET_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

export GOWORK=off GOTOOLCHAIN=local

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

# The ports this control plane and its node listen on (the kubelet's own port is on the node's
# address, not on loopback).
CLUSTER_PORTS=("$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT" "$KUBELET_HEALTHZ_PORT" "$SCHEDULER_PORT")
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { [ -f "$STATE_DIR/$1.pid" ] && kill -0 "$(cat "$STATE_DIR/$1.pid")" 2>/dev/null; }
start() { # name, then the command; detached from this shell, output to the state dir
  local name=$1; shift
  setsid "$@" >"$STATE_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE_DIR/$name.pid"
}
wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not become ready in ${secs}s; its log: $STATE_DIR/$what.log"
}
stop_pid() { # name, pid: TERM, then KILL after 10 s
  local name=$1 pid=$2
  kill -0 "$pid" 2>/dev/null || return 0
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "$name did not stop in 10s; killing it"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2
}
stop() { # name: the process `start` started, by its pid file
  local f=$STATE_DIR/$1.pid
  [ -f "$f" ] || return 0
  stop_pid "$1" "$(cat "$f")"; rm -f "$f"
}
case "$STATE_DIR" in ""|/|"$HOME") die "refusing to use '$STATE_DIR' as the state directory (DRIFTWATCH_CLUSTER_DIR)";; esac
