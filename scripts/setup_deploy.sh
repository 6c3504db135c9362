#!/usr/bin/env bash
# Debian's packages for the deployment tests: podman, runc and debootstrap (the test
# that builds and runs vcl-serve's image; no Docker engine or registry needed), nginx
# (two replicas behind it, one killed), and slurm-wlm + munge (a real one-node Slurm
# that runs a study as an array, scripts/slurm.sh). Installs them when missing and this
# is root with apt-get; otherwise says how, and those tests skip with the reason they
# print.
set -euo pipefail
PACKAGES=(podman runc debootstrap nginx slurm-wlm munge)
if command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
  && [ -x /usr/sbin/nginx ] && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/munged ]; then
  exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's ${PACKAGES[*]} for the deployment tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${PACKAGES[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq "${PACKAGES[@]}" >/dev/null; }
else
  echo "setup: sudo apt-get install ${PACKAGES[*]} (the image, failover and Slurm tests skip without them)" >&2
fi
