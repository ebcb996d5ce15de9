"""What each stage of a run does: the plain-Python pipeline called with the run's settings.

Every function takes (run, stage, reporter) and returns a small JSON result for the stage row.
Each is safe to call again after a crash: collection skips conversations on disk, datasets are
rebuilt from them, and training resumes from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models_serving.prompts import load_prompt
from studies.models import ModelEndpoint
from studies.services.endpoints import endpoint_client_spec
from training.models import TrainingRun, TrainingStage
from training.pipeline import stages as pipeline
from training.pipeline.settings import RewardSettings, Role, Roles, SamplingSettings
from training.pipeline.tasks import Task
from training.pipeline.tasksets import load_tasks
from training.services.runs import Reporter, run_dir
from training.services.study_collect import collect_from_study

ARM_PROMPT = "collabllm"  # the system prompt the trained arm is served with, and trained under


def run_roles(run: TrainingRun) -> Roles:
    """Each role's endpoint (blank roles fall back to the policy endpoint)."""
    params = {"max_tokens": run.max_tokens, "temperature": 0.7}

    def role(endpoint: ModelEndpoint | None) -> Role:
        chosen = endpoint or run.policy_endpoint
        return Role(endpoint_client_spec(chosen), dict(params), run.json_mode)  # type: ignore[arg-type]

    return Roles(
        policy=role(run.policy_endpoint),
        user=role(run.user_endpoint),
        judge=role(run.judge_endpoint),
        extractor=role(run.extractor_endpoint),
    )


def run_sampling(run: TrainingRun) -> SamplingSettings:
    return SamplingSettings(
        window=run.window, samples=run.samples, candidates=run.candidates, max_turns=run.max_turns
    )


def run_reward(run: TrainingRun) -> RewardSettings:
    return RewardSettings(
        token_lambda=run.token_lambda, token_clamp=run.token_clamp, token_scope=run.token_scope
    )  # type: ignore[arg-type]


def train_tasks(run: TrainingRun) -> list[Task]:
    tasks = load_tasks(run.task_set, split="train")  # type: ignore[arg-type]
    return tasks[: run.task_limit] if run.task_limit else tasks


def collect(run: TrainingRun, stage: TrainingStage, reporter: Reporter) -> dict[str, Any]:
    """Simulate one conversation per training task, scoring candidates by MR; or, with a source
    study, score the real replies of its participants who agreed to training use."""
    source: dict[str, Any] = {}
    if run.source_study_id is not None:
        stats, source = collect_from_study(run, reporter)
        conversations = source["eligible"]
    else:
        tasks = train_tasks(run)
        conversations = len(tasks)
        reporter.log(
            f"collecting {len(tasks)} conversations (w={run.window}, S={run.samples}, "
            f"candidates={run.candidates})"
        )
        stats = pipeline.collect(
            run_dir(run),
            tasks,
            run_roles(run),
            run_sampling(run),
            run_reward(run),
            on_progress=reporter.progress,
        )
    reporter.log(f"{stats.calls} model calls, {stats.failures} failed")
    # Failed rollouts are left out of MR; how many, and how many candidates went unranked, say
    # whether the servers were healthy enough for the data to mean anything.
    failures = pipeline.reward_failures(pipeline.load_conversations(run_dir(run)))
    reporter.log(
        f"rollouts {failures['rollouts']}, {failures['unranked_candidates']} of "
        f"{failures['candidates']} candidates unranked, endings {failures['conversations_ended']}"
    )
    return {
        "conversations": conversations,
        **({"source_study": source} if source else {}),
        "calls": stats.calls,
        "failed_calls": stats.failures,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        **failures,
    }


def build_data(run: TrainingRun, stage: TrainingStage, reporter: Reporter) -> dict[str, Any]:
    """SFT, DPO and prompt datasets with their data cards."""
    counts = pipeline.build_datasets(
        run_dir(run),
        min_gap=float(run.stages.get("dpo", {}).get("min_gap", 0.0)),
        system_prompt=load_prompt(ARM_PROMPT).text,
    )
    reporter.progress(1, 1)
    reporter.log(f"rows: {counts}")
    if not counts["sft"]:
        raise RuntimeError("no conversation has an assistant turn: nothing to train on")
    return counts


def _progress(reporter: Reporter):
    return reporter.trained


def _hyper(run: TrainingRun, name: str) -> dict[str, Any]:
    stage = run.stages.get(name, {})
    per_device = int(run.stages.get("per_device_batch_size", 1))
    return {
        "learning_rate": float(stage["learning_rate"]),
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": max(
            1, int(stage.get("batch_size", per_device)) // per_device
        ),
        "num_train_epochs": float(stage.get("epochs", 1)),
        "max_steps": int(stage.get("max_steps", -1)),
        "max_length": int(run.stages.get("max_length", 2048)),
        "logging_steps": 1,  # a point per step on the progress page's loss curve
    }


