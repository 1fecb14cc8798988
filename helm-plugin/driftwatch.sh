#!/bin/sh
# `helm driftwatch …` (plugin.yaml): renders an upgrade with the helm that runs this plugin and
# pipes it to `driftwatch preview upgrade -f -`; any other command goes to driftwatch as it is.
set -eu

die() { echo "helm driftwatch: $*" >&2; exit 1; }

driftwatch_bin() {
  if [ -n "${DRIFTWATCH_BIN:-}" ]; then
    [ -x "$DRIFTWATCH_BIN" ] || die "DRIFTWATCH_BIN=$DRIFTWATCH_BIN is not an executable"
    echo "$DRIFTWATCH_BIN"; return
  fi
  if command -v driftwatch >/dev/null 2>&1; then command -v driftwatch; return; fi
  for c in "${HELM_PLUGIN_DIR:-.}/bin/driftwatch" "${HELM_PLUGIN_DIR:-.}/target/release/driftwatch" "${HELM_PLUGIN_DIR:-.}/target/debug/driftwatch"; do
    if [ -x "$c" ]; then echo "$c"; return; fi
  done
  die "no driftwatch binary: put it on PATH, set DRIFTWATCH_BIN, or build it in ${HELM_PLUGIN_DIR:-the plugin directory} (cargo build --release)"
}

usage() {
  cat <<'USAGE'
Usage:
  helm driftwatch preview upgrade RELEASE CHART [helm template flags] [-o text|json] [--detailed-exitcode] [--force-conflicts]
  helm driftwatch preview rollback RELEASE [REVISION] [-n NS] [-o text|json] [--detailed-exitcode] [--force-conflicts]
  helm driftwatch COMMAND …            any driftwatch command (check, diagnose, unlock, …)

The upgrade's manifest is rendered by this helm: helm template RELEASE CHART --is-upgrade [flags].
USAGE
}

dw=$(driftwatch_bin)
# Helm's own context: the namespace and kube context it was given (or its defaults).
[ -n "${HELM_KUBECONTEXT:-}" ] && export DRIFTWATCH_CONTEXT="$HELM_KUBECONTEXT"

case "${1:-}" in
  ""|-h|--help|help) usage; exit 0 ;;
esac
if [ "$1" != preview ] || [ "${2:-}" != upgrade ]; then
  # Not an upgrade to render: driftwatch itself, in helm's namespace (`helm -n NS driftwatch …`,
  # else the kube context's, as driftwatch's own default) unless the command names one.
  case "$1" in
    check|diagnose|unlock|preview)
      scoped=""
      for a in "$@"; do
        case "$a" in -n|-n*|--namespace|--namespace=*|-A|--all-namespaces) scoped=yes ;; esac
      done
      if [ -z "$scoped" ] && [ -n "${HELM_NAMESPACE:-}" ]; then set -- "$@" -n "$HELM_NAMESPACE"; fi ;;
  esac
  exec "$dw" "$@"
fi
shift 2
[ $# -ge 2 ] || { usage >&2; die "preview upgrade needs RELEASE and CHART"; }
release=$1 chart=$2
shift 2

# Sort the flags: driftwatch's own, the namespace (both), the rest to helm template.
ns=${HELM_NAMESPACE:-default}
dw_flags=""
tpl_file=$(mktemp "${TMPDIR:-/tmp}/helm-driftwatch.XXXXXX")
trap 'rm -f "$tpl_file" "$tpl_file.args"' EXIT
: >"$tpl_file.args"
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--output) [ $# -ge 2 ] || die "$1 needs a value"; dw_flags="$dw_flags -o $2"; shift 2 ;;
    -o=*|--output=*) dw_flags="$dw_flags -o ${1#*=}"; shift ;;
    --detailed-exitcode|--force-conflicts) dw_flags="$dw_flags $1"; shift ;;
    -n|--namespace) [ $# -ge 2 ] || die "$1 needs a value"; ns=$2; shift 2 ;;
    --namespace=*) ns=${1#*=}; shift ;;
    *) printf '%s\n' "$1" >>"$tpl_file.args"; shift ;;
  esac
done

# helm template with the remaining flags, one per line (values with spaces survive).
set -- template "$release" "$chart" -n "$ns" --is-upgrade
while IFS= read -r a; do set -- "$@" "$a"; done <"$tpl_file.args"
"${HELM_BIN:-helm}" "$@" >"$tpl_file" || die "helm template failed (the flags after CHART go to helm template)"
set +e
# shellcheck disable=SC2086 # dw_flags are words of our own making
"$dw" preview upgrade "$release" -n "$ns" -f "$tpl_file" $dw_flags
rc=$?
exit "$rc"
