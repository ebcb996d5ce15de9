"""Task records: what the simulated user wants and how the finished work is scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TaskKind = Literal["document", "code", "math"]
TASK_KINDS: tuple[TaskKind, ...] = ("document", "code", "math")


@dataclass(frozen=True)
class Task:
    """One collaborative task: the user knows `goal`; the assistant only sees the chat.

    reference is what the finished artefact is scored against: the goal document (BLEU), Python
    test code defining `test_*` functions (pass rate), or the final answer (accuracy).
    """

    id: str
    kind: TaskKind
    split: Literal["train", "heldout"]
    description: str  # one line the simulated user starts from ("a blog post about ...")
    goal: str  # the hidden goal the simulated user holds (full target document or problem)
    reference: str
    entry_point: str | None = None  # code tasks: the function the tests call
    metadata: dict[str, str] = field(default_factory=dict)
