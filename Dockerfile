# Builds the sample shop's three services into one small image; the compose
# file picks the binary per service.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p order-service -p inventory-service -p payment-service

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/order-service \
                  /src/target/release/inventory-service \
                  /src/target/release/payment-service /usr/local/bin/
ENV CATGA_HTTP_ADDR=0.0.0.0:8080 RUST_LOG=info
EXPOSE 8080
CMD ["order-service"]
