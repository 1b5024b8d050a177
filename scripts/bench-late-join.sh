#!/usr/bin/env bash
# The late join of a large board through the client SDK in Node, before
# (the whole state in the `joined` frame) and after (a snapshot over HTTP,
# then a join with `since`): bytes from the server and time to the full
# state at the client. See load-tests/sdk/late-join.mjs for what it does and
# its options, which this passes on (e.g. `--points generator`).
#
# Installs the SDK's pinned npm packages when missing, builds the SDK, and
# builds `collab` in release mode unless COLLAB_BIN names a binary. Safe to
# run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/collab/target}"

step() { printf '\n==> %s\n' "$*" >&2; }

step "npm packages (sdk/js/)"
stamp=sdk/js/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ sdk/js/package-lock.json -nt "$stamp" ]; then
    echo "npm ci" >&2
    (cd sdk/js && npm ci --no-audit --no-fund >&2)
else
    echo "node_modules is up to date with package-lock.json" >&2
fi

step "build the SDK (tsc -p sdk/js/tsconfig.json)"
(cd sdk/js && npm run -s build)

if [ -z "${COLLAB_BIN:-}" ]; then
    step "build collab (cargo build --release -p collab)"
    cargo build --release -p collab --bin collab
    export COLLAB_BIN="$CARGO_TARGET_DIR/release/collab"
fi
echo "using $COLLAB_BIN" >&2

step "late join (node load-tests/sdk/late-join.mjs $*)"
node load-tests/sdk/late-join.mjs "$@"
