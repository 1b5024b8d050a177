#!/usr/bin/env bash
# The fuzz targets of fuzz/ (cargo fuzz, libFuzzer): see docs/fuzzing.md.
#
#   scripts/fuzz.sh install              install cargo-fuzz into the cache (idempotent);
#                                        prints the directory of its binary
#   scripts/fuzz.sh list                 the targets
#   scripts/fuzz.sh build [TARGET]       build one target, or all
#   scripts/fuzz.sh run TARGET SECONDS [LIBFUZZER_ARGS...]
#                                        fuzz TARGET for SECONDS, starting from its
#                                        committed corpus (fuzz/corpus/TARGET) and
#                                        adding what it finds to a working corpus
#                                        in the cache; a crash is saved under
#                                        fuzz/artifacts/TARGET and fails the run
#   scripts/fuzz.sh ci                   every target: replay its committed corpus,
#                                        then fuzz it for CI_SECONDS (default 15)
#   scripts/fuzz.sh cargo ARGS...        `cargo fuzz ARGS` with the toolchain and target
#                                        directory above (fmt, cmin, tmin, coverage, ...)
#
# Environment:
#   CARGO_FUZZ_VERSION      default 0.13.2
#   COLLAB_CACHE            default $HOME/.cache/collab
#   FUZZ_TARGET_DIR         cargo's target directory for the instrumented builds,
#                           default $COLLAB_CACHE/fuzz-target (never the normal
#                           build's: other compiler flags would rebuild it each time)
#   FUZZ_SANITIZER          address (default) or none
#   CI_SECONDS              seconds per target for `ci`, default 15
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
CACHE="${COLLAB_CACHE:-$HOME/.cache/collab}"
TOOL_ROOT="$CACHE/tools/cargo-fuzz-$CARGO_FUZZ_VERSION"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$CACHE/fuzz-target}"
SANITIZER="${FUZZ_SANITIZER:-address}"
WORK_CORPUS="$CACHE/fuzz-corpus"
# Release builds with debug assertions, so an arithmetic overflow panics as
# it would in a test instead of wrapping silently.
FUZZ_FLAGS=(--release --debug-assertions -s "$SANITIZER")

log() { echo "fuzz: $*" >&2; }
die() { log "error: $*"; exit 1; }

cmd_install() {
  if [[ -x "$TOOL_ROOT/bin/cargo-fuzz" ]]; then
    log "cargo-fuzz $CARGO_FUZZ_VERSION already installed"
  else
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOL_ROOT"
    # A throwaway target directory of cargo's own, not the fuzz builds'.
    env -u CARGO_TARGET_DIR cargo install --locked --quiet --root "$TOOL_ROOT" \
      --version "$CARGO_FUZZ_VERSION" cargo-fuzz
  fi
  echo "$TOOL_ROOT/bin"
}

# cargo fuzz passes rustc a -Z flag for the address sanitizer, which only a
# nightly compiler takes. Measured on this kind of machine, on a target with
# a planted crash: nightly with the sanitizer finds it; stable refuses the
# flag ("the option `Z` is only accepted on the nightly compiler"); stable
# with RUSTC_BOOTSTRAP=1 takes it and finds the crash, with the sanitizer
# (its runtime ships with the stable standard library for x86_64 Linux);
# stable with `-s none` needs no -Z flag at all and finds it too, without
# the sanitizer. So: the nightly toolchain when rustup has one (the machine
# image ships it), else stable told to accept the flag. FUZZ_SANITIZER=none
# is the way out if neither works somewhere.
cargo_fuzz() {
  local PATH="$TOOL_ROOT/bin:$PATH"
  export CARGO_TARGET_DIR="$FUZZ_TARGET_DIR"
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo +nightly fuzz "$@"
  else
    RUSTC_BOOTSTRAP=1 cargo fuzz "$@"
  fi
}

targets() {
  cargo_fuzz list --fuzz-dir fuzz
}

# The committed seeds of TARGET, which every run starts from.
seeds() {
  local dir="fuzz/corpus/$1"
  [[ -d "$dir" ]] || die "no seed corpus for $1 ($dir)"
  echo "$dir"
}

cmd_build() {
  cmd_install >/dev/null
  if [[ $# -gt 0 ]]; then
    log "building $1 (sanitizer: $SANITIZER)"
    cargo_fuzz build --fuzz-dir fuzz "${FUZZ_FLAGS[@]}" "$1"
  else
    log "building every target (sanitizer: $SANITIZER)"
    cargo_fuzz build --fuzz-dir fuzz "${FUZZ_FLAGS[@]}"
  fi
}

# Fuzz TARGET for SECONDS: the first corpus directory given to libFuzzer
# receives what it finds, so it is the cache's working corpus; the committed
# seeds are read only.
cmd_run() {
  [[ $# -ge 2 ]] || die "usage: run TARGET SECONDS [LIBFUZZER_ARGS...]"
  local target="$1" seconds="$2"
  shift 2
  local seeds
  seeds=$(seeds "$target")
  cmd_build "$target"
  mkdir -p "$WORK_CORPUS/$target"
  log "fuzzing $target for ${seconds}s (working corpus $WORK_CORPUS/$target)"
  cargo_fuzz run --fuzz-dir fuzz "${FUZZ_FLAGS[@]}" "$target" \
    "$WORK_CORPUS/$target" "$seeds" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
}

# Every committed seed and saved regression input first (a crash found once
# stays found), then a short fresh run from them in a throwaway corpus.
cmd_ci() {
  local seconds="${CI_SECONDS:-15}" target scratch status=0
  cmd_build
  for target in $(targets); do
    seeds "$target" >/dev/null
    log "$target: replaying fuzz/corpus/$target"
    cargo_fuzz run --fuzz-dir fuzz "${FUZZ_FLAGS[@]}" "$target" "fuzz/corpus/$target" -- \
      -runs=0 -timeout=10 || status=1
    scratch=$(mktemp -d)
    log "$target: fuzzing for ${seconds}s"
    cargo_fuzz run --fuzz-dir fuzz "${FUZZ_FLAGS[@]}" "$target" "$scratch" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 || status=1
    rm -rf "$scratch"
  done
  [[ $status -eq 0 ]] || die "a fuzz target failed: its input is under fuzz/artifacts/"
  log "every target passed"
}

case "${1:-}" in
  install) cmd_install ;;
  list) cmd_install >/dev/null; targets ;;
  build) shift; cmd_build "$@" ;;
  run) shift; cmd_run "$@" ;;
  ci) cmd_ci ;;
  cargo) shift; cmd_install >/dev/null; cargo_fuzz "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 64 ;;
esac
