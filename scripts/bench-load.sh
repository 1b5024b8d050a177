#!/usr/bin/env bash
# Load benchmarks of docs/BENCHMARKS.md: the same scenarios against
# `collab serve`, the bare relay and the Centrifugo-protocol server, one at a
# time, the server pinned to one core and the generator to another.
#
#   scripts/bench-load.sh [SCENARIO...]
#
# Scenarios (default: all, in this order):
#   boards      capacity search over BOARDS_STEPS on every target
#   classroom   capacity search over CLASSROOM_STEPS on every target
#   classroom-rate  one classroom, every rate stepped over CLASSROOM_RATE_STEPS (%)
#   chat        CHAT_CHANNELS channels × 20 users, 1 message/s each (900: the 18,000
#               connections one server process holds under a 20,000 open-file limit)
#   idle        IDLE_CONNECTIONS idle connections on collab serve; RSS per connection
#   late-join   a board of LATE_JOIN_OPS ops; time to joined and to full state
#   publish     ops posted over HTTP by PUBLISH_SENDERS service users at once, into
#               1 room and into 100, one op per request and lists of 100; ops/s and
#               request latency. Not in the default list
#   ack         boards at ACK_BOARDS boards on collab serve (ack latency at half capacity)
#   profile     boards at ACK_BOARDS boards on collab serve under `perf record`;
#               writes profile-collab.txt (needs perf) and, with inferno
#               installed (cargo install inferno), flamegraph-collab.svg
#   rounds      ROUNDS_SCENARIO at every size of ROUNDS_STEPS on every target, each
#               run on a fresh server, the targets back to back (their order
#               rotating), the whole repeated ROUNDS times, so that the machine's
#               drift falls on every target alike; `collab-load rounds` then says
#               per size how many rounds passed (a size passes when most did) and
#               writes rounds-SCENARIO.md, .json and -capacity.svg. Not in the
#               default list (45 runs with the defaults, about half an hour)
#   redis       boards at REDIS_BOARDS boards on collab serve with its rate limits (and
#               revocations, presence) in memory and in Redis (`--redis`, a redis-server
#               pinned to the server's core too), ROUNDS rounds, the two back to back on
#               fresh servers, their order alternating; writes redis-limits.md: the op
#               p99 of each round and how much the median grows with Redis. Not in the
#               default list
#   cluster     boards over CLUSTER_STEPS on a local cluster started with
#               scripts/cluster.sh (NATS, Cassandra, CLUSTER_GATEWAYS gateways,
#               CLUSTER_ROOM_NODES room nodes, release build), clients spread over
#               the gateways, p99 bound CLUSTER_P99_MS; nothing pinned: the cluster
#               and the generator share both cores. Not in the default list (it
#               starts Cassandra, a minute or more)
#
# Environment (defaults):
#   BENCH_OUT         results directory (target dir/bench-load/DATE-TIME)
#   BENCH_SECONDS     seconds measured per run (20)
#   BENCH_WARMUP      seconds of traffic before them, checked but not in the
#                     latencies (2): a freshly started server is slower at first
#   BENCH_TARGETS     targets for boards/classroom/chat ("collab relay centrifugo")
#   SERVER_CPU        core for the server (0)
#   GEN_CPU           core for the generator (1)
#   BOARDS_STEPS      (100,200,400,600,800,1000,1200,1500)
#   CLASSROOM_STEPS   (1,2,4,6,8,10,15,20)
#   CLASSROOM_RATE_STEPS (10,25,50,75,100)
#   CHAT_CHANNELS     (900)
#   IDLE_CONNECTIONS  (19000)
#   LATE_JOIN_OPS     (100000)
#   PUBLISH_SENDERS   (32)
#   ACK_BOARDS        (500)
#   ROUNDS            (3)
#   ROUNDS_SCENARIO   boards or classroom (boards)
#   ROUNDS_STEPS      (175,200,225,250,275)
#   REDIS_BOARDS      (150)
#   CLUSTER_STEPS     (50,100,150,200)
#   CLUSTER_GATEWAYS  (2)
#   CLUSTER_ROOM_NODES (2)
#   CLUSTER_P99_MS    (100)
#   CARGO_TARGET_DIR  build cache ($HOME/.cache/collab/target)
#   BENCH_NO_BUILD    set: use the binaries already built there
#   PERF_CALL_GRAPH   perf's call-graph mode for `profile` (fp; "dwarf" resolves
#                     the Rust frames of a binary built without frame pointers)
#   BENCH_DATA_ROOT   where collab's data dirs are made ($COLLAB_CACHE); a tmpfs
#                     such as /dev/shm takes the disk out of the figures
#   BENCH_QUIET_PCT   before each run, wait until the machine (both cores, nothing
#                     of ours running) was under this % busy over 5 s (20; 100: never wait)
#   BENCH_QUIET_WAIT  wait at most this many seconds for that (1200), polling every 30 s;
#                     each run's starting load goes to machine.log either way
#
# Every run writes NAME.json (all figures), NAME.md (a summary) and NAME-*.svg
# (latency over time, capacity curve) into BENCH_OUT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/collab/target}"
CACHE="${COLLAB_CACHE:-$HOME/.cache/collab}"
OUT="${BENCH_OUT:-$CARGO_TARGET_DIR/bench-load/$(date +%Y%m%d-%H%M%S)}"
SECS="${BENCH_SECONDS:-20}"
WARM=(--warmup-seconds "${BENCH_WARMUP:-2}")
TARGETS="${BENCH_TARGETS:-collab relay centrifugo}"
SERVER_CPU="${SERVER_CPU:-0}"
GEN_CPU="${GEN_CPU:-1}"
BOARDS_STEPS="${BOARDS_STEPS:-100,200,400,600,800,1000,1200,1500}"
CLASSROOM_STEPS="${CLASSROOM_STEPS:-1,2,4,6,8,10,15,20}"
CLASSROOM_RATE_STEPS="${CLASSROOM_RATE_STEPS:-10,25,50,75,100}"
CHAT_CHANNELS="${CHAT_CHANNELS:-900}"
IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-19000}"
LATE_JOIN_OPS="${LATE_JOIN_OPS:-100000}"
PUBLISH_SENDERS="${PUBLISH_SENDERS:-32}"
ACK_BOARDS="${ACK_BOARDS:-500}"
ROUNDS="${ROUNDS:-3}"
ROUNDS_SCENARIO="${ROUNDS_SCENARIO:-boards}"
ROUNDS_STEPS="${ROUNDS_STEPS:-175,200,225,250,275}"
REDIS_BOARDS="${REDIS_BOARDS:-150}"
CLUSTER_STEPS="${CLUSTER_STEPS:-50,100,150,200}"
CLUSTER_GATEWAYS="${CLUSTER_GATEWAYS:-2}"
CLUSTER_ROOM_NODES="${CLUSTER_ROOM_NODES:-2}"
CLUSTER_P99_MS="${CLUSTER_P99_MS:-100}"
CLUSTER_DIR=""
SECRET="bench-load-secret-$(date +%s)"
# The Centrifugo-protocol server's secret is in its committed config.
CENT_SECRET="collab-load-bench-secret"
COLLAB="$CARGO_TARGET_DIR/release/collab"
LOAD="$CARGO_TARGET_DIR/release/collab-load"
SERVER_PID=""
# Extra environment for a collab server (a scenario sets it locally).
SERVER_ENV=()
SERVER_URL=""
SERVER_DATA=""
# The redis-server of a `collab-redis` server.
REDIS_DIR=""

