"""The data stages of a training run as resumable functions over a run folder.

    python -m training.pipeline.stages collect --config run.yaml --run-dir runs/1
    python -m training.pipeline.stages build --run-dir runs/1 [--min-gap 0.05]

run.yaml names the endpoints (`endpoint` shared, or per role: policy, user, judge, extractor, each
with base_url, model, params, json_mode), `kind` (document, code or math), an optional `limit`,
and `sampling` / `reward` settings (training/pipeline/settings.py).

    run_dir/conversations/<task id>.json   one collected conversation each (written atomically)
    run_dir/data/{sft,dpo,prompts}/         datasets with their data cards
    run_dir/source.json                     only when collected from a study (study_collect.py)

A restarted stage skips every conversation already on disk, so killing a worker loses at most
the conversations that were in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training.pipeline.collect import collect_conversation
from training.pipeline.data import (
    dpo_rows,
    prompt_rows,
    reward_failures,
    save_dataset,
    sft_rows,
    source_counts,
)
from training.pipeline.llm import CallStats, Runtime
from training.pipeline.mr import score_candidates
from training.pipeline.progress import Progress, run_reporting
from training.pipeline.settings import (
    RewardSettings,
    Roles,
    SamplingSettings,
    as_record,
    roles_from_config,
)
from training.pipeline.tasks import Task
from training.pipeline.tasksets import load_tasks

SOURCE_NAME = "source.json"  # written when the conversations came from a study


def conversation_path(run_dir: Path, task_id: str) -> Path:
    return run_dir / "conversations" / f"{task_id}.json"


def write_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)  # a reader never sees half a file


def collect_each(
    run_dir: Path,
    items: Sequence[Any],
    key: Callable[[Any], str],
    collect_one: Callable[[Runtime, Any], Any],
    sampling: SamplingSettings,
    *,
    parallel: int = 4,
    on_progress: Progress | None = None,
) -> CallStats:
    """One conversation file per item not yet on disk (`key` names it; `collect_one` awaits its
    JSON payload), at most `parallel` at once; report (done, total) as each lands."""
    todo = [i for i in items if not conversation_path(run_dir, key(i)).exists()]
    rt = Runtime(sampling.max_in_flight)

    async def run_all(report: Progress) -> None:
        done = len(items) - len(todo)
        report(done, len(items))
        gate = asyncio.Semaphore(parallel)

        async def one(item: Any) -> None:
            nonlocal done
            async with gate:
                payload = await collect_one(rt, item)
            write_atomically(conversation_path(run_dir, key(item)), payload)
            done += 1
            report(done, len(items))

        await asyncio.gather(*(one(i) for i in todo))

    run_reporting(run_all, on_progress)
    return rt.stats


def collect(
    run_dir: Path,
    tasks: Sequence[Task],
    roles: Roles,
    sampling: SamplingSettings,
    reward: RewardSettings,
    *,
    parallel: int = 4,
    on_progress: Progress | None = None,
) -> CallStats:
    """Collect one conversation per task not yet on disk; report (done, total) as each lands."""

    async def one(rt: Runtime, task: Task) -> dict[str, Any]:
        conv = await collect_conversation(rt, roles, task, sampling, reward)
        return conv.record() | {"settings": as_record(sampling, reward)}

    return collect_each(
        run_dir, tasks, lambda t: t.id, one, sampling, parallel=parallel, on_progress=on_progress
    )


def load_conversations(run_dir: Path) -> list[dict[str, Any]]:
    """Every collected conversation, in task-id order."""
    folder = run_dir / "conversations"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def build_datasets(run_dir: Path, *, min_gap: float, system_prompt: str = "") -> dict[str, int]:
    """SFT, DPO and online-DPO prompt datasets from the collected conversations; row counts."""
    conversations = load_conversations(run_dir)
    settings = conversations[0]["settings"] if conversations else {}
    dpo = dpo_rows(conversations, min_gap=min_gap, system_prompt=system_prompt)
    card = {
        "conversations": len(conversations),
        "min_mr_gap": min_gap,
        **settings,
        "reward_failures": reward_failures(conversations),
    }
    source = run_dir / SOURCE_NAME
    if source.exists():
        card |= {
            "source_study": json.loads(source.read_text()),
            "replies_by_source": source_counts(conversations, dpo),
        }
    counts = {}
    for name, rows in (
        ("sft", sft_rows(conversations, system_prompt)),
        ("dpo", dpo),
        ("prompts", prompt_rows(conversations, system_prompt)),
    ):
        save_dataset(rows, run_dir / "data" / name, name=f"collabllm-{name}", card=card)
        counts[name] = len(rows)
    return counts


def mr_reward_function(
    roles: Roles, tasks: Mapping[str, Task], sampling: SamplingSettings, reward: RewardSettings
) -> Callable[..., list[float]]:
    """A reward function for online DPO: each completion's MR given its prompt and task.

    The forward samples use the policy *endpoint*, not the weights being trained; a completion
    whose MR cannot be computed gets the lowest reward of its batch minus one, so it is rejected.
    """

    def reward_fn(
        prompts: list[Any], completions: list[Any], task_id: list[str], **_: Any
    ) -> list[float]:
        async def all_scores() -> list[float | None]:
            rt = Runtime(sampling.max_in_flight)
            jobs = [
                score_candidates(
                    rt, roles, tasks[tid], _as_messages(p), [_as_text(c)], sampling, reward
                )
                for p, c, tid in zip(prompts, completions, task_id, strict=True)
            ]
            return [scores[0].mr for scores in await asyncio.gather(*jobs)]

        scores = run_reporting(lambda _: all_scores(), None)
        floor = min((s for s in scores if s is not None), default=0.0) - 1.0
        return [floor if s is None else s for s in scores]

    return reward_fn


def _as_messages(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt if m["role"] != "system"]


def _as_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    import yaml

    parser = argparse.ArgumentParser(description="Collect conversations or build datasets.")
    parser.add_argument("stage", choices=["collect", "build"])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, help="collect: the run's YAML settings")
    parser.add_argument("--min-gap", type=float, default=0.0, help="build: minimum MR gap")
    args = parser.parse_args(argv)
    if args.stage == "build":
        print(json.dumps(build_datasets(args.run_dir, min_gap=args.min_gap)))
        return 0
    if args.config is None:
        parser.error("collect needs --config")
    config = yaml.safe_load(args.config.read_text())
    tasks = load_tasks(config.get("kind", "document"), split="train")[: config.get("limit")]
    stats = collect(
        args.run_dir,
        tasks,
        roles_from_config(config),
        SamplingSettings(**config.get("sampling", {})),
        RewardSettings(**config.get("reward", {})),
        on_progress=lambda done, total: print(f"{done}/{total} conversations", flush=True),
    )
    print(json.dumps(asdict(stats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
