"""SFT stage: LoRA on the chosen conversation paths (paper: lr 1e-5, batch 64, 3 epochs, from base).

```bash
python -m training.pipeline.train_sft \
    --model_path .local/models/smollm2-135m-bf16 \
    --dataset_path runs/1/data/sft \
    --output_dir runs/1/sft \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 8 \
    --lora_r 32 --lora_alpha 16 --lora_dropout 0.1
```

The dataset folder holds `train.parquet` with a `messages` column (chat format). The adapter is
written to `<output_dir>/adapter`; rerunning with the same output_dir resumes from its newest
checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

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

logger = logging.getLogger(__name__)


@dataclass
class SFTStageArgs:
    """Arguments of the SFT stage."""

    model_path: str = field(metadata={"help": "Local folder of the base model."})
    dataset_path: str = field(metadata={"help": "Folder holding train.parquet (messages)."})
    output_dir: str = field(metadata={"help": "Checkpoints go here, the adapter to ./adapter."})
    learning_rate: float = 1e-5
    # The paper's batch of 64 = per-device batch x accumulation steps x devices.
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 8
    num_train_epochs: float = 3.0
    max_steps: int = field(default=-1, metadata={"help": "Overrides epochs when > 0."})
    max_length: int = 2048
    seed: int = 42
    save_steps: int = 50
    logging_steps: int = 10
    lora: LoraSettings = field(
        default_factory=LoraSettings, metadata={"help": "Not a flag; use the --lora_* flags."}
    )


def assistant_only_supported(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether TRL can mask the loss to assistant turns with this tokenizer's chat template."""
    if tokenizer.chat_template is None:
        return False
    if has_generation_markers(tokenizer.chat_template):
        return True
    try:
        # TRL ships {% generation %}-marked copies of a few known templates (Llama 3, Qwen, ...).
        get_training_chat_template(tokenizer)
    except ValueError:
        return False
    return True


def run_sft(args: SFTStageArgs, on_progress: ProgressFn | None = None) -> Path:
    """Train the SFT adapter and return its folder (`output_dir/adapter`)."""
    model: Any
    model, tokenizer = load_policy(args.model_path, dtype=precision().dtype)
    assistant_only = assistant_only_supported(tokenizer)
    if not assistant_only:
        # SmolLM2's and Llama 3.1's templates have no {% generation %} markers and TRL 1.16 has no
        # patched copy of them, so the loss covers the whole conversation, user turns included.
        logger.warning("chat template cannot mask assistant turns; training on all tokens")
    config = SFTConfig(
        **common_config(
            args.output_dir,
            seed=args.seed,
            save_steps=args.save_steps,
            logging_steps=args.logging_steps,
        ),
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        max_length=args.max_length,
        assistant_only_loss=assistant_only,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=load_train_split(args.dataset_path),
        processing_class=tokenizer,
        peft_config=args.lora.to_peft(),
        callbacks=[ProgressCallback(on_progress)] if on_progress else None,
    )
    trainer.train(resume_from_checkpoint=latest_checkpoint(args.output_dir))
    adapter = save_adapter(trainer.model, tokenizer, Path(args.output_dir) / "adapter")
    trainer.end()
    return adapter


def main() -> None:
    """Parse the command line and run the stage."""
    parser = HfArgumentParser((SFTStageArgs, LoraSettings))  # type: ignore[arg-type]
    stage, lora = parser.parse_args_into_dataclasses()
    stage.lora = lora
    print(run_sft(stage))


if __name__ == "__main__":
    main()
