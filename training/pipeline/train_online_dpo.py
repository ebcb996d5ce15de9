"""Online DPO stage (paper: beta 0.1, lr 5e-6, batch 32, 1 epoch, from the offline DPO adapter).

The policy samples two completions per prompt, the injected reward function (the Multiturn-aware
Reward, which reads `task_id`) scores them, and the better one is trained as chosen. The reward
is code, named on the command line as `module:function` (or passed to `run_online_dpo`):

```bash
python -m training.pipeline.train_online_dpo \
    --model_path .local/models/smollm2-135m-bf16 \
    --init_adapter runs/1/dpo/adapter \
    --dataset_path runs/1/data/prompts \
    --output_dir runs/1/online_dpo \
    --reward my_rewards:multiturn_reward \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 8 \
    --max_new_tokens 256
```

The dataset folder holds `train.parquet` with `prompt` (a list of messages) and `task_id`. The
reward function is called like GRPO's: `reward_func(prompts=..., completions=..., task_id=[...],
completion_ids=..., trainer_state=...) -> list[float]`, with two entries per prompt. Generation
uses `model.generate` (no vLLM), which works on CPU.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from peft import PeftModel
from transformers import HfArgumentParser
from trl.import_utils import TRLExperimentalWarning

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

with warnings.catch_warnings():
    # trl is pinned at 1.16, where online DPO lives only under trl.experimental; the notice that
    # the API may change says nothing the pin does not.
    warnings.simplefilter("ignore", TRLExperimentalWarning)
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

RewardFunc = Callable[..., list[float]]


@dataclass
class OnlineDPOStageArgs:
    """Arguments of the online DPO stage."""

    model_path: str = field(metadata={"help": "Local folder of the base model."})
    dataset_path: str = field(metadata={"help": "Folder holding train.parquet (prompt, task_id)."})
    output_dir: str = field(metadata={"help": "Checkpoints go here, the adapter to ./adapter."})
    init_adapter: str | None = field(
        default=None, metadata={"help": "Offline DPO adapter to continue from; base if omitted."}
    )
    beta: float = 0.1
    learning_rate: float = 5e-6
    # The paper's batch of 32 prompts = per-device batch x accumulation steps x devices.
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 8
    num_train_epochs: float = 1.0
    max_steps: int = field(default=-1, metadata={"help": "Overrides epochs when > 0."})
    max_new_tokens: int = 256
    max_length: int = 2048
    temperature: float = 0.9
    # Checkpointing saves memory on an 8B policy but turns off the KV cache while sampling.
    gradient_checkpointing: bool = True
    seed: int = 42
    save_steps: int = 20
    logging_steps: int = 5
    lora: LoraSettings = field(
        default_factory=LoraSettings,
        metadata={"help": "Not a flag; use the --lora_* flags (ignored with --init_adapter)."},
    )


@dataclass
class RewardArgs:
    """The reward function, for the command line."""

    reward: str = field(metadata={"help": "module:function returning one float per completion."})


def online_config(args: OnlineDPOStageArgs) -> OnlineDPOConfig:
    """The OnlineDPOConfig for these stage arguments."""
    return OnlineDPOConfig(
        **common_config(
            args.output_dir,
            seed=args.seed,
            save_steps=args.save_steps,
            logging_steps=args.logging_steps,
        ),
        beta=[args.beta],
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        max_new_tokens=args.max_new_tokens,
        max_length=args.max_length,
        temperature=args.temperature,
        gradient_checkpointing=args.gradient_checkpointing,
    )


def run_online_dpo(
    args: OnlineDPOStageArgs, reward_func: RewardFunc, on_progress: ProgressFn | None = None
) -> Path:
    """Train the online DPO adapter against reward_func and return its folder."""
    model: Any
    model, tokenizer = load_policy(args.model_path, dtype=precision().dtype)
    if args.init_adapter:
        # Continued, not merged, so the adapter stays one of the original base (served as base +
        # LoRA). TRL 1.16 then keeps a frozen full copy of the policy as reference (the offline
        # DPO policy): about 16 GB more in bf16 for an 8B base.
        model = PeftModel.from_pretrained(
            model, args.init_adapter, is_trainable=True, local_files_only=True
        )
    trainer = OnlineDPOTrainer(
        model=model,
        reward_funcs=[cast(Any, reward_func)],
        args=online_config(args),
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
    parser = HfArgumentParser((OnlineDPOStageArgs, LoraSettings, RewardArgs))  # type: ignore[arg-type]
    stage, lora, reward = parser.parse_args_into_dataclasses()
    stage.lora = lora
    module, _, name = reward.reward.partition(":")
    print(run_online_dpo(stage, getattr(importlib.import_module(module), name)))


if __name__ == "__main__":
    main()
