#!/usr/bin/env bash
# A local collab cluster on loopback: NATS, Cassandra, Redis, 2 gateways and
# 3 room nodes, each a background process with its pid, port and log in DIR.
#
#   scripts/cluster.sh start DIR          start whatever of it is not running (idempotent),
#                                         wait until every process answers /readyz, print
#                                         the gateway URLs and how to mint a token
#   scripts/cluster.sh stop DIR           stop it all: gateways, room nodes, NATS, Redis,
#                                         and Cassandra if started here (SIGTERM, then SIGKILL)
#   scripts/cluster.sh status DIR         what runs, where, and whether it is ready
#   scripts/cluster.sh token DIR USER     print a token for USER (write access everywhere)
#   scripts/cluster.sh kill DIR NODE      SIGKILL one process (g1, r2, ...) to watch a
#                                         failover, or `redis` to watch the gateways go on
#                                         without it; `start DIR` starts it again
#
# Node ids are g1, g2 (gateways) and r1, r2, r3 (room nodes); each keeps its
# port across restarts. DIR holds DIR/NODE.{pid,port,log}, DIR/jwt-secret,
# DIR/nats (the NATS server), DIR/redis (the Redis the gateways share rate
# limits, revocations and presence through; COLLAB_REDIS of every process),
# DIR/cql (Cassandra, unless COLLAB_CLUSTER_CQL names one) and DIR/cql-addr
# (the CQL server in use).
#
# Environment:
#   COLLAB_CLUSTER_CQL        host:port of a running ScyllaDB/Cassandra to use instead of
#                             starting one in DIR/cql
#   COLLAB_CLUSTER_KEYSPACE   default collab_local
#   COLLAB_CLUSTER_PROFILE    debug (default: quicker to build) or release
#   COLLAB_CLUSTER_GATEWAYS   default 2
#   COLLAB_CLUSTER_ROOM_NODES default 3
#   COLLAB_CLUSTER_READY_TIMEOUT  seconds to wait for each /readyz, default 120
#   CARGO_TARGET_DIR          where collab is built, default $HOME/.cache/collab/target
#                             (shared with scripts/test.sh)
#   COLLAB_*                  passed on to every process (e.g. COLLAB_CLUSTER__MEMBER_TTL_MS,
#                             COLLAB_ROOMS__SNAPSHOT_EVERY_OPS, RUST_LOG for the log level)
#
# See docs/local-cluster.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GATEWAYS="${COLLAB_CLUSTER_GATEWAYS:-2}"
ROOM_NODES="${COLLAB_CLUSTER_ROOM_NODES:-3}"
KEYSPACE="${COLLAB_CLUSTER_KEYSPACE:-collab_local}"
PROFILE="${COLLAB_CLUSTER_PROFILE:-debug}"
READY_TIMEOUT="${COLLAB_CLUSTER_READY_TIMEOUT:-120}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/collab/target}"

log() { echo "cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=lib/server-process.sh
source "$ROOT/scripts/lib/server-process.sh"

usage() { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

node_ids() {
  local i
  for (( i = 1; i <= GATEWAYS; i++ )); do echo "g$i"; done
  for (( i = 1; i <= ROOM_NODES; i++ )); do echo "r$i"; done
}

role_of() { # NODE -> gateway | room-node
  case "$1" in
    g*) echo gateway ;;
    r*) echo room-node ;;
    *) die "unknown node $1 (g1, g2, ... or r1, r2, ...)" ;;
  esac
}

# Exit 0 if GET URL answers 200.
http_ok() {
  python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

cql_addr() { # DIR -> host:port of the CQL server in use (recorded by start)
  cat "$1/cql-addr"
}

redis_url() { # DIR -> the URL of the cluster's Redis
  echo "redis://127.0.0.1:$(cat "$1/redis/port")"
}

build() { # -> path of the collab binary
  local -a flags=(build -p collab --bin collab --manifest-path "$ROOT/Cargo.toml")
  case "$PROFILE" in
    debug) ;;
    release) flags+=(--release) ;;
    *) die "COLLAB_CLUSTER_PROFILE must be debug or release, not $PROFILE" ;;
  esac
  log "building collab ($PROFILE build, target dir $CARGO_TARGET_DIR)"
  cargo "${flags[@]}" >&2 || die "cargo build failed"
  echo "$CARGO_TARGET_DIR/$PROFILE/collab"
}

