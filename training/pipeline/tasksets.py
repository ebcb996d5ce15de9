"""Task sets: the small offline sets shipped in `tasksets/*.jsonl`, a user's own JSONL file, or
(explicitly, with network) the public CollabLLM multiturn datasets on the Hugging Face Hub.

One JSON object per line with the fields of `Task`; blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from training.pipeline.metrics import math_answer
from training.pipeline.tasks import TASK_KINDS, Task, TaskKind

TASKSET_DIR = Path(__file__).with_name("tasksets")
SPLITS = ("train", "heldout")
REQUIRED = ("id", "kind", "split", "description", "goal", "reference")
OPTIONAL = ("entry_point", "metadata")
HUB_PREFIX = "collabllm/collabllm-multiturn-"


class TaskFileError(ValueError):
    """A task file line that is not a valid task; the message names the file and line."""


def _task(row: object, where: str) -> Task:
    """Validate one decoded JSON line and build its Task."""
    if not isinstance(row, dict):
        raise TaskFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise TaskFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for name in REQUIRED:
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            raise TaskFileError(f"{where}: missing or empty field {name!r}")
    if row["kind"] not in TASK_KINDS:
        raise TaskFileError(f"{where}: unknown kind {row['kind']!r} (expected one of {TASK_KINDS})")
    if row["split"] not in SPLITS:
        raise TaskFileError(f"{where}: unknown split {row['split']!r} (expected one of {SPLITS})")
    entry_point = row.get("entry_point")
    if entry_point is not None and not (
        isinstance(entry_point, str) and entry_point.isidentifier()
    ):
        raise TaskFileError(f"{where}: entry_point must be a Python identifier")
    if row["kind"] == "code" and entry_point is None:
        raise TaskFileError(f"{where}: code task {row['id']!r} has no entry_point")
    metadata = row.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TaskFileError(f"{where}: metadata must map strings to strings")
    return Task(**{**row, "metadata": dict(metadata)})


def _read(path: Path) -> Iterator[tuple[str, Task]]:
    """Yield (file:line, task) for one JSONL file, raising TaskFileError at the first bad line."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskFileError(f"{where}: not valid JSON ({error.msg})") from None
            yield where, _task(row, where)


def load_tasks(
    kind: TaskKind | None = None, split: str | None = None, path: Path | None = None
) -> list[Task]:
    """Load and validate tasks from `path` or the shipped sets, optionally filtered."""
    if kind is not None and kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    if path is not None:
        paths = [Path(path)]  # str paths from the command line work too
    else:
        paths = [TASKSET_DIR / f"{name}.jsonl" for name in ([kind] if kind else TASK_KINDS)]
    seen: dict[str, str] = {}
    tasks = []
    for where, task in (item for p in paths for item in _read(p)):
        if task.id in seen:
            raise TaskFileError(
                f"{where}: duplicate task id {task.id!r} (first at {seen[task.id]})"
            )
        seen[task.id] = where
        if (kind is None or task.kind == kind) and (split is None or task.split == split):
            tasks.append(task)
    return tasks


def _hub_kind(name: str) -> TaskKind:
    if "math" in name:
        return "math"
    return "code" if "code" in name else "document"


def _hub_metadata(row: dict[str, Any]) -> dict[str, Any]:
    raw = row.get("single_turn_metadata") or {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def _hub_task(row: dict[str, Any], kind: TaskKind, repo: str, index: int, split: str) -> Task:
    """Map one Hub row to a Task, best-effort (the rows were built for another pipeline)."""
    goal = str(row.get("single_turn_prompt") or "")
    completion = str(row.get("single_turn_completion") or "")
    messages = [m for m in row.get("prompt") or [] if isinstance(m, dict)]
    opening = next((m.get("content") for m in messages if m.get("role") == "user"), None)
    meta = _hub_metadata(row)
    reference, entry_point = completion, None
    if kind == "math":
        reference = math_answer(completion) or completion
    elif kind == "code":
        reference = str(meta.get("test") or completion)
        entry_point = str(meta.get("entry_point") or "task_func")
    return Task(
        id=f"{repo.split('/')[-1]}-{index}",
        kind=kind,
        split="train" if split == "train" else "heldout",
        description=" ".join(str(opening or goal).split())[:300],
        goal=goal,
        reference=reference,
        entry_point=entry_point,
        metadata={"source": repo, "hub_split": split},
    )


def load_hub_tasks(name: str, split: str, limit: int) -> list[Task]:
    """Load up to `limit` distinct tasks from collabllm/collabllm-multiturn-<name> (needs network).

    `name` is the suffix (math-hard, medium, bigcodebench, each also as -large) or a full repo
    id. Rows are turns of simulated chats, so tasks are deduplicated by their single-turn prompt.
    Caveat: BigCodeBench tests are unittest classes that need third-party packages, which
    `metrics.code_pass_rate` (stdlib only, `test_*` functions) does not run as is.
    """
    import datasets  # heavy and network-bound: only when someone asks for Hub data

    repo = name if "/" in name else HUB_PREFIX + name
    kind = _hub_kind(repo)
    rows = datasets.load_dataset(repo, split=split)
    tasks: dict[str, Task] = {}
    for index, row in enumerate(cast(Iterable[dict[str, Any]], rows)):
        if len(tasks) >= limit:
            break
        key = str(row.get("single_turn_prompt") or "")
        if key and key not in tasks:
            tasks[key] = _hub_task(row, kind, repo, index, split)
    return list(tasks.values())
