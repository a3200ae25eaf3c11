# cmoe-serve: the gRPC inference server, in a slim image. The model is never baked in: mount a
# checkpoint directory (dense or carved by cmoe-carve) at /models/model, or pass --model.
#
#   docker build -t cmoe-serve .
#   docker run --rm -p 50051:50051 -p 9464:9464 -v $PWD/build/models/stories260K-S3A3E8:/models/model:ro cmoe-serve
#   docker run --rm ... cmoe-serve --model /models/model --max-running 32     # flags after the image
#
# CUDA variant (an NVIDIA CUDA base; the build and runtime images must be the same distribution).
# It carries the CUDA backend plugin; serve on the GPU with `docker run --gpus all ... cmoe-serve
# --device cuda` (without --device it serves on the CPU):
#   docker build -t cmoe-serve:cuda --build-arg CMOE_CUDA=ON \
#     --build-arg BUILD_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04 .
#
# The runtime stage installs exactly the packages that own the shared libraries the binaries load
# (scripts/runtime-packages.sh, computed in the build stage), so it follows the build's
# dependencies without a hand-kept list.
ARG BUILD_IMAGE=debian:12
ARG RUNTIME_IMAGE=debian:12-slim

# --- build: toolchain, the -dev packages, the binaries ---
FROM ${BUILD_IMAGE} AS build
ARG CMOE_CUDA=OFF
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY scripts/install-deps.sh scripts/
RUN scripts/install-deps.sh --build-only && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMOE_BUILD_TESTS=OFF \
      -DCMOE_BUILD_BENCHMARKS=OFF -DCMOE_CUDA=${CMOE_CUDA} \
 && cmake --build /build --target cmoe-serve cmoe-cli cmoe-carve cmoe-convert cmoe-eval \
      cmoe-generate \
 && mkdir -p /out/bin /out/lib \
 && cp /build/bin/cmoe-serve /build/bin/cmoe-cli /build/bin/cmoe-carve /build/bin/cmoe-convert \
      /build/bin/cmoe-eval /build/bin/cmoe-generate /out/bin/ \
 && if [ "${CMOE_CUDA}" = ON ]; then \
      cmake --build /build --target cmoe_kernels_cuda \
      && cp /build/lib/libcmoe_kernels_cuda.so /out/lib/; fi \
 && strip --strip-unneeded /out/bin/* \
 && scripts/runtime-packages.sh /out/bin/* > /out/runtime-packages.txt

# --- runtime: the shared libraries, a non-root user, the binaries ---
FROM ${RUNTIME_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update -qq \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y -qq --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 cmoe \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin cmoe
COPY --from=build /out/bin/ /usr/local/bin/
# The CUDA backend plugin (CUDA builds only), found by the binaries at ../lib.
COPY --from=build /out/lib/ /usr/local/lib/
USER 10001:10001
VOLUME ["/models"]
# gRPC (cmoe.v1.Inference, grpc.health.v1.Health, reflection) and Prometheus /metrics.
EXPOSE 50051 9464
# The gRPC health service: healthy once the model is loaded (NOT_SERVING while loading and
# draining). Assumes the default port; a container started with another --port needs its own check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["cmoe-cli", "--target", "127.0.0.1:50051", "--timeout", "3", "health"]
# SIGTERM drains (--drain-timeout, 30 s by default): give `docker stop` more (-t 40).
STOPSIGNAL SIGTERM
ENTRYPOINT ["cmoe-serve", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9464"]
CMD ["--model", "/models/model"]
