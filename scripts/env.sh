# Source this to build vcl by hand: `source scripts/env.sh && cargo build`.
# The Makefile does the same for its own commands.
VCL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export VIRTUAL_ENV="$VCL_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
# torch-sys asks the venv's python where libtorch (torch==2.13.0) lives.
export LIBTORCH_USE_PYTORCH=1
unset LIBTORCH
