# syntax=docker/dockerfile:1
# shrinkray-coordinator: the gRPC API, SQLite job store and scheduler, with the
# `shrinkray` CLI beside it (helm test and `kubectl exec` use it).
# Build from the repository root (the context is the checkout):
#   docker build -f deploy/docker/coordinator.Dockerfile -t shrinkray/coordinator:dev .
ARG BASE_IMAGE=debian:bookworm-slim

# ---- build: Debian 12's toolchain and libraries, the same as scripts/install-deps.sh
FROM ${BASE_IMAGE} AS build
ARG BUILD_JOBS=4
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config ca-certificates \
      libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libabsl-dev \
      prometheus-cpp-dev libgloo-dev libsqlite3-dev libopenblas-dev liblapacke-dev \
      nlohmann-json3-dev libyaml-cpp-dev libpcre2-dev libutf8proc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake/ cmake/
COPY core/ core/
COPY proto/ proto/
COPY server/ server/
COPY worker/ worker/
COPY client/ client/
COPY deploy/docker/runtime-packages.sh /usr/local/bin/runtime-packages.sh
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHRINKRAY_CUDA=OFF \
      -DSHRINKRAY_BUILD_TESTS=OFF -DSHRINKRAY_BUILD_BENCH=OFF \
 && cmake --build /build -j"${BUILD_JOBS}" --target shrinkray-coordinator shrinkray \
 && mkdir -p /out/bin \
 && install -s -m 0755 /build/server/shrinkray-coordinator /build/client/shrinkray /out/bin/ \
 && runtime-packages.sh /out/bin/shrinkray-coordinator /out/bin/shrinkray > /out/runtime-packages.txt

# ---- runtime: only the packages that hold the binaries' shared libraries,
# plus python3-grpcio for the gRPC health check.
FROM ${BASE_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends ca-certificates python3-grpcio \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 shrinkray \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/shrinkray --shell /usr/sbin/nologin shrinkray \
 && mkdir -p /var/lib/shrinkray /models \
 && chown 10001:10001 /var/lib/shrinkray /models
COPY --from=build /out/bin/ /usr/local/bin/
COPY deploy/docker/shrinkray-healthcheck /usr/local/bin/shrinkray-healthcheck
USER 10001:10001
WORKDIR /var/lib/shrinkray
# 50051: gRPC (CompressionService, WorkerService, grpc.health.v1); 9090: /metrics.
EXPOSE 50051 9090
# grpc.health.v1 needs no token. With --tls-cert, set SHRINKRAY_HEALTHCHECK_TLS_CA
# (and SHRINKRAY_HEALTHCHECK_SERVER_NAME) in the container's environment.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["shrinkray-healthcheck", "grpc", "127.0.0.1:50051"]
ENTRYPOINT ["shrinkray-coordinator"]
CMD ["--listen=0.0.0.0:50051", "--metrics-listen=0.0.0.0:9090", "--data-dir=/var/lib/shrinkray", "--allowed-root=/models"]
