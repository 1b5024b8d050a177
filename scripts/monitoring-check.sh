#!/usr/bin/env bash
# Offline checks of the alerts and the dashboard in deploy/k8s/monitoring/:
# `promtool check rules` and `promtool test rules` (unit tests of every
# alert), then scripts/lib/monitoring_check.py: every alert has a runbook
# section and tests that fire and stay silent, the dashboard's structure,
# every dashboard query parses, and metrics-used.txt lists the metric names
# they use.
#
#   scripts/monitoring-check.sh                  run every check
#   scripts/monitoring-check.sh --write-metrics  the same, rewriting metrics-used.txt
#   scripts/monitoring-check.sh install          install what the checks need (idempotent);
#                                                prints the prometheus binary's path on stdout
#
# promtool and prometheus come from Debian's `prometheus` package (installed
# with apt when promtool is missing; its service is not started); the
# checker's Python packages (PyYAML, promql-parser) from PyPI, into a venv
# in the cache. scripts/test.sh runs the checks and hands the prometheus
# path to the end-to-end test (tests/tests/prometheus.rs) as
# COLLAB_PROMETHEUS.
#
# Environment:
#   COLLAB_CACHE   default $HOME/.cache/collab
#
# See docs/operations.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${COLLAB_CACHE:-$HOME/.cache/collab}"
PYTHON_PACKAGES=(PyYAML==6.0.2 promql-parser==0.11.0)
VENV="$CACHE/monitoring-check-venv"

log() { echo "monitoring-check: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib/python-venv.sh
source scripts/lib/python-venv.sh

install_prometheus() {
  if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    log "found $(promtool --version 2>&1 | head -n 1)"
    return
  fi
  log "promtool is missing: installing Debian's prometheus package (apt-get)"
  local sudo=()
  [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq >&2
  # policy-rc.d or no init system: the package's own service stays off;
  # the tests run their own prometheus.
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    prometheus >&2 || die "apt-get install prometheus failed"
  command -v promtool >/dev/null 2>&1 || die "installed, but promtool is not on PATH"
  log "installed $(promtool --version 2>&1 | head -n 1)"
}

install_python() {
  install_venv "$VENV" "${PYTHON_PACKAGES[@]}"
}

cmd_install() {
  install_prometheus
  install_python
  command -v prometheus
}

cmd_check() { # [--write-metrics]
  cmd_install >/dev/null
  local rules=deploy/k8s/monitoring/alerts.yaml
  echo "promtool check rules $rules"
  promtool check rules "$rules"
  echo "promtool test rules deploy/k8s/monitoring/tests/*.yaml"
  promtool test rules deploy/k8s/monitoring/tests/*.yaml
  echo "scripts/lib/monitoring_check.py $*"
  "$VENV/bin/python" scripts/lib/monitoring_check.py --promtool "$(command -v promtool)" "$@"
}

case "${1:-}" in
  "") cmd_check ;;
  --write-metrics) cmd_check --write-metrics ;;
  install) cmd_install ;;
  *) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