QUIET_PCT="${BENCH_QUIET_PCT:-20}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-1200}"

log() { echo "bench-load: $*" >&2; }
die() { log "error: $*"; exit 1; }

# free_port, wait_answer
# shellcheck source=lib/server-process.sh
source "$ROOT/scripts/lib/server-process.sh"

# Polls until the server started as SERVER_PID answers at URL, at most 30 s.
wait_http() { wait_answer "$1" "$SERVER_PID" 30; }

# CPU busy % of the whole machine over 5 s, from /proc/stat.
machine_busy() {
  local a b
  a=($(head -1 /proc/stat))
  sleep 5 # the sampling interval
  b=($(head -1 /proc/stat))
  local idle=$(((b[4] + b[5]) - (a[4] + a[5]))) total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  echo $(((total - idle) * 100 / (total > 0 ? total : 1)))
}

# wait_quiet NAME: benchmarks need a quiet machine. Polls until other work
# uses less than QUIET_PCT of it, at most QUIET_WAIT s, and records the
# load the run starts with.
wait_quiet() {
  local name="$1" busy deadline=$((SECONDS + QUIET_WAIT))
  while :; do
    busy="$(machine_busy)"
    ((busy < QUIET_PCT)) && break
    if ((SECONDS >= deadline)); then
      log "machine still ${busy}% busy after ${QUIET_WAIT}s; running $name anyway"
      break
    fi
    log "machine ${busy}% busy (others: $(ps -eo pcpu,comm --sort=-pcpu | sed -n 2,4p | tr -s ' ' | tr '\n' ',')); waiting"
    sleep 30 # poll interval
  done
  echo "$(date -u +%FT%TZ) $name: ${busy}% busy before the run, load average $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.log"
}

