#!/usr/bin/env bash
# The browser tests of the web client (web-tests/): installs what they need
# when it is missing — Debian's Chromium, the pinned npm packages — builds
# `collab`, and runs them with node's test runner. Safe to run again: every
# step is skipped when already done. Exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/collab/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

step() { printf '\n==> %s\n' "$*"; }

step "chromium"
if [ -x "$CHROMIUM" ]; then
    echo "found $CHROMIUM"
else
    echo "installing Debian's chromium package"
    if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium >/dev/null
    CHROMIUM=/usr/bin/chromium
fi
"$CHROMIUM" --version 2>/dev/null | head -n 1 || true
export CHROMIUM

step "node and npm packages (web-tests/)"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node and npm are missing: install Node.js 20 or newer, then run this again" >&2
    exit 1
fi
node --version
# npm ci when node_modules is missing or older than the lock file it came from.
stamp=web-tests/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ web-tests/package-lock.json -nt "$stamp" ]; then
    echo "npm ci"
    (cd web-tests && npm ci --no-audit --no-fund)
else
    echo "node_modules is up to date with package-lock.json"
fi

step "build collab (cargo build -p collab)"
cargo build -p collab --bin collab
export COLLAB_BIN="$CARGO_TARGET_DIR/debug/collab"
echo "using $COLLAB_BIN"

step "browser tests (node --test)"
mkdir -p web-tests/artifacts
cd web-tests
started=$(date +%s)
status=0
node --test --test-concurrency=1 --test-reporter=spec tests/ || status=$?
echo "browser tests took $(( $(date +%s) - started )) s; screenshots in web-tests/artifacts/"
exit "$status"
