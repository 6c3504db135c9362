#!/usr/bin/env bash
# vcl-serve's image, built here with podman from the top-level Dockerfile: no Docker
# engine and no registry needed. Makes the debian:bookworm-slim base from Debian itself
# (debootstrap) when podman lacks it, builds vcl-serve on the host, then the image with
# BINARY_FROM=host, and prints its size. Idempotent: seconds when nothing changed.
#
#   scripts/image.sh [cpu|gpu] [TAG]      (default: cpu, vcl-serve:<variant>)
#
# VCL_SERVE_BIN=target/debug/vcl-serve puts that binary in instead of a release build
# (the test suite's, which it has built already).
# Needs root, podman, runc and debootstrap (scripts/setup_deploy.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${1:-cpu}
TAG=${2:-vcl-serve:$VARIANT}
source scripts/podman_env.sh

if ! pod image exists debian:bookworm-slim; then
  MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  ROOTFS=$(mktemp -d)
  trap 'rm -rf "$ROOTFS"' EXIT
  echo "image: debootstrapping the bookworm base from $MIRROR"
  debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >/dev/null
  tar -C "$ROOTFS" -c . | pod import - debian:bookworm-slim >/dev/null
fi

BINARY=${VCL_SERVE_BIN:-target/release/vcl-serve}
if [ -z "${VCL_SERVE_BIN:-}" ]; then
  source scripts/env.sh
  cargo build --release --quiet -p vcl-server --bin vcl-serve
fi
[ -x "$BINARY" ] || { echo "image: $BINARY is not a built vcl-serve" >&2; exit 1; }

# The build reaches PyPI through this machine's network; where that network needs a CA
# of its own (a TLS proxy), pip inside the build is given the host's bundle.
CA_ARGS=()
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
  CA_ARGS=(-v "$PIP_CERT:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
START=$(date +%s)
pod build --network=host --layers "${CA_ARGS[@]}" \
  --build-arg VARIANT="$VARIANT" --build-arg BINARY_FROM=host --build-arg BINARY="$BINARY" \
  -t "$TAG" . >&2
echo "image: $TAG built in $(( $(date +%s) - START )) s, $(pod image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