start_server() {
  local kind="$1" port
  port="$(free_port)"
  case "$kind" in
    collab | collab-redis)
      local data shared=()
      data="$(mktemp -d "${BENCH_DATA_ROOT:-$CACHE}/bench-data-XXXXXX")"
      if [[ "$kind" == collab-redis ]]; then
        REDIS_DIR="$(mktemp -d "$CACHE/bench-redis-XXXXXX")"
        bash "$ROOT/scripts/redis-server.sh" start "$REDIS_DIR" >>"$OUT/redis.log" 2>&1 \
          || die "redis-server did not start (log $OUT/redis.log)"
        # On the server's core: what Redis costs counts against collab.
        taskset -pc "$SERVER_CPU" "$(cat "$REDIS_DIR/redis-server.pid")" >/dev/null
        shared=(--redis "redis://127.0.0.1:$(cat "$REDIS_DIR/port")")
      fi
      env "${SERVER_ENV[@]}" COLLAB_JWT_SECRET="$SECRET" RUST_LOG=warn taskset -c "$SERVER_CPU" \
        "$COLLAB" serve --listen "127.0.0.1:$port" --data-dir "$data" "${shared[@]}" \
        >"$OUT/server-$kind.log" 2>&1 &
      SERVER_PID=$!
      SERVER_DATA="$data"
      SERVER_URL="http://127.0.0.1:$port"
      wait_http "$SERVER_URL/readyz"
      ;;
    relay)
      taskset -c "$SERVER_CPU" "$LOAD" relay --listen "127.0.0.1:$port" \
        >"$OUT/server-$kind.log" 2>&1 &
      SERVER_PID=$!
      SERVER_URL="ws://127.0.0.1:$port"
      wait_http "http://127.0.0.1:$port/"
      ;;
    centrifugo)
      local line
      line="$(bash "$ROOT/scripts/centrifugo.sh" start "127.0.0.1:$port" "$SERVER_CPU")"
      SERVER_PID="${line##*pid }"
      SERVER_PID="${SERVER_PID%)}"
      SERVER_URL="http://127.0.0.1:$port"
      ;;
  esac
  log "$kind listening at $SERVER_URL (pid $SERVER_PID, cpu $SERVER_CPU)"
}

stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1 # poll interval
  done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  [[ -n "$SERVER_DATA" ]] && rm -rf "$SERVER_DATA"
  SERVER_DATA=""
  if [[ -n "$REDIS_DIR" ]]; then
    bash "$ROOT/scripts/redis-server.sh" stop "$REDIS_DIR" >>"$OUT/redis.log" 2>&1 || true
    rm -rf "$REDIS_DIR"
    REDIS_DIR=""
  fi
}
stop_cluster() {
  [[ -n "$CLUSTER_DIR" ]] || return 0
  bash "$ROOT/scripts/cluster.sh" stop "$CLUSTER_DIR" >>"$OUT/cluster.log" 2>&1 || true
  rm -rf "$CLUSTER_DIR"
  CLUSTER_DIR=""
}
trap 'stop_server; stop_cluster' EXIT

secret_for() {
  case "$1" in
    collab | collab-redis) echo "$SECRET" ;;
    centrifugo) echo "$CENT_SECRET" ;;
    *) echo "" ;;
  esac
}