start_node() { # DIR NODE BIN
  local dir=$1 node=$2 bin=$3 pid port role
  role=$(role_of "$node")
  if pid=$(pid_in "$dir/$node.pid"); then
    log "$node already running (pid $pid, port $(cat "$dir/$node.port"))"
    return 0
  fi
  if [[ -f "$dir/$node.port" ]]; then port=$(cat "$dir/$node.port"); else port=$(free_port); fi
  echo "$port" >"$dir/$node.port"
  log "starting $role $node on 127.0.0.1:$port (log $dir/$node.log)"
  # setsid: own process group, so the caller's Ctrl-C / job control leaves it alone.
  COLLAB_JWT_SECRET="$(cat "$dir/jwt-secret")" COLLAB_REDIS="$(redis_url "$dir")" \
    setsid "$bin" "$role" \
    --listen "127.0.0.1:$port" \
    --nats "nats://127.0.0.1:$(cat "$dir/nats/port")" \
    --node-id "$node" \
    --store "cql://$(cql_addr "$dir")/$KEYSPACE" \
    </dev/null >>"$dir/$node.log" 2>&1 &
  echo $! >"$dir/$node.pid"
}

wait_ready() { # DIR NODE
  local dir=$1 node=$2 pid port deadline=$(( SECONDS + READY_TIMEOUT ))
  port=$(cat "$dir/$node.port")
  until http_ok "http://127.0.0.1:$port/readyz"; do
    if ! pid=$(pid_in "$dir/$node.pid"); then
      tail -20 "$dir/$node.log" >&2 || true
      die "$node exited before it was ready (log $dir/$node.log)"
    fi
    (( SECONDS < deadline )) || die "$node (pid $pid) not ready after ${READY_TIMEOUT}s (log $dir/$node.log)"
    sleep 0.2 # poll interval
  done
  log "$node ready"
}

