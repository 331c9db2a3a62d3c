# syntax=docker/dockerfile:1
# shrinkray-worker with the CUDA backend (cuBLAS/cuSOLVER kernels, NCCL), on
# NVIDIA's CUDA images (Ubuntu 24.04: the same gRPC 1.51 / abseil 20220623 as
# Debian 12). Build from the repository root, for the GPUs you run on:
#   docker build -f deploy/docker/worker-cuda.Dockerfile \
#     --build-arg CUDA_ARCHITECTURES="80;90a" -t shrinkray/worker-cuda:dev .
# CUDA_ARCHITECTURES is CMake's CMAKE_CUDA_ARCHITECTURES: 80 A100, 86 A10/A40,
# 89 L4/L40S, 90a H100/H200, 100a B200 (needs CUDA >= 12.8).
ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG BUILD_JOBS=4
ARG CUDA_ARCHITECTURES="80;90a"
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
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHRINKRAY_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
      -DSHRINKRAY_BUILD_TESTS=OFF -DSHRINKRAY_BUILD_BENCH=OFF \
 && cmake --build /build -j"${BUILD_JOBS}" --target shrinkray-worker shrinkray \
 && mkdir -p /out/bin \
 && install -s -m 0755 /build/worker/shrinkray-worker /build/client/shrinkray /out/bin/ \
 && runtime-packages.sh /out/bin/shrinkray-worker /out/bin/shrinkray > /out/runtime-packages.txt

# The runtime image brings the CUDA runtime, cuBLAS, cuSOLVER and NCCL;
# runtime-packages.sh leaves those out of the list it writes.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends ca-certificates python3 \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 shrinkray \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/shrinkray --shell /usr/sbin/nologin shrinkray \
 && mkdir -p /var/lib/shrinkray /models \
 && chown 10001:10001 /var/lib/shrinkray /models
COPY --from=build /out/bin/ /usr/local/bin/
COPY deploy/docker/shrinkray-healthcheck /usr/local/bin/shrinkray-healthcheck
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /var/lib/shrinkray
EXPOSE 9091
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["shrinkray-healthcheck", "http", "127.0.0.1:9091"]
ENTRYPOINT ["shrinkray-worker"]
CMD ["--coordinator=coordinator:50051", "--metrics-listen=0.0.0.0:9091", "--device=cuda"]
