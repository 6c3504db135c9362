# vcl-serve's image: the server binary plus ONNX Runtime from PyPI, the same release
# the project pins. Two variants by build argument:
#   VARIANT=gpu (default)  onnxruntime-gpu with its CUDA and cuDNN libraries as wheels,
#                          so the base image needs no CUDA;
#   VARIANT=cpu            the CPU wheel (a third of the size).
# and two sources of the binary:
#   BINARY_FROM=build (default)  compiled in the Rust stage below;
#   BINARY_FROM=host             target/release/vcl-serve (or --build-arg BINARY=...)
#                                from the build context, for hosts that build it
#                                themselves (no Rust image to pull).
#
#   docker build -t vcl-serve .
#   docker build --build-arg VARIANT=cpu -t vcl-serve:cpu .
#   docker run --gpus all -p 8080:8080 -v "$PWD/exports:/models:ro" vcl-serve
#
# The host needs the NVIDIA driver and the NVIDIA Container Toolkit (libcuda comes from
# the host). Without a GPU the GPU image serves on the CPU: pass -e VCL_DEVICE=cpu, or
# keep VCL_DEVICE=auto, which falls back to the CPU and logs it. Every flag of
# vcl-serve is an environment variable (VCL_MAX_BATCH_SIZE, VCL_API_KEY_FILE, ...;
# `vcl-serve --help`). Send SIGHUP (docker kill -s HUP) or POST /v1/repository/reload
# after exporting a new version.

ARG BINARY_FROM=build

# ---- build: only the server crate compiles (no libtorch needed) ----
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY build-support build-support
COPY contract contract
COPY dataset dataset
COPY server server
COPY trainer trainer
COPY tests tests
RUN cargo build --release --locked -p vcl-server --bin vcl-serve \
 && strip target/release/vcl-serve \
 && install -D target/release/vcl-serve /out/vcl-serve

# ---- or the binary the host built (BINARY_FROM=host), at BINARY in the context ----
FROM scratch AS host
ARG BINARY=target/release/vcl-serve
COPY ${BINARY} /out/vcl-serve

FROM ${BINARY_FROM} AS binary

# ---- run ----
FROM debian:bookworm-slim
ARG ONNXRUNTIME_VERSION=1.31.1
ARG VARIANT=gpu
# A CA bundle for pip where the build's network needs one (scripts/image.sh mounts it).
ARG PIP_CERT
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's stable packages, unpinned on purpose: bookworm only ships security fixes,
# and exact versions vanish from the mirror when one lands (the build would break).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/*
# The GPU wheel's [cuda,cudnn] extras bring CUDA's runtime, cuBLAS, cuFFT, cuRAND and
# cuDNN as wheels; ld.so learns where they are so that the CUDA provider finds them.
RUN case "$VARIANT" in \
      gpu) ORT="onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_VERSION}" ;; \
      cpu) ORT="onnxruntime==${ONNXRUNTIME_VERSION}" ;; \
      *) echo "VARIANT must be gpu or cpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && python3 -m venv /opt/ort \
 && /opt/ort/bin/pip install --no-cache-dir "$ORT" \
 && ORT_LIB="$(find /opt/ort -name "libonnxruntime.so.${ONNXRUNTIME_VERSION}" | head -n1)" \
 && test -n "$ORT_LIB" \
 && ln -s "$ORT_LIB" /opt/ort/libonnxruntime.so \
 && { find /opt/ort -path '*/nvidia/*' -name 'lib*.so*' -printf '%h\n' | sort -u; dirname "$ORT_LIB"; } \
      > /etc/ld.so.conf.d/onnxruntime-wheels.conf \
 && ldconfig
COPY --from=binary /out/vcl-serve /usr/local/bin/vcl-serve
RUN useradd --system --uid 10001 --no-create-home vcl && mkdir -p /models && chown 10001 /models
USER 10001
ENV ORT_DYLIB_PATH=/opt/ort/libonnxruntime.so \
    VCL_MODEL_REPOSITORY=/models \
    VCL_HOST=0.0.0.0 \
    VCL_PORT=8080 \
    VCL_DEVICE=auto \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RUST_LOG=info
EXPOSE 8080
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["/bin/sh", "-c", "curl -fs \"http://127.0.0.1:${VCL_PORT}/readyz\" >/dev/null || exit 1"]
# tini as PID 1: passes SIGTERM (drain) and SIGHUP (reload) on, and reaps children.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/vcl-serve"]
