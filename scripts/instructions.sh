#!/usr/bin/env bash
# User-space instructions per delivered event: the one server figure that
# does not swing with the load of a shared machine. Runs a short `boards`
# load at a fixed size against `collab serve`, the bare relay (`collab-load
# relay`) and the Centrifugo-protocol server (scripts/centrifugo.sh), each
# under `valgrind --tool=callgrind` on one core, counts the instructions the
# server executed while the load ran, and divides them by the events the
# clients received (op and cursor deliveries).
#
#   scripts/instructions.sh [TARGET...]     targets: collab relay centrifugo (default: all)
#
# Environment (defaults):
#   INSTR_BOARDS    boards of the fixed load (4; 10 users each: small, because the
#                   server runs 20-50× slower under callgrind and must keep up)
#   INSTR_SECONDS   seconds of traffic (20)
#   INSTR_OUT       results directory (target dir/instructions/DATE-TIME)
#   COLLAB_BIN      the collab binary to measure (the release build of this checkout);
#                   give another build's to compare two versions
#   SERVER_CPU      core for the server (0)
#   GEN_CPU         core for the generator (1)
#   CARGO_TARGET_DIR  build cache ($HOME/.cache/collab/target)
#   BENCH_NO_BUILD  set: use the binaries already built there
#
# Writes, per target, callgrind-TARGET.out.1 (the counts: open with
# callgrind_annotate) and load-TARGET.json (the generator's figures); then
# prints a table to stdout and instructions.md in INSTR_OUT: instructions
# per delivered event, and for the Rust servers how many times a task was
# polled, and for collab how many requests its room actors handled, how
# many batches they committed and how many requests passed the room
# supervisor's mailbox, from callgrind's call counts. (Not /metrics: its
# process figures read the auxiliary vector, which valgrind does not give
# the way the kernel does, and collab dies answering it under callgrind.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/collab/target}"
CACHE="${COLLAB_CACHE:-$HOME/.cache/collab}"
OUT="${INSTR_OUT:-$CARGO_TARGET_DIR/instructions/$(date +%Y%m%d-%H%M%S)}"
BOARDS="${INSTR_BOARDS:-4}"
SECS="${INSTR_SECONDS:-20}"
SERVER_CPU="${SERVER_CPU:-0}"
GEN_CPU="${GEN_CPU:-1}"
COLLAB="${COLLAB_BIN:-$CARGO_TARGET_DIR/release/collab}"
LOAD="$CARGO_TARGET_DIR/release/collab-load"
CENTRIFUGO="$CACHE/bin/centrifuge-bench"
SECRET="instructions-secret-$(date +%s)"
# The Centrifugo-protocol server's secret is in its committed config.
CENT_SECRET="collab-load-bench-secret"
SERVER_PID=""
SERVER_DATA=""

log() { echo "instructions: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_valgrind() {
  if command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; then
    log "valgrind: $(valgrind --version)"
    return 0
  fi
  command -v apt-get >/dev/null || die "valgrind not found and no apt-get to install it"
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  log "installing valgrind (apt-get install valgrind)"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >&2
}

# free_port, wait_answer
# shellcheck source=lib/server-process.sh
source "$ROOT/scripts/lib/server-process.sh"

# Polls until `curl URL` answers 2xx, at most 120 s (a server starts
# slowly under valgrind).
wait_ok() {
  local url="$1" deadline=$((SECONDS + 120))
  until curl -fs -o /dev/null "$url"; do
    kill -0 "$SERVER_PID" 2>/dev/null || die "server exited during start"
    ((SECONDS < deadline)) || die "no answer from $url"
    sleep 0.5 # poll interval
  done
}

# A WebSocket server that answers any HTTP request, slow under valgrind.
wait_connect() { wait_answer "$1" "$SERVER_PID" 120; }

# Runs the rest of the command line under callgrind on the server's core,
# with instrumentation off until the load starts (start-up is not counted).
under_callgrind() {
  local name="$1"
  shift
  taskset -c "$SERVER_CPU" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$OUT/callgrind-$name.out" "$@" >"$OUT/server-$name.log" 2>&1 &
  SERVER_PID=$!
}

