#!/usr/bin/env bash
# Applies the rendered Helm chart to a real Kubernetes API server, with
# `kubectl apply --dry-run=server`: the server's own validation, defaulting
# and admission, which no offline schema fully reproduces. Optional and
# not part of scripts/test.sh: building the API server takes 10 to 20
# minutes the first time (then a run takes under a minute).
#
#   bash scripts/k8s-apiserver-check.sh
#
# It builds kube-apiserver and kubectl from the Kubernetes Go module
# (k8s.io/kubernetes, with its staging modules at their published
# versions) into ~/.cache/collab/tools, installs Debian's etcd-server
# (apt) when missing, starts both on loopback in a temp dir, applies the
# CRDs the chart uses (ServiceMonitor, PrometheusRule, ScyllaCluster) and
# the namespaces, then dry-runs the chart rendered with its default and
# its production values, and the examples (ScyllaCluster, Redis). Everything it
# started is stopped on exit. It renders with the helm that
# scripts/k8s-check.sh installs: run that first.
#
# Environment:
#   KUBERNETES_VERSION   the k8s.io/kubernetes module version, default v1.37.2
#   COLLAB_TOOLS         default ~/.cache/collab/tools
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CHART="$ROOT/deploy/k8s/charts/collab"
TOOLS="${COLLAB_TOOLS:-$HOME/.cache/collab/tools}"
KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.37.2}"
HELM_VERSION=v4.3.2
PROMETHEUS_OPERATOR_VERSION=v0.85.0
SCYLLA_OPERATOR_VERSION=v1.18.0
READY_TIMEOUT=120

log() { echo "k8s-apiserver-check: $*"; }
die() { echo "k8s-apiserver-check: FAILED: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

go_module_dir() { # MODULE VERSION -> its directory in the Go module cache
  (cd "$TOOLS" && GOFLAGS=-mod=mod go mod download -json "$1@$2") \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])' \
    || die "go mod download $1@$2 failed"
}

# kube-apiserver and kubectl from k8s.io/kubernetes. Its go.mod points its
# staging modules (k8s.io/api, k8s.io/client-go, ...) at its own source
# tree, which a module download leaves out, so a small module of our own
# requires it and points them at their published versions instead.
build_kubernetes() {
  local bin="$TOOLS/kubernetes-$KUBERNETES_VERSION" build module_dir staging_version version_flags
  KUBE_APISERVER="$bin/kube-apiserver"
  KUBECTL="$bin/kubectl"
  if [[ -x "$KUBE_APISERVER" && -x "$KUBECTL" ]]; then
    log "kube-apiserver and kubectl $KUBERNETES_VERSION already built ($bin)"
    return
  fi
  command -v go >/dev/null || die "go is needed to build kube-apiserver"
  mkdir -p "$TOOLS"
  module_dir=$(go_module_dir k8s.io/kubernetes "$KUBERNETES_VERSION")
  staging_version="v0.${KUBERNETES_VERSION#v1.}"
  build="$TOOLS/kubernetes-build-$KUBERNETES_VERSION"
  rm -rf "$build" && mkdir -p "$build"
  {
    echo "module collab.local/kubernetes-build"
    echo
    grep -E '^go [0-9.]+$' "$module_dir/go.mod"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    sed -nE "s#^[[:space:]]*(k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+\$#\t\1 => \1 $staging_version#p" \
      "$module_dir/go.mod"
    echo ")"
  } >"$build/go.mod"
  cat >"$build/tools.go" <<'EOF'
//go:build tools

// The commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
  # The version the binaries report (the Kubernetes build stamps it the same way).
  local major minor
  IFS=. read -r major minor _ <<<"${KUBERNETES_VERSION#v}"
  version_flags=""
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    version_flags+=" -X $package.gitVersion=$KUBERNETES_VERSION -X $package.gitMajor=$major -X $package.gitMinor=$minor"
  done
  log "building kube-apiserver and kubectl $KUBERNETES_VERSION (go build; 10 to 20 minutes the first time) into $bin"
  (cd "$build" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -ldflags "$version_flags" -o "$bin/" \
     k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl) \
    || die "building kube-apiserver and kubectl failed (see $build)"
}

install_etcd() {
  if command -v etcd >/dev/null; then
    log "etcd $(etcd --version | head -1 | awk '{print $3}') already installed"
    return
  fi
  log "installing Debian's etcd-server (apt-get)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null \
    || die "apt-get install etcd-server failed"
  # The package starts a system etcd on the default ports; this check runs
  # its own, so stop that one if it started.
  if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl stop etcd || true
  fi
}

