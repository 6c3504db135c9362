#!/usr/bin/env bash
# Debian's packages for the deployment tests: podman, runc and debootstrap (the test
# that builds and runs vcl-serve's image; no Docker engine or registry needed) and nginx
# (two replicas behind it, one killed). Installs them when missing and this is root
# with apt-get; otherwise says how, and those tests skip with the reason they print.
set -euo pipefail
if command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
  && [ -x /usr/sbin/nginx ]; then
  exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's podman, runc, debootstrap and nginx for the deployment tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq podman runc debootstrap nginx >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq podman runc debootstrap nginx >/dev/null; }
else
  echo "setup: sudo apt-get install podman runc debootstrap nginx (the image and failover tests skip without them)" >&2
fi
