#!/usr/bin/env bash
# GPU smoke check: tiny-model generation tokens/s and one SFT + DPO training step time, as JSON.
# For a GPU machine with PyTorch and transformers (no vLLM, no network needed); never run by CI.
#   bash benchmarks/gpu_check.sh                 # on the GPU
#   bash benchmarks/gpu_check.sh --device cpu    # anywhere, slowly
#   bash benchmarks/gpu_check.sh --dry-run       # only say what would run
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

if [ "${1:-}" = "--dry-run" ]; then
  echo "would run: $PYTHON benchmarks/gpu_check.py ${*:2}"
  "$PYTHON" - <<'PY'
import importlib.util
for name in ("torch", "transformers"):
    print(f"{name}: {'found' if importlib.util.find_spec(name) else 'missing (the check would skip)'}")
PY
  exit 0
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