# load NAME TARGET SCENARIO [ARGS...]: one generator run against a fresh server.
load() {
  local name="$1" kind="$2"
  shift 2
  wait_quiet "$name"
  start_server "$kind"
  local secret
  secret="$(secret_for "$kind")"
  log "run $name: $*"
  # collab-redis is collab to the generator.
  COLLAB_LOAD_SECRET="$secret" taskset -c "$GEN_CPU" "$LOAD" "$@" \
    --target "${kind%-redis}" --url "$SERVER_URL" --server-pid "$SERVER_PID" \
    --json "$OUT/$name.json" --markdown "$OUT/$name.md" --plots "$OUT/$name" \
    || log "run $name failed"
  stop_server
}

bench_boards() {
  for t in $TARGETS; do
    load "boards-$t" "$t" boards --seconds "$SECS" "${WARM[@]}" --steps "$BOARDS_STEPS"
  done
  plot boards
}

bench_classroom() {
  for t in $TARGETS; do
    load "classroom-$t" "$t" classroom --seconds "$SECS" "${WARM[@]}" --steps "$CLASSROOM_STEPS"
  done
  plot classroom
}

bench_classroom_rate() {
  for t in $TARGETS; do
    load "classroom-rate-$t" "$t" classroom --rooms 1 --seconds "$SECS" "${WARM[@]}" \
      --step-by rate-percent --steps "$CLASSROOM_RATE_STEPS"
  done
  plot classroom-rate
}