wait_for() { # WHAT PID LOG COMMAND...: poll until COMMAND succeeds, while PID lives
  local what=$1 pid=$2 logfile=$3 deadline=$(( SECONDS + READY_TIMEOUT )); shift 3
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -5 "$logfile" >&2
      die "$what exited before it was ready (log above)"
    fi
    (( SECONDS < deadline )) || die "$what not ready after ${READY_TIMEOUT}s (log $logfile)"
    sleep 0.5
  done
}

ETCD_PID=""
APISERVER_PID=""
WORK=""
cleanup() {
  local pid
  for pid in "$APISERVER_PID" "$ETCD_PID"; do
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  [[ -n "$WORK" ]] && rm -rf "$WORK"
}

start_control_plane() {
  local etcd_port peer_port api_port
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/collab-apiserver.XXXXXX")
  trap cleanup EXIT
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)

  log "starting etcd on 127.0.0.1:$etcd_port (data and log in $WORK)"
  etcd --data-dir "$WORK/etcd" --name check \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "check=http://127.0.0.1:$peer_port" >"$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!
  wait_for etcd "$ETCD_PID" "$WORK/etcd.log" curl -sf "http://127.0.0.1:$etcd_port/health"

  # A service-account signing key and a static admin token: enough for an
  # API server that only validates and admits.
  openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
  local token
  token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  echo "$token,admin,admin,system:masters" >"$WORK/tokens.csv"
  log "starting kube-apiserver $KUBERNETES_VERSION on 127.0.0.1:$api_port (log $WORK/apiserver.log)"
  "$KUBE_APISERVER" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$WORK/certs" \
    --token-auth-file "$WORK/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$WORK/sa.key" --service-account-signing-key-file "$WORK/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --endpoint-reconciler-type none \
    >"$WORK/apiserver.log" 2>&1 &
  APISERVER_PID=$!

  export KUBECONFIG="$WORK/kubeconfig"
  "$KUBECTL" config set-cluster check --server "https://127.0.0.1:$api_port" --insecure-skip-tls-verify=true >/dev/null
  "$KUBECTL" config set-credentials admin --token "$token" >/dev/null
  "$KUBECTL" config set-context check --cluster check --user admin >/dev/null
  "$KUBECTL" config use-context check >/dev/null
  wait_for kube-apiserver "$APISERVER_PID" "$WORK/apiserver.log" "$KUBECTL" get --raw /readyz
  log "kube-apiserver ready: $("$KUBECTL" version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
}

main() {
  [[ -x "$TOOLS/helm-$HELM_VERSION/helm" ]] || die "helm is not installed: run scripts/k8s-check.sh first"
  local helm="$TOOLS/helm-$HELM_VERSION/helm"
  build_kubernetes
  install_etcd
  start_control_plane

  local prometheus_operator scylla_operator
  prometheus_operator=$(go_module_dir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")
  scylla_operator=$(go_module_dir github.com/scylladb/scylla-operator "$SCYLLA_OPERATOR_VERSION")
  log "applying the CRDs (prometheus-operator $PROMETHEUS_OPERATOR_VERSION, scylla-operator $SCYLLA_OPERATOR_VERSION) and the namespaces"
  "$KUBECTL" apply --server-side \
    -f "$prometheus_operator/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
    -f "$prometheus_operator/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" \
    -f "$scylla_operator/pkg/api/scylla/v1/scylla.scylladb.com_scyllaclusters.yaml"
  "$KUBECTL" wait --for condition=Established --timeout 60s \
    crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com \
    crd/scyllaclusters.scylla.scylladb.com
  "$KUBECTL" create namespace collab
  "$KUBECTL" create namespace scylla

  local name
  for name in default production; do
    local args=()
    [[ $name == production ]] && args=(-f "$CHART/ci/production-values.yaml")
    "$helm" template collab "$CHART" --namespace collab "${args[@]}" 2>/dev/null >"$WORK/$name.yaml" \
      || die "helm template ($name values) failed"
    log "kubectl apply --dry-run=server ($name values)"
    "$KUBECTL" apply --dry-run=server --validate=strict -n collab -f "$WORK/$name.yaml" \
      || die "the API server refused the chart rendered with its $name values"
  done
  log "kubectl apply --dry-run=server (deploy/k8s/examples: the ScyllaCluster, Redis)"
  "$KUBECTL" apply --dry-run=server --validate=strict -f "$ROOT/deploy/k8s/examples/scyllacluster.yaml" \
    || die "the API server refused the example ScyllaCluster"
  "$KUBECTL" apply --dry-run=server --validate=strict -n collab -f "$ROOT/deploy/k8s/examples/redis.yaml" \
    || die "the API server refused the example Redis"
  log "the API server accepts every object"
}

main "$@"
