"""Pieces shared by the TRL training stages: LoRA settings, local model loading, precision, merging.

Every stage trains a LoRA adapter on a frozen base and writes it to `<output_dir>/adapter`, so
each stage's result serves on the same base (vLLM base + LoRA) or, merged, on servers without LoRA:

```bash
python -m training.pipeline.lora --base .local/models/smollm2-135m-bf16 \
    --adapter runs/1/sft/adapter --out runs/1/sft/merged
```
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

ProgressFn = Callable[[int, int, dict[str, Any]], None]


@dataclass
class LoraSettings:
    """LoRA hyperparameters; the defaults are the paper's (r 32, alpha 16, dropout 0.1)."""

    r: int = field(default=32, metadata={"aliases": ["--lora_r"], "help": "LoRA rank."})
    alpha: int = field(default=16, metadata={"aliases": ["--lora_alpha"], "help": "LoRA alpha."})
    dropout: float = field(
        default=0.1, metadata={"aliases": ["--lora_dropout"], "help": "LoRA dropout."}
    )
    # The paper does not name its target modules; "all-linear" (every linear layer but the LM head)
    # is peft's and QLoRA's choice and what TRL's scripts recommend for LoRA at this rank.
    target_modules: str = field(
        default="all-linear",
        metadata={
            "aliases": ["--lora_target_modules"],
            "help": "'all-linear' or comma-separated module names (q_proj,v_proj).",
        },
    )

    def to_peft(self) -> LoraConfig:
        """The peft LoraConfig for a causal LM."""
        modules: str | list[str] = self.target_modules
        if modules != "all-linear":
            modules = [name.strip() for name in self.target_modules.split(",") if name.strip()]
        return LoraConfig(
            task_type="CAUSAL_LM",
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=modules,
        )


@dataclass(frozen=True)
class Precision:
    """The dtype to load the base in and the matching TrainingArguments flags."""

    dtype: torch.dtype
    bf16: bool
    use_cpu: bool


def precision() -> Precision:
    """bf16 on a bf16-capable GPU or on CPU (where torch trains in bf16 fine), else fp32."""
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        return Precision(torch.bfloat16 if bf16 else torch.float32, bf16=bf16, use_cpu=False)
    # transformers only accepts bf16 without a GPU when told it runs on the CPU (use_cpu).
    return Precision(torch.bfloat16, bf16=True, use_cpu=True)


def load_policy(
    model_path: str | Path, *, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local folder; never downloads."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_path), dtype=dtype, local_files_only=True
    )
    if tokenizer.pad_token is None:
        # Padding is masked out of every loss, so reusing EOS is safe and needs no new embedding.
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_train_split(dataset_path: str | Path) -> Dataset:
    """The `train.parquet` of a dataset folder, held in memory (no datasets cache files)."""
    return Dataset.from_list(pq.read_table(Path(dataset_path) / "train.parquet").to_pylist())


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` folder under output_dir, for a restarted stage to resume from."""
    if not Path(output_dir).is_dir():
        return None
    return get_last_checkpoint(str(output_dir))


def common_config(
    output_dir: str | Path, *, seed: int, save_steps: int, logging_steps: int
) -> dict[str, Any]:
    """TrainingArguments shared by every stage: precision, checkpoints, logging, no trackers."""
    chosen = precision()
    return {
        "output_dir": str(output_dir),
        "seed": seed,
        "bf16": chosen.bf16,
        "use_cpu": chosen.use_cpu,
        "save_strategy": "steps",
        "save_steps": save_steps,
        # Two checkpoints: the newest may be half-written when a worker dies mid-save.
        "save_total_limit": 2,
        "logging_steps": logging_steps,
        "report_to": "none",
    }


def save_adapter(model: object, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    """Write only the trained `default` adapter (DPO adds a frozen `ref` copy) and the tokenizer."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"expected the trainer's PEFT model, got {type(model).__name__}")
    model.save_pretrained(str(out), selected_adapters=["default"])
    tokenizer.save_pretrained(str(out))
    return out


def merge_adapter(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """Merge a LoRA adapter into its base and write a float32 safetensors model + tokenizer."""
    # float32 so the merged weights carry the adapter's small deltas; bf16 would round many away.
    model, tokenizer = load_policy(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter), local_files_only=True)
    merged = merged.merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return Path(out)


class ProgressCallback(TrainerCallback):
    """Reports (global step, total steps, logs) to `on_progress` as training goes.

    Logs go out once, with the step that logged them; a step that logged nothing reports {}.
    """

    def __init__(self, on_progress: ProgressFn) -> None:
        self.on_progress = on_progress

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Report the logs with the step that made them."""
        self.on_progress(state.global_step, state.max_steps, dict(logs or {}))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Report each finished optimizer step."""
        self.on_progress(state.global_step, state.max_steps, {})


def main() -> None:
    """Merge an adapter into its base from the command line."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print(merge_adapter(args.base, args.adapter, args.out))


if __name__ == "__main__":
    main()