# Every size on every target, ROUNDS times, interleaved (see the header).
bench_rounds() {
  local scenario="$ROUNDS_SCENARIO" targets=($TARGETS) r s i t
  local n=${#targets[@]}
  for ((r = 1; r <= ROUNDS; r++)); do
    for s in ${ROUNDS_STEPS//,/ }; do
      for ((i = 0; i < n; i++)); do
        t="${targets[$(((i + r - 1) % n))]}"
        load "rounds-$scenario-$t-$s-r$r" "$t" "$scenario" --seconds "$SECS" "${WARM[@]}" \
          --steps "$s"
      done
    done
  done
  "$LOAD" rounds --markdown "$OUT/rounds-$scenario.md" --json "$OUT/rounds-$scenario.json" \
    --plot "$OUT/rounds-$scenario-capacity.svg" \
    --title "$scenario: op delivery p99 by size, median of $ROUNDS rounds" \
    "$OUT"/rounds-"$scenario"-*-r*.json
  log "rounds: $OUT/rounds-$scenario.md"
}

# boards at REDIS_BOARDS on collab serve, shared state in memory and in
# Redis, interleaved (see the header).
bench_redis() {
  local r kind kinds
  for ((r = 1; r <= ROUNDS; r++)); do
    kinds="memory redis"
    ((r % 2 == 0)) && kinds="redis memory"
    for kind in $kinds; do
      local server=collab
      [[ "$kind" == redis ]] && server=collab-redis
      load "redis-limits-$kind-r$r" "$server" boards --seconds "$SECS" "${WARM[@]}" \
        --steps "$REDIS_BOARDS"
    done
  done
  for kind in memory redis; do
    "$LOAD" rounds --markdown "$OUT/redis-limits-$kind.md" --json "$OUT/redis-limits-$kind.json" \
      "$OUT"/redis-limits-"$kind"-r*.json
  done
  python3 - "$OUT" "$REDIS_BOARDS" "$ROUNDS" <<'EOF' | tee "$OUT/redis-limits.md"
import json, statistics, sys
out, boards, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def summary(kind):
    return json.load(open(f"{out}/redis-limits-{kind}.json"))["targets"][0]["sizes"][0]
def p99(kind, r):
    step = json.load(open(f"{out}/redis-limits-{kind}-r{r}.json"))["steps"][0]
    return step["result"]["latency"]["op"]["p99_ms"]
memory, redis = summary("memory"), summary("redis")
print(f"### boards at {boards} boards: shared state in memory and in Redis\n")
print("| shared state | rounds passed | op p99 per round (ms) | median op p99 | median server CPU | ops lost |")
print("|---|---|---|---|---|---|")
for name, kind, s in (("in memory", "memory", memory), ("in Redis", "redis", redis)):
    p99s = ", ".join(f"{p99(kind, r):.1f}" for r in range(1, rounds + 1))
    cpu = s["median_server_cpu_pct"]
    cpu = f"{cpu:.0f}%" if cpu is not None else "-"
    print(f"| {name} | {s['passed']} of {s['runs']} | {p99s} | {s['median_op_p99_ms']:.1f} | {cpu} | {s['ops_lost']} |")
# Each round's two runs are minutes apart: their ratio is the least
# touched by the machine's drift.
ratios = [p99("redis", r) / p99("memory", r) for r in range(1, rounds + 1)]
growth = (statistics.median(ratios) - 1) * 100
medians = (redis["median_op_p99_ms"] / memory["median_op_p99_ms"] - 1) * 100
print(f"\nop p99 with Redis against in memory, round by round: "
      + ", ".join(f"{(x - 1) * 100:+.0f}%" for x in ratios))
print(f"median of the rounds' ratios: {growth:+.1f}%; of the medians: {medians:+.1f}% "
      f"({'within' if growth <= 10 else 'over'} the 10% allowed)")
EOF
}

# plot SCENARIO: the capacity curves of every target in one SVG.
plot() {
  local files=()
  for t in $TARGETS; do
    [[ -f "$OUT/$1-$t.json" ]] && files+=("$OUT/$1-$t.json")
  done
  ((${#files[@]})) || return 0
  "$LOAD" plot --title "$1: op delivery p99 by size" --out "$OUT/$1-capacity.svg" "${files[@]}"
}

bench_chat() {
  for t in $TARGETS; do
    load "chat-$t" "$t" chat --channels "$CHAT_CHANNELS" --seconds "$SECS" "${WARM[@]}"
  done
}

bench_idle() {
  load "idle-collab" collab idle --connections "$IDLE_CONNECTIONS" --seconds "$SECS" \
    --connect-concurrency 128
}

bench_late_join() {
  load "late-join-collab" collab late-join --ops "$LATE_JOIN_OPS"
}

# The server's per-user limits are raised: a backend that posts thousands of
# ops a second is what is measured, not the limiter.
bench_publish() {
  local SERVER_ENV=(
    COLLAB_GATEWAY__RATE_LIMITS__OPS_PER_SEC=1000000 COLLAB_GATEWAY__RATE_LIMITS__OPS_BURST=1000000
    COLLAB_GATEWAY__RATE_LIMITS__HTTP_PER_SEC=1000000 COLLAB_GATEWAY__RATE_LIMITS__HTTP_BURST=1000000
  )
  local rooms batch
  for rooms in 1 100; do
    for batch in 1 100; do
      load "publish-$rooms-rooms-batch-$batch" collab publish --rooms "$rooms" \
        --senders "$PUBLISH_SENDERS" --batch "$batch" --seconds "$SECS"
    done
  done
}

bench_ack() {
  load "ack-collab" collab boards --boards "$ACK_BOARDS" --seconds "$SECS" "${WARM[@]}"
}

bench_profile() {
  command -v perf >/dev/null || die "perf not found (Debian: linux-perf)"
  wait_quiet profile
  start_server collab
  log "profile: boards --boards $ACK_BOARDS under perf"
  perf record -F 499 --call-graph "${PERF_CALL_GRAPH:-fp}" -o "$OUT/perf-collab.data" -p "$SERVER_PID" -- sleep $((SECS + 2)) \
    2>"$OUT/perf-record.log" &
  local perf_pid=$!
  COLLAB_LOAD_SECRET="$SECRET" taskset -c "$GEN_CPU" "$LOAD" boards --boards "$ACK_BOARDS" \
    --seconds "$SECS" --target collab --url "$SERVER_URL" --server-pid "$SERVER_PID" \
    --json "$OUT/profile-run.json" --markdown "$OUT/profile-run.md" --quiet || log "run failed"
  wait "$perf_pid" || true
  stop_server
  # Flat: by shared object, by thread, then the hottest symbols.
  {
    perf report -i "$OUT/perf-collab.data" --no-children -g none --sort dso --stdio 2>/dev/null
    perf report -i "$OUT/perf-collab.data" --no-children -g none --sort comm --stdio 2>/dev/null
    perf report -i "$OUT/perf-collab.data" --no-children -g none --sort symbol --stdio 2>/dev/null \
      | sed -n 1,80p # reads all its input: head would SIGPIPE perf under pipefail
  } | grep -v '^#' | grep -v '^$' >"$OUT/profile-collab.txt"
  # A flamegraph when inferno is installed (cargo install inferno).
  if command -v inferno-collapse-perf >/dev/null && command -v inferno-flamegraph >/dev/null; then
    perf script -i "$OUT/perf-collab.data" 2>/dev/null | inferno-collapse-perf \
      | inferno-flamegraph --title "collab serve, boards × $ACK_BOARDS" >"$OUT/flamegraph-collab.svg"
    log "flamegraph in $OUT/flamegraph-collab.svg"
  fi
  log "profile in $OUT/profile-collab.txt"
}

# boards on a local cluster: every process of it (gateways, room nodes, NATS,
# Cassandra) is sampled with --watch, and the clients of each board are spread
# over the gateways (client i connects to gateway i mod N).
bench_cluster() {
  CLUSTER_DIR="$(mktemp -d "$CACHE/bench-cluster-XXXXXX")"
  local dir="$CLUSTER_DIR"
  log "cluster: $CLUSTER_GATEWAYS gateways, $CLUSTER_ROOM_NODES room nodes in $dir (log $OUT/cluster.log)"
  if ! COLLAB_CLUSTER_GATEWAYS="$CLUSTER_GATEWAYS" COLLAB_CLUSTER_ROOM_NODES="$CLUSTER_ROOM_NODES" \
    COLLAB_CLUSTER_PROFILE=release RUST_LOG=warn \
    bash "$ROOT/scripts/cluster.sh" start "$dir" >>"$OUT/cluster.log" 2>&1; then
    tail -20 "$OUT/cluster.log" >&2
    die "the cluster did not start"
  fi
  local args=() i
  for ((i = 1; i <= CLUSTER_GATEWAYS; i++)); do
    args+=(--url "http://127.0.0.1:$(cat "$dir/g$i.port")" --watch "g$i=$(cat "$dir/g$i.pid")")
  done
  for ((i = 1; i <= CLUSTER_ROOM_NODES; i++)); do
    args+=(--watch "r$i=$(cat "$dir/r$i.pid")")
  done
  args+=(--watch "nats=$(cat "$dir/nats/nats-server.pid")")
  [[ -f "$dir/cql/cassandra.pid" ]] && args+=(--watch "cassandra=$(cat "$dir/cql/cassandra.pid")")
  # The cluster itself idles at a few % (heartbeats, Cassandra): allow it.
  QUIET_PCT=$((QUIET_PCT + 15)) wait_quiet cluster-boards
  log "run cluster-boards: steps $CLUSTER_STEPS, p99 bound $CLUSTER_P99_MS ms"
  COLLAB_LOAD_SECRET="$(cat "$dir/jwt-secret")" "$LOAD" boards --seconds "$SECS" "${WARM[@]}" \
    --steps "$CLUSTER_STEPS" --p99-bound-ms "$CLUSTER_P99_MS" --target collab "${args[@]}" \
    --json "$OUT/cluster-boards.json" --markdown "$OUT/cluster-boards.md" \
    --plots "$OUT/cluster-boards" || log "run cluster-boards failed"
  stop_cluster
}

main() {
  command -v taskset >/dev/null || die "taskset (util-linux) not found"
  mkdir -p "$OUT" "$CACHE"
  if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    log "building (release)"
    # One package per build: built together, cargo would unify their
    # dependencies' features and give collab a different build than
    # scripts/cluster.sh's `cargo build -p collab` (which would then rebuild).
    (cd "$ROOT" && cargo build --release --quiet -p collab && cargo build --release --quiet -p collab-load)
  fi
  [[ -x "$COLLAB" && -x "$LOAD" ]] || die "no release build in $CARGO_TARGET_DIR"
  if [[ " $TARGETS " == *" centrifugo "* ]]; then
    bash "$ROOT/scripts/centrifugo.sh" install
  fi
  local scenarios=("$@")
  ((${#scenarios[@]})) || scenarios=(boards classroom classroom-rate chat idle late-join ack)
  for s in "${scenarios[@]}"; do
    case "$s" in
      boards) bench_boards ;;
      classroom) bench_classroom ;;
      classroom-rate) bench_classroom_rate ;;
      chat) bench_chat ;;
      idle) bench_idle ;;
      late-join) bench_late_join ;;
      publish) bench_publish ;;
      ack) bench_ack ;;
      profile) bench_profile ;;
      rounds) bench_rounds ;;
      redis) bench_redis ;;
      cluster) bench_cluster ;;
      *) die "unknown scenario $s" ;;
    esac
  done
  log "results in $OUT"
}

main "$@"
