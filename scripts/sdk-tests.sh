#!/usr/bin/env bash
# The client SDK's tests (sdk/js): installs the pinned npm packages when
# missing, builds the package with the TypeScript compiler, type-checks the
# sources, examples and tests, builds `collab`, and runs the unit tests
# (a fake socket), the tests against a real `collab serve`, the fault tests
# (a proxy that cuts, stalls and half-delivers connections; a SIGKILL) and
# the package's own checks (the page's copy of the SDK equals this build,
# the README's examples, `npm pack`). Safe to run again: every install step
# is skipped when already done. Exits non-zero when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/collab/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "node and npm packages (sdk/js/)"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node and npm are missing: install Node.js 20 or newer, then run this again" >&2
    exit 1
fi
node --version
# npm ci when node_modules is missing or older than the lock file it came from.
stamp=sdk/js/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ sdk/js/package-lock.json -nt "$stamp" ]; then
    echo "npm ci"
    (cd sdk/js && npm ci --no-audit --no-fund)
else
    echo "node_modules is up to date with package-lock.json"
fi

step "build the SDK (tsc -p sdk/js/tsconfig.json)"
(cd sdk/js && npx tsc --version && npm run -s build)

step "type-check the SDK, its examples and its tests"
(cd sdk/js && npm run -s check)

step "build collab (cargo build -p collab)"
cargo build -p collab --bin collab
export COLLAB_BIN="$CARGO_TARGET_DIR/debug/collab"
echo "using $COLLAB_BIN"

step "SDK tests (node --test sdk/js/test/*.test.js)"
cd sdk/js
started=$(date +%s)
status=0
node --test --test-concurrency=1 --test-reporter=spec test/*.test.js || status=$?
echo "SDK tests took $(( $(date +%s) - started )) s"
exit "$status"
