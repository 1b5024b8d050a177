#!/usr/bin/env bash
# Checks the Kubernetes deployment offline, with no cluster and no network
# but the package registries:
#
#   - helm lint --strict and helm template of deploy/k8s/charts/collab, with
#     its default values and with ci/production-values.yaml;
#   - every rendered object against the Kubernetes JSON schemas of the
#     oldest and newest Kubernetes the chart supports (kubeconform, strict,
#     local schemas from PyPI's kubernetes-validate wheel);
#   - the ServiceMonitors, the PrometheusRule and the example ScyllaCluster
#     against JSON schemas generated here from the operators' own CRDs
#     (their Go modules: prometheus-operator's example/prometheus-operator-crd,
#     scylla-operator's pkg/api/scylla/v1);
#   - kube-score, every exception explained below;
#   - what the chart must never lose (scripts/lib/k8s_check.py): secure pod
#     defaults, no service-account token, the metrics port internal only,
#     room nodes named by pod, rolled one at a time and given longer than
#     their drain; values.schema.json against config/collab.toml; the
#     rendered settings loaded by the real server (`collab token`); the
#     Dockerfile against the workspace and the chart.
#
# Tools are installed once into ~/.cache/collab/tools (COLLAB_TOOLS): helm,
# kubeconform and kube-score with `go install` (helm takes about 3 minutes
# the first time), the schemas with pip and `go mod download`. A run with
# everything cached takes seconds. Needs go, python3 and cargo.
#
#   bash scripts/k8s-check.sh
#
# See docs/DEPLOY.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CHART="$ROOT/deploy/k8s/charts/collab"
PRODUCTION_VALUES="$CHART/ci/production-values.yaml"
TOOLS="${COLLAB_TOOLS:-$HOME/.cache/collab/tools}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/collab/target}"

HELM_VERSION=v4.3.2
KUBECONFORM_VERSION=v0.8.0
KUBE_SCORE_VERSION=v1.20.0
KUBERNETES_VALIDATE_VERSION=1.37.0
PYYAML_VERSION=6.0.3
PROMETHEUS_OPERATOR_VERSION=v0.85.0
SCYLLA_OPERATOR_VERSION=v1.18.0
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and
# the newest the schemas know.
KUBERNETES_VERSIONS=(1.29.0 1.37.0)

log() { echo "k8s-check: $*"; }
die() { echo "k8s-check: FAILED: $*" >&2; exit 1; }
step() { printf '\n--> %s\n' "$*"; }

# --- tools ---------------------------------------------------------------

go_tool() { # NAME MODULE VERSION -> path of the binary, installed if missing
  local name=$1 module=$2 version=$3 dir="$TOOLS/$1-$3"
  if [[ ! -x "$dir/$name" ]]; then
    command -v go >/dev/null || die "go is needed to install $name (go install $module@$version)"
    log "installing $name $version (go install $module@$version) into $dir" >&2
    GOBIN="$dir" GOFLAGS=-buildvcs=false go install "$module@$version" >&2 \
      || die "go install $module@$version failed"
  fi
  echo "$dir/$name"
}

