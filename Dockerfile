# vcl-serve, the GPU serving image: the server binary plus ONNX Runtime's CUDA build
# from PyPI (onnxruntime-gpu, the same release as the CPU wheel the project pins, with
# its CUDA and cuDNN libraries as wheels too, so the base image needs no CUDA).
#
#   docker build -t vcl-serve .
#   docker run --gpus all -p 8080:8080 -v "$PWD/exports:/models:ro" vcl-serve
#
# The host needs the NVIDIA driver and the NVIDIA Container Toolkit (libcuda comes from
# the host). Without a GPU the same image serves on the CPU: pass -e VCL_DEVICE=cpu,
# or keep VCL_DEVICE=auto, which falls back to the CPU and logs it. Send SIGHUP
# (docker kill -s HUP) or POST /v1/repository/reload after exporting a new version.

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
 && strip target/release/vcl-serve

# ---- run ----
FROM debian:bookworm-slim
ARG ONNXRUNTIME_VERSION=1.31.1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/*
# The [cuda,cudnn] extras bring CUDA's runtime, cuBLAS, cuFFT, cuRAND and cuDNN as
# wheels; ld.so learns where they are so that the CUDA provider finds them.
RUN python3 -m venv /opt/ort \
 && /opt/ort/bin/pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_VERSION}" \
 && ORT_LIB="$(find /opt/ort -name "libonnxruntime.so.${ONNXRUNTIME_VERSION}" | head -n1)" \
 && test -n "$ORT_LIB" \
 && ln -s "$ORT_LIB" /opt/ort/libonnxruntime.so \
 && find /opt/ort -path '*/nvidia/*' -name 'lib*.so*' -printf '%h\n' | sort -u > /etc/ld.so.conf.d/nvidia-wheels.conf \
 && dirname "$ORT_LIB" >> /etc/ld.so.conf.d/nvidia-wheels.conf \
 && ldconfig
COPY --from=build /src/target/release/vcl-serve /usr/local/bin/vcl-serve
RUN useradd --system --uid 10001 vcl && mkdir -p /models && chown vcl /models
USER vcl
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
  CMD curl -fs "http://127.0.0.1:${VCL_PORT}/readyz" >/dev/null || exit 1
# tini as PID 1: passes SIGTERM (drain) and SIGHUP (reload) on, and reaps children.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/vcl-serve"]
