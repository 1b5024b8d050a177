#!/usr/bin/env bash
# The Centrifugo-protocol server that the load benchmarks compare against
# (load-tests/centrifugo: a small server on centrifuge, the Go library
# Centrifugo runs on; see its main.go for why not the Centrifugo binary).
#
#   scripts/centrifugo.sh install              build it into the cache (idempotent)
#   scripts/centrifugo.sh start ADDR [CPUS]    start it on ADDR (e.g. 127.0.0.1:18000),
#                                              pinned to CPUS with taskset if given;
#                                              prints "centrifugo ready on ADDR (pid N)"
#   scripts/centrifugo.sh stop PID             SIGTERM, then SIGKILL
#
# Environment:
#   COLLAB_CACHE               default $HOME/.cache/collab (Go module cache, binary)
#   CENTRIFUGO_READY_TIMEOUT   seconds to wait for /health, default 30
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/load-tests/centrifugo"
CACHE="${COLLAB_CACHE:-$HOME/.cache/collab}"
BIN="$CACHE/bin/centrifuge-bench"
export GOPATH="$CACHE/go" GOCACHE="$CACHE/go-build" GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { echo "centrifugo: $*" >&2; }
die() { log "error: $*"; exit 1; }

cmd_install() {
  command -v go >/dev/null || die "go not found"
  # Rebuild only when the source is newer than the binary.
  if [[ -x "$BIN" && "$BIN" -nt "$SRC/main.go" && "$BIN" -nt "$SRC/go.mod" ]]; then
    log "already built: $BIN"
    return 0
  fi
  mkdir -p "$(dirname "$BIN")"
  log "building $SRC"
  (cd "$SRC" && go build -o "$BIN" .)
  log "built $BIN"
}

cmd_start() {
  local addr="${1:?usage: start ADDR [CPUS]}" cpus="${2:-}"
  [[ -x "$BIN" ]] || cmd_install
  local logfile
  logfile="$(mktemp -t centrifugo-XXXXXX.log)"
  local pin=()
  [[ -n "$cpus" ]] && pin=(taskset -c "$cpus")
  "${pin[@]}" "$BIN" -config "$SRC/config.json" -listen "$addr" >"$logfile" 2>&1 &
  local pid=$!
  local deadline=$((SECONDS + ${CENTRIFUGO_READY_TIMEOUT:-30}))
  until curl -fs "http://$addr/health" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { cat "$logfile" >&2; die "exited during start"; }
    ((SECONDS < deadline)) || { kill "$pid"; die "not ready after ${CENTRIFUGO_READY_TIMEOUT:-30} s"; }
    sleep 0.2 # poll interval
  done
  echo "centrifugo ready on $addr (pid $pid)"
}

cmd_stop() {
  local pid="${1:?usage: stop PID}"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1 # poll interval
  done
  kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) sed -n '2,15p' "$0"; exit 64 ;;
esac
