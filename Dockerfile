# Latch's image: the release binary and the shipped policies.
#   docker build -t latch .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin latch

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/latch /usr/local/bin/latch
COPY policies /usr/share/latch/policies
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["latch"]
CMD ["serve", "--config", "/etc/latch/latch.toml"]