go_module_dir() { # MODULE VERSION -> its directory in the Go module cache
  local dir
  dir=$(cd "$TOOLS" && GOFLAGS=-mod=mod go mod download -json "$1@$2" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') \
    || die "go mod download $1@$2 failed"
  echo "$dir"
}

install_tools() {
  mkdir -p "$TOOLS"
  HELM=$(go_tool helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION")
  KUBECONFORM=$(go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION")
  KUBE_SCORE=$(go_tool kube-score github.com/zegl/kube-score/cmd/kube-score "$KUBE_SCORE_VERSION")
  log "helm $HELM_VERSION, kubeconform $KUBECONFORM_VERSION, kube-score $KUBE_SCORE_VERSION"

  VENV="$TOOLS/k8s-check-venv"
  PYTHON="$VENV/bin/python"
  if ! "$PYTHON" -c "import yaml" 2>/dev/null; then
    log "installing PyYAML $PYYAML_VERSION (pip) into $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
    "$VENV/bin/pip" install -q --disable-pip-version-check "pyyaml==$PYYAML_VERSION" \
      || die "pip install pyyaml==$PYYAML_VERSION failed"
  fi

  KUBE_SCHEMAS="$TOOLS/kubernetes-schemas-$KUBERNETES_VALIDATE_VERSION"
  if [[ ! -f "$KUBE_SCHEMAS/done-${KUBERNETES_VERSIONS[*]// /-}" ]]; then
    local downloads="$TOOLS/downloads"
    log "fetching kubernetes-validate $KUBERNETES_VALIDATE_VERSION (pip download) for its Kubernetes JSON schemas"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary :all: \
      -d "$downloads" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
      || die "pip download kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed"
    rm -rf "$KUBE_SCHEMAS"
    "$PYTHON" "$ROOT/scripts/lib/k8s_check.py" kube-schemas \
      "$downloads/kubernetes_validate-$KUBERNETES_VALIDATE_VERSION-py3-none-any.whl" \
      "$KUBE_SCHEMAS" "${KUBERNETES_VERSIONS[@]}"
    touch "$KUBE_SCHEMAS/done-${KUBERNETES_VERSIONS[*]// /-}"
  fi

  CRD_SCHEMAS="$TOOLS/crd-schemas-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION-scylla-operator-$SCYLLA_OPERATOR_VERSION"
  if [[ ! -f "$CRD_SCHEMAS/done" ]]; then
    local prometheus_operator scylla_operator
    log "fetching the CRDs of prometheus-operator $PROMETHEUS_OPERATOR_VERSION and scylla-operator $SCYLLA_OPERATOR_VERSION (go mod download)"
    prometheus_operator=$(go_module_dir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")
    scylla_operator=$(go_module_dir github.com/scylladb/scylla-operator "$SCYLLA_OPERATOR_VERSION")
    rm -rf "$CRD_SCHEMAS"
    "$PYTHON" "$ROOT/scripts/lib/k8s_check.py" crd-schemas "$CRD_SCHEMAS" \
      "$prometheus_operator/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
      "$prometheus_operator/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" \
      "$scylla_operator/pkg/api/scylla/v1/scylla.scylladb.com_scyllaclusters.yaml"
    touch "$CRD_SCHEMAS/done"
  fi
}

# --- checks --------------------------------------------------------------

helm_quiet() { # helm, without its note on every symlinked file it follows
  "$HELM" "$@" 2> >(grep -v 'found symbolic link in path' >&2)
}

check_monitoring_files() {
  # files/ holds symlinks to deploy/k8s/monitoring: the alert rules and the
  # dashboard are written and tested there, and the chart packages them.
  local link
  for link in "$CHART"/files/*; do
    [[ -s "$link" ]] || die "$link does not lead to a file ($(readlink "$link")): the chart's PrometheusRule and dashboard read deploy/k8s/monitoring"
  done
  log "chart files: $(cd "$CHART/files" && for f in *; do printf '%s -> %s  ' "$f" "$(readlink "$f")"; done)"
}

render() { # NAME [HELM ARGS...]: lint and render into $WORK/NAME.yaml
  local name=$1; shift
  helm_quiet lint --strict "$CHART" "$@" || die "helm lint --strict ($name values) failed"
  helm_quiet template collab "$CHART" --namespace collab "$@" >"$WORK/$name.yaml" \
    || die "helm template ($name values) failed"
  log "$name values: $(grep -c '^kind:' "$WORK/$name.yaml") objects rendered"
}

refuses() { # WHY [HELM ARGS...]: the chart must refuse to render
  local why=$1 out; shift
  if out=$("$HELM" template collab "$CHART" "$@" 2>&1); then
    die "helm template accepted $why"
  fi
  log "refused, as it should: $why ($(grep -m1 -o 'Error: .*' <<<"$out" | cut -c1-110))"
}

kubeconform_all() {
  local version
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    # Strict: unknown fields are errors; a kind with no schema is an error.
    "$KUBECONFORM" -strict -summary -kubernetes-version "$version" \
      -schema-location "$KUBE_SCHEMAS/v$version/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
      -schema-location "$CRD_SCHEMAS/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
      "$WORK"/*.yaml "$ROOT"/deploy/k8s/examples/*.yaml \
      || die "kubeconform (Kubernetes $version) found invalid objects"
  done
}

kube_score_all() {
  local file
  for file in "$WORK"/*.yaml; do
    # Exceptions, each a choice the chart makes on purpose:
    # --ignore-container-cpu-limit: CPU limits make the kernel throttle a
    #   process that used its quota, which stalls every socket of a
    #   latency-bound server; pods request CPU (for scheduling and the HPA)
    #   and have memory limits.
    # container-image-pull-policy (wants Always): images are pinned by
    #   release tag or digest; Always would make every restart depend on
    #   the registry.
    # container-ephemeral-storage-request-and-limit: neither role writes
    #   to disk (read-only root filesystem, no volumes); the only ephemeral
    #   storage is the container log, which the kubelet rotates.
    # The optional *-requests-equal-limits checks stay off for the same
    #   reason as the CPU limit (Burstable pods on purpose); the optional
    #   seccomp and ports checks are on. --disable-ignore-checks-annotations
    #   keeps any template from skipping a check quietly.
    "$KUBE_SCORE" score --output-format ci --kubernetes-version v1.29 --exit-one-on-warning \
      --disable-ignore-checks-annotations \
      --enable-optional-test container-seccomp-profile \
      --enable-optional-test container-ports-check \
      --ignore-container-cpu-limit \
      --ignore-test container-image-pull-policy \
      --ignore-test container-ephemeral-storage-request-and-limit \
      "$file" >"$WORK/kube-score.out" \
      || { grep -v '^\[OK\]' "$WORK/kube-score.out" >&2; die "kube-score found problems in $(basename "$file")"; }
    log "kube-score $(basename "$file"): $(grep -c '^\[OK\]' "$WORK/kube-score.out") checks OK, nothing else but checks skipped on purpose"
  done
}

server_config() {
  local bin="$CARGO_TARGET_DIR/debug/collab"
  log "building collab (cargo build -p collab --bin collab --locked; nothing to do after the tests)"
  cargo build -q -p collab --bin collab --locked --manifest-path "$ROOT/Cargo.toml" \
    || die "cargo build -p collab failed"
  "$PYTHON" "$ROOT/scripts/lib/k8s_check.py" server-config "$bin" "$WORK/default.yaml"
  "$PYTHON" "$ROOT/scripts/lib/k8s_check.py" server-config "$bin" "$WORK/production.yaml"
  "$PYTHON" "$ROOT/scripts/lib/k8s_check.py" server-config "$bin" "$WORK/webhooks.yaml"
}

main() {
  local started=$SECONDS
  step "tools (cached in $TOOLS)"
  install_tools

  WORK=$(mktemp -d "${TMPDIR:-/tmp}/collab-k8s-check.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT

  step "helm lint --strict and helm template (default and production values, and two variants)"
  check_monitoring_files
  render default
  render production -f "$PRODUCTION_VALUES"
  # The branches neither file takes: a Secret made by the chart, a fixed
  # number of gateways behind a LoadBalancer, the connections metric, a
  # JWKS.
  render trial --set auth.jwtSecret=only-for-trying-it-out \
    --set gateway.autoscaling.enabled=false --set gateway.service.type=LoadBalancer
  render connections -f "$PRODUCTION_VALUES" --set gateway.autoscaling.targetConnectionsPerPod=5000
  # Public keys only: a JWKS from a ConfigMap, no HS256 secret.
  render jwks --set auth.existingSecret= --set auth.jwksConfigMap=collab-jwks
  # Webhooks: a Secret's file mounted into the room nodes.
  render webhooks -f "$PRODUCTION_VALUES" --set webhooks.existingSecret=collab-webhooks
  refuses "a termination grace period shorter than the drain" --set config.drain_grace_secs=60
  refuses "a setting config/collab.toml does not have" --set config.gateway.no_such_setting=1
  refuses "an embedded store" --set store.url=embedded
  refuses "gateways without any key" --set auth.existingSecret=
  refuses "two JWKS" --set auth.jwksConfigMap=collab-jwks --set config.auth.jwks=https://id.example.com/jwks.json

  step "kubeconform: every object against the Kubernetes ${KUBERNETES_VERSIONS[*]} and CRD schemas"
  kubeconform_all

  step "kube-score"
  kube_score_all

  step "what the chart must never lose (scripts/lib/k8s_check.py)"
  local file
  for file in "$WORK"/*.yaml; do
    "$PYTHON" "$ROOT/scripts/lib/k8s_check.py" rendered "$file"
  done
  "$PYTHON" "$ROOT/scripts/lib/k8s_check.py" values-schema "$CHART/values.schema.json" "$ROOT/config/collab.toml"
  "$PYTHON" "$ROOT/scripts/lib/k8s_check.py" dockerfile "$ROOT/Dockerfile" "$ROOT/Cargo.toml" "$CHART/values.yaml"
  server_config

  log "all Kubernetes checks passed in $(( SECONDS - started )) s"
}

main "$@"
