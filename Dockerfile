# syntax=docker/dockerfile:1
# One image for the whole suite: each pod runs `alp serve <service>` (see helm/alp).
#   docker build -t alp:0.1.0 .

# --- build: the release binary, without debug info -------------------------------------------
FROM rust:1.94-slim-bookworm AS build
WORKDIR /src
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin alp \
    && install -D -m 0755 target/release/alp /out/alp

# --- run: glibc and CA certificates, no shell, non-root ---------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/alp /usr/local/bin/alp
# The nonroot user of the distroless image (65532), numeric so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 50051 50052 50053 50054 9464
ENTRYPOINT ["/usr/local/bin/alp"]
CMD ["--help"]
