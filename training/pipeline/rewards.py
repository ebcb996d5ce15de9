"""The conversation reward R* of one finished (or forward-sampled) chat, term by term.

Each term is computed on its own and may fail on its own: a failed term is None with its error
kept, and the others still count (the rule for combining them is in mr.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from models_serving.client import ModelCallError
from training.pipeline import metrics
from training.pipeline.llm import Messages, Runtime, parse_json_object, text_budget
from training.pipeline.settings import RewardSettings, Roles
from training.pipeline.simulator import prompt_template, transcript
from training.pipeline.tasks import Task

COMPONENTS = ("task", "penalty", "interactivity")
_ARTEFACT = {"document": "document", "code": "Python code", "math": "answer"}
EXTRACT_CAP = 4000
_JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
    "required": ["score"],
}


class ComponentError(Exception):
    """One reward term could not be computed (unreadable judge output, failed server call)."""


@dataclass
class Components:
    """R*'s terms for one conversation; None where the term failed (see errors)."""

    task: float | None = None
    penalty: float | None = None
    interactivity: float | None = None
    tokens: int | None = None
    artefact: str | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def reward(self, settings: RewardSettings) -> float | None:
        """R* when every term is present, else None."""
        if self.task is None or self.penalty is None or self.interactivity is None:
            return None
        return (
            settings.task_weight * self.task
            - settings.token_weight * self.penalty
            + settings.interactivity_weight * self.interactivity
        )


async def score_conversation(
    rt: Runtime, roles: Roles, task: Task, messages: Messages, settings: RewardSettings
) -> Components:
    """Compute every term of R* for one chat concurrently; failures are recorded, not raised."""
    out = Components()

    async def term(name: str, compute: Any) -> None:
        try:
            await compute()
        except (ComponentError, ModelCallError) as exc:
            out.errors[name] = str(exc)

    async def task_term() -> None:
        out.artefact = await extract_artefact(rt, roles, task, messages)
        out.task = await task_metric(rt, roles, task, out.artefact, settings)

    async def penalty_term() -> None:
        out.tokens = await conversation_tokens(rt, roles, messages, settings)
        scaled = settings.penalty_lambda(task.kind) * out.tokens
        out.penalty = min(scaled, 1.0) if settings.token_clamp else scaled

    async def interactivity_term() -> None:
        # A zero weight drops the judge call (a metric set without interactivity, as in the
        # throughput comparison); the term is then 0 rather than missing.
        if settings.interactivity_weight == 0:
            out.interactivity = 0.0
            return
        out.interactivity = await interactivity(rt, roles, task, messages)

    await asyncio.gather(
        term("task", task_term),
        term("penalty", penalty_term),
        term("interactivity", interactivity_term),
    )
    return out


async def extract_artefact(rt: Runtime, roles: Roles, task: Task, messages: Messages) -> str:
    """The final document, code or answer, pulled out of the whole chat by the extractor."""
    system = prompt_template("extractor").format(
        description=task.description, artefact=_ARTEFACT[task.kind]
    )
    prompt = [
        {"role": "system", "content": system},
        {"role": "user", "content": transcript(messages)},
    ]
    limit = text_budget(roles.extractor, EXTRACT_CAP)
    schema = {
        "type": "object",
        "properties": {"final": {"type": "string", "maxLength": limit}},
        "required": ["final"],
    }
    reply = await rt.chat(roles.extractor, prompt, label="extractor", schema=schema)
    data = parse_json_object(reply.text)
    if data is None or not isinstance(data.get("final"), str):
        raise ComponentError(f"unreadable extractor output: {reply.text[:200]!r}")
    return data["final"]


async def task_metric(
    rt: Runtime, roles: Roles, task: Task, artefact: str, settings: RewardSettings
) -> float:
    """The task's own metric in [0, 1]: BLEU, unit-test pass rate or answer accuracy."""
    if task.kind == "document":
        return metrics.bleu(artefact, task.reference)
    if task.kind == "code":
        result = await asyncio.to_thread(
            metrics.code_pass_rate,
            artefact,
            task.reference,
            task.entry_point or "",
            timeout_s=settings.code_timeout_s,
            memory_mb=settings.code_memory_mb,
        )
        return result.pass_rate
    answer = metrics.math_answer(artefact) or artefact
    if metrics.math_equal(answer, task.reference):
        return 1.0
    if settings.math_judge:
        return await _judge_math(rt, roles, task, answer)
    return 0.0


async def _judge_math(rt: Runtime, roles: Roles, task: Task, answer: str) -> float:
    ask = (
        f"Problem: {task.goal}\nReference answer: {task.reference}\nGiven answer: {answer}\n"
        "Is the given answer mathematically equal to the reference? "
        'Reply in JSON: {"equal": true|false}'
    )
    schema = {"type": "object", "properties": {"equal": {"type": "boolean"}}, "required": ["equal"]}
    reply = await rt.chat(
        roles.judge, [{"role": "user", "content": ask}], label="judge", schema=schema
    )
    data = parse_json_object(reply.text)
    if data is None or not isinstance(data.get("equal"), bool):
        raise ComponentError(f"unreadable math judge output: {reply.text[:200]!r}")
    return 1.0 if data["equal"] else 0.0


async def conversation_tokens(
    rt: Runtime, roles: Roles, messages: Messages, settings: RewardSettings
) -> int:
    """Tokens the user reads (assistant messages) and, in the paper's scope, writes."""
    roles_counted = {"assistant"} if settings.token_scope == "assistant" else {"assistant", "user"}
    texts = [m["content"] for m in messages if m["role"] in roles_counted]
    try:
        counts = await asyncio.gather(
            *(rt.count_tokens(roles.policy.endpoint, text) for text in texts)
        )
    except Exception as exc:  # any HTTP or parse failure of the tokenizer endpoint
        raise ComponentError(f"token count failed: {exc!r}") from exc
    return sum(counts)


async def interactivity(rt: Runtime, roles: Roles, task: Task, messages: Messages) -> float:
    """The judge's rubric score mapped onto [0, 1]."""
    system = prompt_template("interactivity_judge").format(description=task.description)
    prompt = [
        {"role": "system", "content": system},
        {"role": "user", "content": transcript(messages)},
    ]
    reply = await rt.chat(roles.judge, prompt, label="judge", schema=_JUDGE_SCHEMA)
    data = parse_json_object(reply.text)
    score = data.get("score") if data else None
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
        raise ComponentError(f"unreadable judge output: {reply.text[:200]!r}")
    return (score - 1) / 4
