# Static, non-root, shell-less image of the driftwatch binary.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/driftwatch /driftwatch

FROM scratch
COPY --from=build /driftwatch /driftwatch
USER 65532:65532
ENTRYPOINT ["/driftwatch"]
CMD ["run"]
