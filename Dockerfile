# syntax=docker/dockerfile:1
#
# css-kafka-bridge image.
#
#   docker build -t css-kafka-bridge .
#   docker run --rm -p 8080:8080 -e BRIDGE_KAFKA_BROKERS=kafka:9092 \
#       -v /secure/callback-keys:/run/secrets/callback-keys:ro \
#       -e BRIDGE_CALLBACK_KEYS_FILE=/run/secrets/callback-keys css-kafka-bridge
#
# (The key from a file: an -e BRIDGE_CALLBACK_KEYS=... is shown by docker inspect.)
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.
#
# Builder: Debian 12 with the Rust toolchain. rdkafka-sys compiles librdkafka from
# source and links it against the system's OpenSSL 3 and zlib (shared libraries).
#
# Runtime: distroless "cc" for Debian 12, as the non-root user 65532. It carries
# glibc, libgcc_s, libstdc++, libssl3 (libssl.so.3, libcrypto.so.3), ca-certificates
# and tzdata, and no shell. It does NOT carry zlib (libz.so.1) in its Debian 12
# flavour, so zlib is copied over from the builder; both stages are Debian 12, so
# the library is the one the binary was linked against.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# gcc, g++, make, perl and python3 come with the image; pkg-config and the OpenSSL
# and zlib headers are made sure of here. Not pinned: the versions are whatever
# Debian 12 currently ships, as in the base image itself.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The cargo registry and the target directory are BuildKit cache mounts: after the
# first build, a source change recompiles this crate only, not librdkafka and the
# other dependencies. The binary is copied out of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin css-kafka-bridge \
 && install -D -m 0755 target/release/css-kafka-bridge /out/usr/local/bin/css-kafka-bridge

# Fail the build, rather than the container at start-up, when the binary needs a
# shared library the runtime image does not have (e.g. after enabling an rdkafka
# feature such as gssapi or curl). Then zlib goes next to the runtime's libssl.
RUN set -eu; \
    needed="$(objdump -p /out/usr/local/bin/css-kafka-bridge | awk '/NEEDED/ { print $2 }')"; \
    for lib in $needed; do \
      case "$lib" in \
        libc.so.6|libm.so.6|libdl.so.2|libpthread.so.0|librt.so.1|ld-linux-*) ;; \
        libgcc_s.so.1|libstdc++.so.6|libssl.so.3|libcrypto.so.3|libz.so.1) ;; \
        *) echo "css-kafka-bridge needs $lib, which the runtime image lacks" >&2; exit 1 ;; \
      esac; \
    done; \
    multiarch="$(gcc -print-multiarch)"; \
    mkdir -p "/out/usr/lib/$multiarch"; \
    cp -P /lib/"$multiarch"/libz.so.1* "/out/usr/lib/$multiarch/"

FROM ${RUNTIME_IMAGE}

LABEL org.opencontainers.image.title="css-kafka-bridge" \
      org.opencontainers.image.description="Tencent Cloud CSS push error callbacks to Kafka, as Avro records"

COPY --from=builder /out/ /

# distroless' "nonroot" user, numeric so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
# A container is reached through its network interface, never its loopback: listen
# on every interface. Without a callback key the bridge then refuses to start,
# saying what to set, rather than taking unsigned callbacks from anyone.
ENV BRIDGE_LISTEN=0.0.0.0:8080
EXPOSE 8080
# SIGTERM starts the drain: readiness off, in-flight requests finish, the producer
# flushes, all within BRIDGE_DRAIN_TIMEOUT_SECS (default 20 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/css-kafka-bridge"]
CMD ["serve"]
