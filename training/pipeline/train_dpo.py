"""Offline DPO stage (paper: beta 0.1, lr 5e-6, batch 64, 8 epochs, from base or from SFT).

```bash
python -m training.pipeline.train_dpo \
    --model_path .local/models/smollm2-135m-bf16 \
    --init_adapter runs/1/sft/adapter \
    --dataset_path runs/1/data/dpo \
    --output_dir runs/1/dpo \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 8
```

The dataset folder holds `train.parquet` in TRL's conversational preference format: `prompt` (a
list of messages), `chosen` and `rejected` (each a one-message assistant list). The adapter is
written to `<output_dir>/adapter`; rerunning with the same output_dir resumes from its newest
checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import HfArgumentParser, PreTrainedModel
from trl import DPOConfig, DPOTrainer

from training.pipeline.lora import (
    LoraSettings,
    ProgressCallback,
    ProgressFn,
    common_config,
    latest_checkpoint,
    load_policy,
    load_train_split,
    precision,
    save_adapter,
)


@dataclass
class DPOStageArgs:
    """Arguments of the offline DPO stage."""

    model_path: str = field(metadata={"help": "Local folder of the base model."})
    dataset_path: str = field(metadata={"help": "Folder holding train.parquet (preferences)."})
    output_dir: str = field(metadata={"help": "Checkpoints go here, the adapter to ./adapter."})
    init_adapter: str | None = field(
        default=None, metadata={"help": "SFT adapter to continue from; the base when omitted."}
    )
    beta: float = 0.1
    learning_rate: float = 5e-6
    # The paper's batch of 64 = per-device batch x accumulation steps x devices.
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 8
    num_train_epochs: float = 8.0
    max_steps: int = field(default=-1, metadata={"help": "Overrides epochs when > 0."})
    max_length: int = 2048
    seed: int = 42
    save_steps: int = 50
    logging_steps: int = 10
    lora: LoraSettings = field(
        default_factory=LoraSettings,
        metadata={"help": "Not a flag; use the --lora_* flags (ignored with --init_adapter)."},
    )


def policy_with_adapter(base: PreTrainedModel, init_adapter: str) -> PeftModel:
    """The base with a trainable copy of an earlier stage's adapter."""
    # Continue the SFT adapter rather than merging it: the DPO adapter then stays an adapter of
    # the original base, so every stage serves as base + LoRA, and TRL 1.16 copies the loaded
    # adapter into a frozen "ref" adapter, so the DPO reference is the SFT policy, as in the paper.
    return PeftModel.from_pretrained(base, init_adapter, is_trainable=True, local_files_only=True)


def run_dpo(args: DPOStageArgs, on_progress: ProgressFn | None = None) -> Path:
    """Train the offline DPO adapter and return its folder (`output_dir/adapter`)."""
    model: Any
    model, tokenizer = load_policy(args.model_path, dtype=precision().dtype)
    if args.init_adapter:
        model = policy_with_adapter(model, args.init_adapter)
    config = DPOConfig(
        **common_config(
            args.output_dir,
            seed=args.seed,
            save_steps=args.save_steps,
            logging_steps=args.logging_steps,
        ),
        beta=args.beta,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        max_length=args.max_length,
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=load_train_split(args.dataset_path),
        processing_class=tokenizer,
        peft_config=None if args.init_adapter else args.lora.to_peft(),
        callbacks=[ProgressCallback(on_progress)] if on_progress else None,
    )
    trainer.train(resume_from_checkpoint=latest_checkpoint(args.output_dir))
    adapter = save_adapter(trainer.model, tokenizer, Path(args.output_dir) / "adapter")
    trainer.end()
    return adapter


def main() -> None:
    """Parse the command line and run the stage."""
    parser = HfArgumentParser((DPOStageArgs, LoraSettings))  # type: ignore[arg-type]
    stage, lora = parser.parse_args_into_dataclasses()
    stage.lora = lora
    print(run_dpo(stage))


if __name__ == "__main__":
    main()
