# flotilla's container image: `docker build -t flotilla:dev .`
#
# Stage 1 compiles the binary (the Rust toolchain image, from a registry).
# Stage 2 is the image: the binary, the C libraries it links (glibc, libgcc)
# and a non-root user, on an empty base: no shell, no package manager.
# Where no registry is reachable, scripts/build-image builds stage 2 around
# a binary built on the host.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin flotilla \
 && scripts/image-rootfs target/release/flotilla /rootfs

FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/flotilla"]
CMD ["--help"]
