#!/usr/bin/env bash
# Installs what the test suite needs (skipping whatever is already there)
# and runs every test: formatting, lints, unit, property, conformance and
# cross-process tests, then the client SDK's tests and the browser tests of
# the web client (which install Debian's Chromium and the pinned npm
# packages when missing).
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

# The CQL store's tests need a CQL server: the one COLLAB_TEST_CQL names
# (host:port of a ScyllaDB or Cassandra), or else a Cassandra 5.0 test node
# started here, shared by every test and stopped on exit. It starts in the
# background while the lints run.
step "CQL test server"
cql_dir=""
cql_pid=""
cleanup_cql() {
    if [[ -n "$cql_dir" ]]; then
        bash scripts/cql-server.sh stop "$cql_dir" || true
        rm -rf "$cql_dir" "$cql_dir.start.log"
    fi
}
trap cleanup_cql EXIT
if [[ -n "${COLLAB_TEST_CQL:-}" ]]; then
    echo "using the CQL server in COLLAB_TEST_CQL: $COLLAB_TEST_CQL"
else
    cql_dir=$(mktemp -d "${TMPDIR:-/tmp}/collab-cql.XXXXXX")
    echo "starting a Cassandra test node in $cql_dir (scripts/cql-server.sh)"
    bash scripts/cql-server.sh start "$cql_dir" >"$cql_dir.start.log" 2>&1 &
    cql_pid=$!
fi

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy)"
cargo clippy --workspace --all-targets --locked -- -D warnings

if [[ -n "$cql_pid" ]]; then
    step "waiting for the CQL test server"
    if ! wait "$cql_pid"; then
        cat "$cql_dir.start.log" >&2
        echo "the CQL test server did not start" >&2
        exit 1
    fi
    cat "$cql_dir.start.log"
    rm -f "$cql_dir.start.log"
    export COLLAB_TEST_CQL="127.0.0.1:$(cat "$cql_dir/port")"
fi

# The cluster bus tests (collab-bus) run a real nats-server 2.11+; they
# find it through COLLAB_NATS_SERVER.
step "nats-server for the bus tests (scripts/nats-server.sh)"
COLLAB_NATS_SERVER="$(bash scripts/nats-server.sh install)"
export COLLAB_NATS_SERVER

# The shared-state tests (collab-ephemeral, and the clusters of
# tests/tests/cluster_redis.rs, cluster.rs and prometheus.rs) run a real
# redis-server; they find it through COLLAB_REDIS_SERVER.
step "redis-server for the shared-state tests (scripts/redis-server.sh)"
COLLAB_REDIS_SERVER="$(bash scripts/redis-server.sh install)"
export COLLAB_REDIS_SERVER

# Alerts and dashboard (deploy/k8s/monitoring): promtool's checks and unit
# tests, the dashboard's structure and queries; the end-to-end test of the
# alerts (tests/tests/prometheus.rs) finds Debian's prometheus through
# COLLAB_PROMETHEUS.
step "alerts and dashboard (scripts/monitoring-check.sh)"
COLLAB_PROMETHEUS="$(bash scripts/monitoring-check.sh install)"
export COLLAB_PROMETHEUS
bash scripts/monitoring-check.sh

step "tests (cargo test)"
cargo test --workspace --locked

# The fuzz targets (fuzz/, cargo fuzz with libFuzzer): every committed seed
# and regression input, then a short run of each target, about a minute in
# all once the instrumented build is in the cache (docs/fuzzing.md).
# Installs cargo-fuzz into the cache once.
step "fuzz targets (scripts/fuzz.sh ci)"
bash scripts/fuzz.sh ci

# The HTTP API against its contract: schemathesis on a live `collab serve`
# with docs/openapi.json (installs schemathesis into the cache once; about
# a minute).
step "HTTP API contract (scripts/openapi-check.sh)"
bash scripts/openapi-check.sh

# The Helm chart, the Kubernetes and CRD schemas, kube-score and the
# Dockerfile, offline (installs helm, kubeconform and kube-score once).
step "Kubernetes deployment (scripts/k8s-check.sh)"
bash scripts/k8s-check.sh

# The client SDK (sdk/js): build, types, unit tests, a real server, the
# fault proxy, and the page's copy of the SDK against a fresh build.
step "client SDK (scripts/sdk-tests.sh)"
bash scripts/sdk-tests.sh

step "browser tests (scripts/web-tests.sh)"
bash scripts/web-tests.sh
