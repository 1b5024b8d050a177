#!/usr/bin/env bash
# Test Redis server harness: Debian's redis-server package, installed with
# apt when no redis-server is on the PATH.
#
#   scripts/redis-server.sh install            install when missing (idempotent);
#                                              prints the binary's path on stdout
#   scripts/redis-server.sh path               print the binary's path (exit 1 if not installed)
#   scripts/redis-server.sh start DIR [PORT]   start a server bound to loopback, its log in
#                                              DIR, no persistence; prints
#                                              "redis server ready on 127.0.0.1:PORT (pid N)"
#   scripts/redis-server.sh stop DIR           stop the server started in DIR (SIGTERM, then SIGKILL)
#   scripts/redis-server.sh kill DIR           SIGKILL it (crash test); `start DIR` restarts it
#   scripts/redis-server.sh status DIR         print host:port if running, exit 1 otherwise
#
# The Rust tests start their own servers (collab-ephemeral's `testsuite`
# feature) and find the binary through COLLAB_REDIS_SERVER, which
# scripts/test.sh sets from `install`.
#
# Environment:
#   REDIS_READY_TIMEOUT   seconds to wait for the server to answer PING, default 30
set -euo pipefail

log() { echo "redis-server: $*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=lib/server-process.sh
source "$(dirname "$0")/lib/server-process.sh"

# Redis 5 is the oldest whose scripts may read TIME and then write (the
# shared rate limits' script does).
MIN_MAJOR=5

find_binary() {
  command -v redis-server 2>/dev/null || { [[ -x /usr/bin/redis-server ]] && echo /usr/bin/redis-server; }
}

# Exit 0 if BIN is Redis MIN_MAJOR or newer ("Redis server v=7.0.15 sha=...").
recent_enough() {
  local version major
  version=$("$1" --version 2>/dev/null | sed -n 's/.* v=\([0-9][0-9.]*\).*/\1/p')
  major=${version%%.*}
  [[ -n "$major" ]] && (( major >= MIN_MAJOR ))
}

cmd_install() {
  local bin
  if bin=$(find_binary) && recent_enough "$bin"; then
    log "$("$bin" --version | cut -d' ' -f1-3) already installed"
  else
    command -v apt-get >/dev/null || die "no redis-server $MIN_MAJOR+ and no apt-get: install Redis by hand"
    local sudo=()
    (( EUID == 0 )) || sudo=(sudo)
    log "installing Debian's redis-server package"
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends redis-server >&2; then
      log "apt-get install failed; updating the package lists and trying again"
      "${sudo[@]}" apt-get update -q >&2
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends redis-server >&2 \
        || die "apt-get install redis-server failed"
    fi
    bin=$(find_binary) || die "installed, but no redis-server on the PATH"
    recent_enough "$bin" || die "$bin is older than Redis $MIN_MAJOR"
    log "installed $("$bin" --version | cut -d' ' -f1-3)"
  fi
  echo "$bin"
}

cmd_path() {
  local bin
  bin=$(find_binary) || die "redis-server is not installed: run scripts/redis-server.sh install"
  echo "$bin"
}

# Exit 0 if the server on 127.0.0.1:PORT answers PING.
redis_ping() {
  python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    s.settimeout(2)
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(7) == b"+PONG\r\n" else 1)
except Exception:
    sys.exit(1)
EOF
}

pid_of() { pid_in "$1/redis-server.pid"; } # DIR -> pid if alive

cmd_start() { # DIR [PORT]
  local dir=${1:-} port=${2:-}
  [[ -n "$dir" ]] || die "usage: start DIR [PORT]"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if [[ -z "$port" && -f "$dir/port" ]]; then port=$(cat "$dir/port"); fi
  [[ -n "$port" ]] || port=$(free_port)
  local pid bin
  if pid=$(pid_of "$dir"); then
    port=$(cat "$dir/port")
    log "already running in $dir"
  else
    bin=$(cmd_install)
    echo "$port" >"$dir/port"
    log "starting $bin on 127.0.0.1:$port (no persistence, log $dir/redis-server.log)"
    # setsid: own process group, so the caller's Ctrl-C / job control leaves it alone.
    setsid "$bin" --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" --appendonly no \
      --daemonize no --logfile "$dir/redis-server.log" </dev/null >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >"$dir/redis-server.pid"
  fi
  local deadline=$(( SECONDS + ${REDIS_READY_TIMEOUT:-30} ))
  until redis_ping "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -20 "$dir/redis-server.log" >&2 2>/dev/null || true
      die "redis-server exited before it was ready (log: $dir/redis-server.log)"
    fi
    (( SECONDS < deadline )) || die "not ready after ${REDIS_READY_TIMEOUT:-30}s (pid $pid)"
    sleep 0.1 # poll interval
  done
  echo "redis server ready on 127.0.0.1:$port (pid $pid)"
}

cmd_stop() { # DIR [signal]
  stop_pidfile "${1:?usage: stop DIR}/redis-server.pid" "${2:-TERM}" 10
}

cmd_status() {
  local dir=${1:?usage: status DIR} pid port
  pid=$(pid_of "$dir") || { echo "not running"; return 1; }
  port=$(cat "$dir/port")
  redis_ping "$port" || { echo "pid $pid running, port $port not ready"; return 1; }
  echo "127.0.0.1:$port"
}

case "${1:-}" in
  install) cmd_install ;;
  path) cmd_path ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  kill) shift; cmd_stop "${1:?usage: kill DIR}" KILL ;;
  status) shift; cmd_status "$@" ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
