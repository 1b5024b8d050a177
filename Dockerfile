# syntax=docker/dockerfile:1
#
# The collab server image: a release build of the `collab` binary on a
# minimal non-root base (glibc, CA certificates, nothing else: no shell, no
# package manager).
#
#   docker build -t collab:0.1.0 .
#
# The build step is the release build the scripts run
# (scripts/bench-load.sh; scripts/cluster.sh with
# COLLAB_CLUSTER_PROFILE=release), with the lock file the tests use. The
# test machines have no container engine, so the image is not built there:
# scripts/k8s-check.sh checks instead that this file, the workspace and the
# Helm chart agree (the build command, the toolchain, the binary's path,
# the user the chart runs as). Keep them in step when changing any.

# The toolchain the tests run with; at least the workspace's rust-version.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p collab --bin collab \
    && install -D -m 0755 target/release/collab /out/collab

# Debian 12 like the build stage, so the binary finds the same glibc.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/collab /usr/local/bin/collab
# The image's non-root user; the chart runs as it too (securityContext).
USER 65532:65532
# 8080: the gateway's public HTTP and WebSocket port; 9090: metrics and
# probes (the room node's only port).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/collab"]
CMD ["--help"]
