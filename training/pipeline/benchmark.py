"""Simulated benchmark: each arm chats with the simulated user on held-out tasks (paper Table 1).

    python -m training.pipeline.benchmark --config benchmark.yaml --out results/

The config names the simulator, judge and extractor endpoints and the arms (endpoint + system
prompt); the output is table.md / table.csv (task metric, tokens per conversation in thousands,
interactivity x100, per task kind and arm) and conversations.jsonl with every term per chat.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models_serving.client import ModelCallError
from training.pipeline.llm import Runtime
from training.pipeline.progress import run_reporting
from training.pipeline.rewards import Components, score_conversation
from training.pipeline.settings import (
    RewardSettings,
    Role,
    Roles,
    SamplingSettings,
    role_from,
    roles_from_config,
)
from training.pipeline.simulator import policy_reply, simulate_user
from training.pipeline.tasks import TASK_KINDS, Task
from training.pipeline.tasksets import load_tasks

METRIC_NAMES = {"document": "BLEU", "code": "pass rate", "math": "accuracy"}


@dataclass(frozen=True)
class Arm:
    name: str
    role: Role  # the arm's endpoint, sampling parameters and system prompt


@dataclass
class BenchmarkResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (arm, task)

    def table(self) -> list[dict[str, Any]]:
        """Per task kind and arm: N, task metric, tokens (k) and interactivity, as in Table 1."""
        out = []
        keys = sorted(
            {(r["kind"], r["arm"]) for r in self.rows}, key=lambda k: (TASK_KINDS.index(k[0]), k[1])
        )
        for kind, arm in keys:
            rows = [r for r in self.rows if r["kind"] == kind and r["arm"] == arm]
            out.append(
                {
                    "task": kind,
                    "metric": METRIC_NAMES[kind],
                    "arm": arm,
                    "n": len(rows),
                    "score": _mean([r["task"] for r in rows], 100),
                    "tokens_k": _mean([r["tokens"] for r in rows], 1 / 1000),
                    "itr": _mean([r["interactivity"] for r in rows], 100),
                    "failed_terms": sum(len(r["component_errors"]) for r in rows),
                }
            )
        return out


def _mean(values: list[Any], scale: float) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present) * scale, 3) if present else None


async def run_conversation(
    rt: Runtime, arm: Arm, user: Role, task: Task, sampling: SamplingSettings
) -> tuple[list[dict[str, str]], str]:
    """One whole chat between the arm and the simulated user; returns it and how it ended."""
    messages: list[dict[str, str]] = []
    for _ in range(sampling.max_turns):
        turn = await simulate_user(rt, user, task, messages, retries=sampling.user_retries)
        if turn.failed:
            return messages, "user_failed"
        if turn.terminated:
            return messages, "terminated"
        messages.append({"role": "user", "content": turn.text})
        try:
            reply, _ = await policy_reply(rt, arm.role, messages)
        except ModelCallError as exc:
            return messages, f"policy_failed: {exc.kind}"
        messages.append({"role": "assistant", "content": reply})
    return messages, "max_turns"


async def run_benchmark(
    arms: Sequence[Arm],
    roles: Roles,
    tasks: Sequence[Task],
    sampling: SamplingSettings,
    reward: RewardSettings,
    on_progress: Callable[[int, int], None] | None = None,
) -> BenchmarkResult:
    """Every arm on every task, all chats in flight together (bounded by max_in_flight)."""
    rt = Runtime(sampling.max_in_flight)
    total, finished = len(arms) * len(tasks), 0

    async def one(arm: Arm, task: Task) -> dict[str, Any]:
        messages, ended = await run_conversation(rt, arm, roles.user, task, sampling)
        arm_roles = Roles(
            policy=arm.role, user=roles.user, judge=roles.judge, extractor=roles.extractor
        )
        if ended == "user_failed" or ended.startswith("policy_failed"):
            # A chat cut short by a failing server is a failure, not a shorter chat: scoring it
            # would favour the arm whose chats break off early and cheaply.
            terms = Components(errors={"chat": f"the chat failed ({ended})"})
        elif any(m["role"] == "assistant" for m in messages):
            terms = await score_conversation(rt, arm_roles, task, messages, reward)
        else:
            # The simulated user left before the arm said anything: nothing of the arm to score.
            terms = Components(errors={"chat": "the simulated user ended the chat at once"})
        nonlocal finished
        finished += 1
        if on_progress:
            on_progress(finished, total)
        return {
            "arm": arm.name,
            "task_id": task.id,
            "kind": task.kind,
            "ended": ended,
            "turns": sum(m["role"] == "assistant" for m in messages),
            "task": terms.task,
            "tokens": terms.tokens,
            "interactivity": terms.interactivity,
            "penalty": terms.penalty,
            "component_errors": terms.errors,
            "messages": messages,
        }

    rows = await asyncio.gather(*(one(arm, task) for arm in arms for task in tasks))
    return BenchmarkResult(list(rows))


def write_result(result: BenchmarkResult, out: Path, settings: dict[str, Any]) -> Path:
    """table.md, table.csv, conversations.jsonl and settings.json in out."""
    out.mkdir(parents=True, exist_ok=True)
    table = result.table()
    with (out / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]) if table else ["task"])
        writer.writeheader()
        writer.writerows(table)
    (out / "table.md").write_text(markdown_table(table))
    with (out / "conversations.jsonl").open("w") as handle:
        for row in result.rows:
            handle.write(json.dumps(row) + "\n")
    (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    return out / "table.md"


def markdown_table(table: list[dict[str, Any]]) -> str:
    """Table 1's shape: one row per task kind and arm."""
    lines = [
        "| task | metric | arm | N | score | tokens (k) | ITR x100 | failed terms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        cells = [
            r["task"],
            r["metric"],
            r["arm"],
            r["n"],
            _fmt(r["score"]),
            _fmt(r["tokens_k"]),
            _fmt(r["itr"]),
            r["failed_terms"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    roles = roles_from_config(config)
    arms = [Arm(a["name"], role_from(a, config.get("endpoint", {}))) for a in config["arms"]]
    tasks = [
        t
        for kind in config.get("kinds", TASK_KINDS)
        for t in load_tasks(kind, split="heldout")[: config.get("limit", 4)]
    ]
    sampling = SamplingSettings(**config.get("sampling", {}))
    reward = RewardSettings(**config.get("reward", {}))
    result = run_reporting(
        lambda report: run_benchmark(arms, roles, tasks, sampling, reward, report), None
    )
    table = write_result(result, args.out, {"config": config})
    print(table.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
