#!/usr/bin/env bash
# Headless Chromium for the test that opens `vcl report`'s page (Debian's package).
# Installs it when missing and this is root with apt-get; otherwise says how (the test
# then fails with the same advice, unless VCL_SKIP_BROWSER_TESTS=1).
set -euo pipefail
BIN="${VCL_CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$BIN" || "${VCL_SKIP_BROWSER_TESTS:-0}" == 1 ]]; then exit 0; fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's chromium for the report test"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
  [[ -x "$BIN" ]] || { echo "setup: chromium did not install at $BIN" >&2; exit 1; }
else
  echo "setup: $BIN is missing: sudo apt-get install chromium (or VCL_SKIP_BROWSER_TESTS=1)" >&2
fi
