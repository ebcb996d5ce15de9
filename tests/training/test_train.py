"""The TRL stages train real LoRA adapters on a tiny random Llama, on CPU, without downloads."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
)

from tests.training.tiny import NOTES, offline_tokenizer, tiny_policy
from training.pipeline.lora import latest_checkpoint, merge_adapter, precision
from training.pipeline.train_dpo import DPOStageArgs, run_dpo
from training.pipeline.train_online_dpo import OnlineDPOStageArgs, run_online_dpo
from training.pipeline.train_sft import SFTStageArgs, assistant_only_supported, run_sft

FAST = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 96}


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    """Any attempt to reach the Hub fails instead of downloading."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


def write_rows(folder: Path, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random Llama with a real chat tokenizer, and small SFT, DPO and prompt datasets."""
    root = tmp_path_factory.mktemp("train")
    tiny_policy(root / "base")
    user = [[{"role": "user", "content": f"write a {note}"}] for note in NOTES]
    short = [{"role": "assistant", "content": "what is it for ?"}]
    long = [[{"role": "assistant", "content": note}] for note in NOTES]
    return {
        "base": root / "base",
        "sft": write_rows(root / "sft", [{"messages": u + short} for u in user]),
        "dpo": write_rows(
            root / "dpo",
            [
                {"prompt": u, "chosen": short, "rejected": r}
                for u, r in zip(user, long, strict=True)
            ],
        ),
        "prompts": write_rows(
            root / "prompts", [{"prompt": u, "task_id": f"task-{i}"} for i, u in enumerate(user)]
        ),
        "root": root,
    }


def test_assistant_only_loss_is_used_only_where_the_template_marks_assistant_turns() -> None:
    tokenizer = offline_tokenizer()
    assert not assistant_only_supported(tokenizer)  # SmolLM2's ChatML has no generation markers
    tokenizer.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    )
    assert assistant_only_supported(tokenizer)


def test_training_runs_in_bf16_on_cpu_and_on_bf16_gpus() -> None:
    chosen = precision()
    if torch.cuda.is_available():
        assert chosen.bf16 == torch.cuda.is_bf16_supported()
    else:
        assert (chosen.dtype, chosen.bf16, chosen.use_cpu) == (torch.bfloat16, True, True)


def lora_b(adapter: Path) -> dict[str, torch.Tensor]:
    weights = load_file(adapter / "adapter_model.safetensors")
    return {name: value for name, value in weights.items() if "lora_B" in name}


def trained(adapter: Path) -> bool:
    """LoRA initialises B to zero, so any nonzero B means an optimizer step reached the adapter."""
    return any(bool(value.abs().sum() > 0) for value in lora_b(adapter).values())


def global_step(output_dir: Path) -> int:
    checkpoint = latest_checkpoint(output_dir)
    assert checkpoint is not None
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]


@pytest.fixture(scope="module")
def sft(world: dict[str, Path]) -> dict[str, Any]:
    """Two SFT steps from the base, with the progress reports they made."""
    reports: list[tuple[int, int]] = []
    args = SFTStageArgs(
        model_path=str(world["base"]), dataset_path=str(world["sft"]),
        output_dir=str(world["root"] / "sft-run"), learning_rate=1e-3, max_steps=2,
        save_steps=2, logging_steps=1, **FAST,
    )  # fmt: skip
    adapter = run_sft(args, on_progress=lambda step, total, logs: reports.append((step, total)))
    return {"args": args, "adapter": adapter, "reports": reports}


def test_sft_writes_an_adapter_with_the_paper_lora_settings(sft: dict[str, Any]) -> None:
    adapter = sft["adapter"]
    assert adapter == Path(sft["args"].output_dir) / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (32, 16, 0.1)
    assert config["task_type"] == "CAUSAL_LM"


def test_sft_moves_the_lora_weights_away_from_their_init(sft: dict[str, Any]) -> None:
    assert lora_b(sft["adapter"])
    assert trained(sft["adapter"])


def test_sft_reports_progress_with_increasing_steps(sft: dict[str, Any]) -> None:
    steps = [step for step, _ in sft["reports"]]
    assert steps == sorted(steps)
    assert (steps[0], steps[-1]) == (1, 2)
    assert {total for _, total in sft["reports"]} == {2}


def test_a_rerun_of_sft_resumes_from_its_checkpoint(sft: dict[str, Any], tmp_path: Path) -> None:
    output_dir = tmp_path / "sft-run"
    shutil.copytree(sft["args"].output_dir, output_dir)
    reports: list[int] = []
    args = SFTStageArgs(**{**vars(sft["args"]), "output_dir": str(output_dir), "max_steps": 4})
    run_sft(args, on_progress=lambda step, total, logs: reports.append(step))
    assert reports[0] == 3
    assert global_step(output_dir) == 4


def dpo_args(world: dict[str, Path], output_dir: Path, init: Path | None) -> DPOStageArgs:
    return DPOStageArgs(
        model_path=str(world["base"]), dataset_path=str(world["dpo"]),
        output_dir=str(output_dir), init_adapter=str(init) if init else None,
        learning_rate=1e-3, max_steps=2, save_steps=2, logging_steps=1, **FAST,
    )  # fmt: skip


def test_dpo_trains_a_fresh_adapter_from_the_base(world: dict[str, Path], tmp_path: Path) -> None:
    adapter = run_dpo(dpo_args(world, tmp_path / "dpo", init=None))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (32, 16, 0.1)
    assert trained(adapter)
    assert global_step(tmp_path / "dpo") == 2


def test_dpo_continues_the_sft_adapter_and_saves_only_it(
    world: dict[str, Path], sft: dict[str, Any], tmp_path: Path
) -> None:
    adapter = run_dpo(dpo_args(world, tmp_path / "dpo", init=sft["adapter"]))
    before, after = lora_b(sft["adapter"]), lora_b(adapter)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert not (adapter / "ref").exists()  # TRL's frozen reference copy stays out of the result


def test_online_dpo_trains_against_the_injected_reward(
    world: dict[str, Path], tmp_path: Path
) -> None:
    calls: list[dict[str, Any]] = []

    def prefer_shorter(prompts, completions, task_id, **kwargs) -> list[float]:
        calls.append({"prompts": prompts, "task_id": list(task_id)})
        return [-float(len(completion[0]["content"])) for completion in completions]

    args = OnlineDPOStageArgs(
        model_path=str(world["base"]), dataset_path=str(world["prompts"]),
        output_dir=str(tmp_path / "online"), learning_rate=1e-3, max_steps=2, save_steps=2,
        logging_steps=1, max_new_tokens=6, **FAST,
    )  # fmt: skip
    adapter = run_online_dpo(args, reward_func=prefer_shorter)
    assert len(calls) == 2
    for call in calls:
        # Two sampled completions per prompt, each scored with its own prompt's task id.
        assert len(call["prompts"]) == 2 * FAST["per_device_train_batch_size"]
        for prompt, task_id in zip(call["prompts"], call["task_id"], strict=True):
            assert prompt[0]["content"] == f"write a {NOTES[int(task_id.removeprefix('task-'))]}"
    assert trained(adapter)


def test_a_merged_adapter_loads_as_a_plain_model_that_differs_from_the_base(
    world: dict[str, Path], sft: dict[str, Any], tmp_path: Path
) -> None:
    merged = merge_adapter(world["base"], sft["adapter"], tmp_path / "merged")
    assert not (merged / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(merged, local_files_only=True)
    assert tokenizer.chat_template
    inputs = tokenizer(f"write a {NOTES[0]}", return_tensors="pt").input_ids
    logits = {}
    for name, path in {"base": world["base"], "merged": merged}.items():
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        assert model.dtype == torch.float32
        with torch.no_grad():
            logits[name] = model(inputs).logits
    assert not torch.allclose(logits["base"], logits["merged"])
