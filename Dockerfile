# The driftwatch image: one static (musl) binary, non-root (65532), no shell, nothing else.
#
# With a registry (Docker, BuildKit, buildah, podman): the binary is built in the `build` stage.
#   docker build -t ghcr.io/you/driftwatch:0.1.0 .
# Without one (this project's `make image`): the binary is built on the host and copied in,
# so no base image is ever pulled. The same final stage either way.
#   cargo build --release --locked --target x86_64-unknown-linux-musl
#   buildah bud --build-arg BINARY_FROM=prebuilt -t driftwatch.local/driftwatch:0.1.0 .
ARG BINARY_FROM=build

FROM docker.io/library/rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
RUN cargo build --release --locked --bin driftwatch --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/driftwatch /driftwatch

FROM scratch AS prebuilt
COPY target/x86_64-unknown-linux-musl/release/driftwatch /driftwatch

FROM ${BINARY_FROM} AS binary

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
# Where the source is published (the label registries link to); set it when you publish.
ARG SOURCE=https://github.com/driftwatch/driftwatch
LABEL org.opencontainers.image.title="driftwatch" \
      org.opencontainers.image.description="Kubernetes controller that detects, explains and heals drift between Helm releases and the cluster" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=binary /driftwatch /driftwatch
USER 65532:65532
ENTRYPOINT ["/driftwatch"]
CMD ["run"]
