"""The simulated benchmark for a study's arms: each active arm (endpoint, model or adapter, system
prompt, generation parameters) chats with the simulated user on the held-out offline tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models_serving.prompts import load_prompt
from studies.models import Condition, ModelEndpoint, Study
from studies.services.endpoints import endpoint_client_spec
from training.pipeline.benchmark import Arm, BenchmarkResult, run_benchmark, write_result
from training.pipeline.progress import run_reporting
from training.pipeline.settings import (
    JsonMode,
    RewardSettings,
    Role,
    Roles,
    SamplingSettings,
    as_record,
)
from training.pipeline.tasks import TaskKind
from training.pipeline.tasksets import load_tasks


def json_mode_for(endpoint: ModelEndpoint) -> JsonMode:
    """The llama.cpp server takes json_object with a schema; vLLM and hosted APIs json_schema."""
    return "json_object" if endpoint.server == "llama_cpp" else "json_schema"


def study_arms(study: Study) -> list[Arm]:
    """The study's active arms as they are configured now."""
    conditions = Condition.objects.filter(study=study, is_active=True).select_related("endpoint")
    arms = []
    for c in conditions.order_by("id"):
        spec = endpoint_client_spec(c.endpoint, c.model_name)
        prompt = load_prompt(c.system_prompt, c.prompt_version or None).text
        role = Role(spec, dict(c.generation_params), json_mode_for(c.endpoint), prompt)
        arms.append(Arm(c.key, role))
    return arms


def roles_from(endpoint: ModelEndpoint, max_tokens: int) -> Roles:
    """Simulator, judge and extractor all served by one endpoint."""
    role = Role(
        endpoint_client_spec(endpoint),
        {"max_tokens": max_tokens, "temperature": 0.7},
        json_mode_for(endpoint),
    )
    return Roles.single(role)


def study_benchmark(
    study: Study,
    *,
    out: Path,
    kinds: list[TaskKind],
    limit: int,
    max_turns: int,
    simulator: ModelEndpoint | None = None,
    max_tokens: int = 256,
) -> tuple[BenchmarkResult, Path]:
    """Run every active arm on `limit` held-out tasks of each kind; write the Table-1 files."""
    arms = study_arms(study)
    if not arms:
        raise ValueError(f"study {study.slug!r} has no active arm")
    endpoint = (
        simulator
        or Condition.objects.filter(study=study, is_active=True).order_by("id").first().endpoint
    )  # type: ignore[union-attr]
    tasks = [t for kind in kinds for t in load_tasks(kind, split="heldout")[:limit]]
    sampling, reward = SamplingSettings(max_turns=max_turns), RewardSettings()
    roles = roles_from(endpoint, max_tokens)
    result = run_reporting(
        lambda report: run_benchmark(arms, roles, tasks, sampling, reward, report), None
    )
    record: dict[str, Any] = as_record(sampling, reward) | {
        "study": study.slug,
        "simulator": endpoint.name,
        "arms": [a.name for a in arms],
        "tasks": [t.id for t in tasks],
    }
    return result, write_result(result, out, record)
