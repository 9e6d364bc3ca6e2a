# Sourced by the scripts: where things live and the environment tritonserver needs.
# Every path can be overridden from the caller's environment.
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VENV:-$ROOT/.venv}
TRITON_BACKENDS=${TRITON_BACKENDS:-$ROOT/.triton/backends}
MODEL_STORE=${MODEL_STORE:-$ROOT/model_store}
MODEL_REPOSITORY=${MODEL_REPOSITORY:-$ROOT/model_repository}
export ROOT VENV TRITON_BACKENDS MODEL_STORE MODEL_REPOSITORY
