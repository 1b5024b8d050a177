#!/usr/bin/env bash
# Checks the HTTP API against its contract, docs/openapi.json: starts a
# `collab serve` in dev mode on a free port in a temporary directory, mints
# a dev token with the admin and service scopes, and runs schemathesis
# against the document the server serves (GET /v1/openapi.json) with a
# bounded number of examples per operation. It fails on any 5xx, on any
# status, content type or body the document does not allow (every error must
# be the protocol's {"error":{"code","message"}}), and on anything that
# crashes the server. About a minute.
#
#   scripts/openapi-check.sh            run the check
#   scripts/openapi-check.sh install    install schemathesis (idempotent)
#
# schemathesis comes from PyPI, into a venv in the cache. The collab binary
# is built with `cargo build -p collab` unless COLLAB_BIN names one.
#
# Environment:
#   COLLAB_CACHE               default $HOME/.cache/collab
#   COLLAB_BIN                 a collab binary to test instead of building one
#   OPENAPI_CHECK_EXAMPLES     examples per operation and phase (default 60)
#   OPENAPI_CHECK_SEED         schemathesis's seed (default: a random one,
#                              printed so a failure can be replayed)
#
# See docs/PROTOCOL.md (HTTP API) and docs/adr/0014-openapi-document.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${COLLAB_CACHE:-$HOME/.cache/collab}"
PYTHON_PACKAGES=(schemathesis==4.32.5)
VENV="$CACHE/openapi-check-venv"
EXAMPLES="${OPENAPI_CHECK_EXAMPLES:-60}"

log() { echo "openapi-check: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib/server-process.sh
source scripts/lib/server-process.sh
# shellcheck source=scripts/lib/python-venv.sh
source scripts/lib/python-venv.sh

install_schemathesis() {
  install_venv "$VENV" "${PYTHON_PACKAGES[@]}"
}

collab_binary() {
  if [[ -n "${COLLAB_BIN:-}" ]]; then
    echo "$COLLAB_BIN"
    return
  fi
  log "building collab (cargo build -p collab)"
  cargo build -q -p collab >&2
  local target
  target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  echo "$target/debug/collab"
}

cmd_check() {
  install_schemathesis
  local collab dir port pid token seed
  collab=$(collab_binary)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/collab-openapi.XXXXXX")
  port=$(free_port)
  # Dev mode (no secret), rate limits out of the way so that the examples
  # reach the handlers instead of a 429.
  log "starting collab serve on 127.0.0.1:$port in $dir"
  env -u COLLAB_JWT_SECRET -u COLLAB_STORE RUST_LOG=warn \
    COLLAB_GATEWAY__RATE_LIMITS__HTTP_PER_SEC=100000 \
    COLLAB_GATEWAY__RATE_LIMITS__HTTP_BURST=100000 \
    COLLAB_GATEWAY__RATE_LIMITS__ROOMS_PER_MIN=100000 \
    COLLAB_GATEWAY__RATE_LIMITS__ROOMS_BURST=100000 \
    COLLAB_GATEWAY__RATE_LIMITS__OPS_PER_SEC=100000 \
    COLLAB_GATEWAY__RATE_LIMITS__OPS_BURST=100000 \
    "$collab" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/serve.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/pid"
  # shellcheck disable=SC2064 # expand now: the values are this run's
  trap "stop_pidfile '$dir/pid' TERM 10 >/dev/null 2>&1 || true; rm -rf '$dir'" EXIT
  wait_answer "http://127.0.0.1:$port/healthz" "$pid" 60
  token=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/dev/token" \
    -d '{"user":"openapi-check","scope":"admin service"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])') ||
    die "no dev token from the server"
  seed="${OPENAPI_CHECK_SEED:-$RANDOM$RANDOM}"
  log "schemathesis: $EXAMPLES examples per operation, seed $seed"
  local rc=0
  # From the run's directory: schemathesis keeps a cache in the current
  # directory, which belongs there and not in the clone.
  (cd "$dir" && "$VENV/bin/schemathesis" run "http://127.0.0.1:$port/v1/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$EXAMPLES" --seed "$seed" \
    --request-timeout 10 --no-color --output-truncate false \
    --report junit --report-dir "$dir/report") || rc=$?
  kill -0 "$pid" 2>/dev/null || { cat "$dir/serve.log" >&2; die "the server died during the run"; }
  if [[ $rc -ne 0 ]]; then
    tail -n 50 "$dir/serve.log" >&2
    die "the API does not keep its contract (seed $seed; replay with OPENAPI_CHECK_SEED=$seed)"
  fi
  if grep -q "panicked" "$dir/serve.log"; then
    cat "$dir/serve.log" >&2
    die "the server panicked during the run"
  fi
  log "ok: the API keeps docs/openapi.json"
}

case "${1:-check}" in
  install) install_schemathesis ;;
  check) cmd_check ;;
  *) die "unknown command: $1 (check, install)" ;;
esac
