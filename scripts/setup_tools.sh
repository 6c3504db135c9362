#!/usr/bin/env bash
# The test tools that are Python programs, in their own venv (.cache/tools-venv) so
# that their dependencies never meet torch's: schemathesis, which checks vcl-serve
# against its own OpenAPI document in the test suite. Pinned; ~20 ms when in place.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.cache/tools-venv
SCHEMATHESIS=4.32.5
if [ -x "$VENV/bin/schemathesis" ] && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$SCHEMATHESIS')" 2>/dev/null; then
  exit 0
fi
echo "setup_tools: installing schemathesis==$SCHEMATHESIS into $VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --no-cache-dir -q "schemathesis==$SCHEMATHESIS"
