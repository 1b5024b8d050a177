#!/usr/bin/env bash
# Installs what the test suite needs (skipping whatever is already there)
# and runs every test: formatting, lints, unit, property, conformance and
# cross-process tests, then the browser tests of the web client (which
# install Debian's Chromium and the pinned npm packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# A build cache outside the clone keeps a second run fast; an empty one works too.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/collab/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust with rustup, then run this again" >&2
    exit 1
fi
cargo --version
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "installing the $component component"
        rustup component add "$component"
    fi
done

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (cargo test)"
cargo test --workspace --locked

step "browser tests (scripts/web-tests.sh)"
bash scripts/web-tests.sh