def _adapter_before(run: TrainingRun, name: str) -> str | None:
    """The latest adapter an earlier training stage of this run produced."""
    earlier = (
        run.stage_rows.filter(
            name__in=("sft", "dpo", "online_dpo"),
            status=TrainingStage.Status.SUCCEEDED,
            position__lt=run.stage_rows.get(name=name).position,
        )
        .order_by("-position")
        .first()
    )
    return earlier.result.get("adapter") if earlier else None


def sft(run: TrainingRun, stage: TrainingStage, reporter: Reporter) -> dict[str, Any]:
    from training.pipeline.train_sft import SFTStageArgs, run_sft

    args = SFTStageArgs(
        model_path=run.base_model,
        dataset_path=str(run_dir(run) / "data/sft"),
        output_dir=str(run_dir(run) / "sft"),
        **_hyper(run, "sft"),
    )
    adapter = run_sft(args, on_progress=_progress(reporter))
    return {"adapter": str(adapter)}


def dpo(run: TrainingRun, stage: TrainingStage, reporter: Reporter) -> dict[str, Any]:
    from training.pipeline.train_dpo import DPOStageArgs, run_dpo

    if not (run_dir(run) / "data/dpo/train.parquet").exists():
        raise RuntimeError("no preference pairs (every turn's candidates tied or failed to score)")
    args = DPOStageArgs(
        model_path=run.base_model,
        dataset_path=str(run_dir(run) / "data/dpo"),
        output_dir=str(run_dir(run) / "dpo"),
        beta=float(run.stages["dpo"]["beta"]),
        init_adapter=_adapter_before(run, "dpo"),
        **_hyper(run, "dpo"),
    )
    adapter = run_dpo(args, on_progress=_progress(reporter))
    return {"adapter": str(adapter)}


def online_dpo(run: TrainingRun, stage: TrainingStage, reporter: Reporter) -> dict[str, Any]:
    from training.pipeline.train_online_dpo import OnlineDPOStageArgs, run_online_dpo

    if run.source_study_id is not None:
        # Its reward needs a hidden goal per prompt; a study's are its participants' (reply_task),
        # which the reward function does not take yet.
        raise RuntimeError("online DPO does not take a source study yet: use SFT and DPO")
    config = run.stages["online_dpo"]
    tasks = {t.id: t for t in train_tasks(run)}
    reward_fn = pipeline.mr_reward_function(
        run_roles(run), tasks, run_sampling(run), run_reward(run)
    )
    args = OnlineDPOStageArgs(
        model_path=run.base_model,
        dataset_path=str(run_dir(run) / "data/prompts"),
        output_dir=str(run_dir(run) / "online_dpo"),
        beta=float(config["beta"]),
        init_adapter=_adapter_before(run, "online_dpo"),
        max_new_tokens=int(config.get("max_new_tokens", 256)),
        **_hyper(run, "online_dpo"),
    )
    adapter = run_online_dpo(args, reward_func=reward_fn, on_progress=_progress(reporter))
    return {"adapter": str(adapter)}


def register(run: TrainingRun, stage: TrainingStage, reporter: Reporter) -> dict[str, Any]:
    from training.services.checkpoints import checkpoint_register

    adapter = _adapter_before(run, "register")
    if adapter is None or not Path(adapter).is_dir():
        raise RuntimeError(f"no adapter to register (last training stage gave {adapter!r})")
    checkpoint = checkpoint_register(run=run, adapter_path=adapter)
    reporter.progress(1, 1)
    reporter.log(f"registered {checkpoint.adapter_name} on endpoint {checkpoint.endpoint}")
    return {"checkpoint": checkpoint.pk, "adapter_name": checkpoint.adapter_name}


def evaluate(run: TrainingRun, stage: TrainingStage, reporter: Reporter) -> dict[str, Any]:
    from training.services.checkpoints import checkpoint_evaluate

    checkpoint = run.checkpoints.order_by("-created_at", "-id").first()
    if checkpoint is None:
        raise RuntimeError("the run registered no checkpoint")
    return checkpoint_evaluate(checkpoint=checkpoint, reporter=reporter)


STAGE_WORK = {
    "collect": collect,
    "build_data": build_data,
    "sft": sft,
    "dpo": dpo,
    "online_dpo": online_dpo,
    "register": register,
    "evaluate": evaluate,
}
