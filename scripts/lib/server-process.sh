# Sourced by the scripts that start servers (cql-server.sh, nats-server.sh,
# redis-server.sh, cluster.sh, bench-load.sh, instructions.sh): a test server
# runs in the background with its pid in a file in its directory. The
# sourcing script defines `log` (and `die`, for wait_answer).

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_answer URL PID SECS: polls until `curl URL` connects (any HTTP
# answer: a WebSocket-only server answers too), at most SECS seconds, and
# gives up at once if process PID exits.
wait_answer() {
  local url=$1 pid=$2 secs=$3 rc
  local deadline=$((SECONDS + secs))
  while :; do
    rc=0
    curl -s -o /dev/null "$url" || rc=$?
    [[ $rc -ne 7 ]] && return 0
    kill -0 "$pid" 2>/dev/null || die "server exited during start"
    ((SECONDS < deadline)) || die "no answer from $url"
    sleep 0.2 # poll interval
  done
}

# pid_in PIDFILE: prints the pid if that process is alive.
pid_in() {
  local f=$1 pid
  [[ -f "$f" ]] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# stop_pidfile PIDFILE SIGNAL GRACE_SECS: sends SIGNAL, waits for the
# process to exit (SIGKILL after GRACE_SECS) and removes the pid file.
stop_pidfile() {
  local f=$1 sig=$2 grace=$3 pid
  if ! pid=$(pid_in "$f"); then
    log "no running server in $(dirname "$f")"
    rm -f "$f"
    return 0
  fi
  log "sending SIG$sig to $pid"
  kill "-$sig" "$pid" 2>/dev/null || true
  local deadline=$(( SECONDS + grace ))
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS >= deadline )); then
      log "still alive after ${grace}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1 # poll interval
  done
  rm -f "$f"
  log "stopped $pid"
}