start_server() {
  local kind="$1" port
  port="$(free_port)"
  case "$kind" in
    collab)
      SERVER_DATA="$(mktemp -d "$CACHE/instructions-data-XXXXXX")"
      COLLAB_JWT_SECRET="$SECRET" RUST_LOG=warn \
        under_callgrind collab "$COLLAB" serve --listen "127.0.0.1:$port" --data-dir "$SERVER_DATA"
      SERVER_URL="http://127.0.0.1:$port"
      wait_ok "$SERVER_URL/readyz"
      ;;
    relay)
      under_callgrind relay "$LOAD" relay --listen "127.0.0.1:$port"
      SERVER_URL="ws://127.0.0.1:$port"
      wait_connect "http://127.0.0.1:$port/"
      ;;
    centrifugo)
      bash "$ROOT/scripts/centrifugo.sh" install
      # Go preempts goroutines with a signal (SIGURG), which trips an
      # assertion of callgrind's signal handling under load; without it Go
      # preempts at function calls only.
      GODEBUG=asyncpreemptoff=1 \
        under_callgrind centrifugo "$CENTRIFUGO" -config "$ROOT/load-tests/centrifugo/config.json" \
          -listen "127.0.0.1:$port"
      SERVER_URL="http://127.0.0.1:$port"
      wait_ok "$SERVER_URL/health"
      ;;
    *) die "unknown target $kind (collab, relay, centrifugo)" ;;
  esac
  log "$kind under callgrind at $SERVER_URL (pid $SERVER_PID, cpu $SERVER_CPU)"
}

stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  # Counted already (the dump): no final dump wanted.
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  [[ -n "$SERVER_DATA" ]] && rm -rf "$SERVER_DATA"
  SERVER_DATA=""
}
trap stop_server EXIT

secret_for() {
  case "$1" in
    collab) echo "$SECRET" ;;
    centrifugo) echo "$CENT_SECRET" ;;
    *) echo "" ;;
  esac
}

measure() {
  local kind="$1"
  start_server "$kind"
  log "$kind: instrumentation on; boards --boards $BOARDS --seconds $SECS"
  callgrind_control --instr=on "$SERVER_PID" >/dev/null 2>&1
  COLLAB_LOAD_SECRET="$(secret_for "$kind")" taskset -c "$GEN_CPU" "$LOAD" boards \
    --boards "$BOARDS" --seconds "$SECS" --warmup-seconds 0 --target "$kind" \
    --url "$SERVER_URL" --json "$OUT/load-$kind.json" --markdown "$OUT/load-$kind.md" --quiet \
    >"$OUT/load-$kind.log" 2>&1 \
    || log "$kind: the run did not pass its latency bounds (expected under callgrind); counted anyway"
  callgrind_control --dump "$SERVER_PID" >/dev/null 2>&1
  stop_server
}

install_valgrind
if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
  log "building collab and collab-load (release)"
  (cd "$ROOT" && cargo build --release -p collab -p collab-load)
fi
[[ -x "$LOAD" ]] || die "no collab-load binary at $LOAD"
mkdir -p "$OUT"
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(collab relay centrifugo)
if [[ " ${TARGETS[*]} " == *" collab "* ]]; then
  [[ -x "$COLLAB" ]] || die "no collab binary at $COLLAB"
fi
for t in "${TARGETS[@]}"; do
  measure "$t"
done

python3 - "$OUT" "$BOARDS" "$SECS" "${TARGETS[@]}" <<'EOF' | tee "$OUT/instructions.md"
import json, re, sys
out, boards, secs, targets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def instructions(target):
    # The dump taken when the load ended (callgrind names it .1).
    for line in open(f"{out}/callgrind-{target}.out.1", errors="replace"):
        m = re.match(r"summary:\s+(\d+)", line)
        if m:
            return int(m.group(1))
    return 0