cmd_start() { # DIR
  local dir=${1:-}
  [[ -n "$dir" ]] || usage
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  command -v python3 >/dev/null || die "python3 not found"

  bash "$ROOT/scripts/nats-server.sh" start "$dir/nats" >&2
  bash "$ROOT/scripts/redis-server.sh" start "$dir/redis" >&2
  if [[ -n "${COLLAB_CLUSTER_CQL:-}" ]]; then
    log "using the CQL server at $COLLAB_CLUSTER_CQL (COLLAB_CLUSTER_CQL)"
    echo "$COLLAB_CLUSTER_CQL" >"$dir/cql-addr"
  elif [[ -f "$dir/cql-addr" && ! -d "$dir/cql" ]]; then
    # Started with COLLAB_CLUSTER_CQL before: the rooms are there.
    log "using the CQL server at $(cql_addr "$dir") (from $dir/cql-addr)"
  else
    bash "$ROOT/scripts/cql-server.sh" start "$dir/cql" >&2
    echo "127.0.0.1:$(cat "$dir/cql/port")" >"$dir/cql-addr"
  fi
  local bin; bin=$(build)

  if [[ ! -s "$dir/jwt-secret" ]]; then
    log "generating a JWT secret into $dir/jwt-secret"
    (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$dir/jwt-secret")
  fi
  echo "$bin" >"$dir/collab-bin"

  # The first room node creates the keyspace and tables; the others start
  # once it is ready, so they do not race it with schema changes.
  start_node "$dir" r1 "$bin"
  wait_ready "$dir" r1
  local node port
  for node in $(node_ids); do
    [[ "$node" == r1 ]] || start_node "$dir" "$node" "$bin"
  done
  for node in $(node_ids); do wait_ready "$dir" "$node"; done

  echo "collab cluster ready in $dir ($PROFILE build)"
  for node in $(node_ids); do
    if [[ "$node" == g* ]]; then
      port=$(cat "$dir/$node.port")
      echo "  gateway $node: http://127.0.0.1:$port  (WebSocket ws://127.0.0.1:$port/v1/ws)"
    fi
  done
  echo "  NATS: nats://127.0.0.1:$(cat "$dir/nats/port")   store: cql://$(cql_addr "$dir")/$KEYSPACE   redis: $(redis_url "$dir")"
  echo "  a token: bash scripts/cluster.sh token $dir ann"
  echo "           (or: COLLAB_JWT_SECRET=\$(cat $dir/jwt-secret) $bin token --user ann)"
  echo "  revoke:  COLLAB_REDIS=$(redis_url "$dir") $bin token revoke --user ann"
}

cmd_stop() { # DIR
  local dir=${1:-} node
  [[ -n "$dir" && -d "$dir" ]] || die "usage: stop DIR (an existing cluster dir)"
  dir=$(cd "$dir" && pwd)
  # Gateways first (clients get 1001), then room nodes (each drains its
  # rooms and leaves), then what they depend on.
  for node in $(node_ids); do
    [[ -f "$dir/$node.pid" ]] || continue
    log "stopping $node"
    stop_pidfile "$dir/$node.pid" TERM 30
  done
  if [[ -d "$dir/nats" ]]; then bash "$ROOT/scripts/nats-server.sh" stop "$dir/nats"; fi
  if [[ -d "$dir/redis" ]]; then bash "$ROOT/scripts/redis-server.sh" stop "$dir/redis"; fi
  if [[ -d "$dir/cql" ]]; then bash "$ROOT/scripts/cql-server.sh" stop "$dir/cql"; fi
}

cmd_status() { # DIR
  local dir=${1:-} node pid port state all_ready=0
  [[ -n "$dir" && -d "$dir" ]] || die "usage: status DIR (an existing cluster dir)"
  dir=$(cd "$dir" && pwd)
  # The status commands print "not running" themselves.
  echo "nats: $(bash "$ROOT/scripts/nats-server.sh" status "$dir/nats" 2>/dev/null || true)"
  echo "redis: $(bash "$ROOT/scripts/redis-server.sh" status "$dir/redis" 2>/dev/null || true)"
  if [[ -d "$dir/cql" ]]; then
    echo "cql:  $(bash "$ROOT/scripts/cql-server.sh" status "$dir/cql" 2>/dev/null || true)"
  elif [[ -f "$dir/cql-addr" ]]; then
    echo "cql:  $(cql_addr "$dir") (not started here)"
  fi
  for node in $(node_ids); do
    if pid=$(pid_in "$dir/$node.pid"); then
      port=$(cat "$dir/$node.port")
      if http_ok "http://127.0.0.1:$port/readyz"; then state=ready; else state="not ready"; all_ready=1; fi
      echo "$node:   $(role_of "$node") pid $pid http://127.0.0.1:$port $state"
    else
      echo "$node:   $(role_of "$node") not running"
      all_ready=1
    fi
  done
  return "$all_ready"
}

cmd_token() { # DIR USER
  local dir=${1:-} user=${2:-}
  [[ -n "$dir" && -n "$user" ]] || die "usage: token DIR USER"
  [[ -s "$dir/jwt-secret" && -s "$dir/collab-bin" ]] || die "no cluster started in $dir"
  COLLAB_JWT_SECRET="$(cat "$dir/jwt-secret")" "$(cat "$dir/collab-bin")" token --user "$user"
}

cmd_kill() { # DIR NODE
  local dir=${1:-} node=${2:-}
  [[ -n "$dir" && -n "$node" ]] || die "usage: kill DIR NODE"
  if [[ "$node" == redis ]]; then
    bash "$ROOT/scripts/redis-server.sh" kill "$dir/redis"
    return
  fi
  role_of "$node" >/dev/null
  stop_pidfile "$dir/$node.pid" KILL 5
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  token) shift; cmd_token "$@" ;;
  kill) shift; cmd_kill "$@" ;;
  *) usage ;;
esac