def calls(target):
    """Calls to each function of the dump, by name."""
    names, counts, callee = {}, {}, None
    def name(spec):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", spec)
        if not m:
            return spec
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "?")
    for line in open(f"{out}/callgrind-{target}.out.1", errors="replace"):
        if line.startswith("fn="):
            name(line[3:].strip())
        elif line.startswith("cfn="):
            callee = name(line[4:].strip())
        elif line.startswith("calls="):
            counts[callee] = counts.get(callee, 0) + int(line[6:].split()[0])
    return counts
# The parts of collab's work the relay does not do. callgrind_annotate
# lists a function once per source file its inlined code comes from, each
# with the cost of its own instructions and of what they call; the sum of
# those entries is the function's inclusive cost. The rest is what the
# relay also does: sockets, WebSocket frames, queues, wake-ups, the runtime.
PARTS = [
    ("decoding and checking the clients' frames", r"collab_protocol::frames::decode_client_frame"),
    ("encoding frames (events, acks)", r"collab_protocol::frames::ServerFrame::to_json"),
    ("room actors: order, undo, hand-off to the store", r"RoomActorState>::on_(request|committed)"),
    ("the store's writer thread", r"collab_store::embedded::writer::run"),
]
def parts(target):
    import subprocess
    # From /, so that no source file is found twice (by its full and its
    # relative name) and counted twice.
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no",
                           f"{out}/callgrind-{target}.out.1"],
                          capture_output=True, text=True, cwd="/").stdout
    totals = [0] * len(PARTS)
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+[^=\s]\S*?:(.*?)(?: \[.*\])?$", line)
        if not m:
            continue
        for i, (_, pattern) in enumerate(PARTS):
            if re.search(pattern + "$", m.group(2)):
                totals[i] += int(m.group(1).replace(",", ""))
    return [(label, n) for (label, _), n in zip(PARTS, totals)]
def count(counts, pattern):
    return sum(n for f, n in counts.items() if re.search(pattern, f))
rows, structure = [], []
for t in targets:
    result = json.load(open(f"{out}/load-{t}.json"))
    c = result["counters"]
    events = c["ops_delivered"] + c["cursors_delivered"]
    ir = instructions(t)
    rows.append((t, ir, c["ops_delivered"], c["cursors_delivered"], events))
    if t in ("collab", "relay"):
        k = calls(t)
        polls = count(k, r"^tokio::runtime::task::raw::poll$")
        structure.append((t, polls / events if events else 0,
            count(k, r"RoomActorState>?::on_request$"),
            count(k, r"RoomActorState>?::on_committed$"),
            count(k, r"drop_in_place<ractor::actor::ActorRuntime<collab_actors::room::supervisor::RoomSupervisor>::process_message"),
            c["ops_sent"]))
print(f"### User-space instructions per delivered event, boards × {boards}, {secs} s under callgrind\n")
print("| server | instructions | ops delivered | cursors delivered | instructions per delivered event |")
print("|---|---|---|---|---|")
for t, ir, ops, cursors, events in rows:
    per = f"{ir / events:,.0f}" if events else "-"
    print(f"| {t} | {ir:,} | {ops:,} | {cursors:,} | {per} |")
if structure:
    print("\n| server | task polls per delivered event | ops sent | room requests handled | batches committed | supervisor messages |")
    print("|---|---|---|---|---|---|")
    for t, polls, requests, batches, supervisor, sent in structure:
        if t == "relay":
            print(f"| {t} | {polls:.2f} | {sent:,} | - | - | - |")
        else:
            print(f"| {t} | {polls:.2f} | {sent:,} | {requests:,} | {batches:,} | {supervisor:,} |")
if "collab" in targets:
    total = next(ir for t, ir, *_ in rows if t == "collab")
    events = next(e for t, *_, e in rows if t == "collab")
    split = parts("collab")
    print("\n| collab's instructions per delivered event, by part | per event | share |")
    print("|---|---|---|")
    for label, ir in split:
        print(f"| {label} | {ir / events:,.0f} | {100 * ir / total:.0f}% |")
    rest = total - sum(ir for _, ir in split)
    print(f"| the rest: sockets, WebSocket frames, queues, wake-ups, the runtime | {rest / events:,.0f} | {100 * rest / total:.0f}% |")
EOF
log "results in $OUT"
