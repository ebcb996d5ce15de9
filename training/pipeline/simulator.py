"""The simulated user and the policy's turns: the two halves of every simulated conversation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any, Literal

from models_serving.client import ModelCallError
from training.pipeline.llm import Messages, Runtime, parse_json_object, text_budget
from training.pipeline.settings import Role
from training.pipeline.tasks import Task

TERMINATE = "[[TERMINATE CHAT]]"
PROMPT_VERSION = "user_simulator.v1"
PERSONAS = (
    "a busy professional who writes tersely and wants results fast",
    "a curious student who is polite and a little unsure of the details",
    "a detail-oriented person with firm preferences who corrects mistakes",
    "a friendly hobbyist who writes casually and sometimes rambles",
)
THOUGHT_CAP, RESPONSE_CAP = 200, 800


def user_schema(role: Role) -> dict[str, Any]:
    """The simulator's JSON, its strings sized to the role's max_tokens (a third for thought)."""
    budget = text_budget(role, THOUGHT_CAP + RESPONSE_CAP, overhead=80)
    thought = min(THOUGHT_CAP, budget // 3)
    response = min(RESPONSE_CAP, budget - thought)
    return {
        "type": "object",
        "properties": {
            "thought": {"type": "string", "maxLength": thought},
            "response": {"type": "string", "maxLength": response},
        },
        "required": ["thought", "response"],
    }


Fallback = Literal["raw_text", "terminate"]


@cache
def prompt_template(name: str) -> str:
    """A prompt file shipped in training/pipeline/prompts/."""
    return resources.files("training.pipeline.prompts").joinpath(f"{name}.txt").read_text()


@dataclass(frozen=True)
class UserTurn:
    """The simulated user's next message; fallback records how it was read when JSON failed."""

    text: str
    terminated: bool
    attempts: int
    fallback: Fallback | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        """The simulator broke (server error or unreadable after retries), so the chat ended.

        A simulated user who writes the terminate marker has finished: that is an ending, not a
        failure, and a raw_text fallback is still a message.
        """
        return self.fallback == "terminate"


def persona_for(task: Task) -> str:
    """A stable persona per task (from its metadata, else picked by its id)."""
    if task.metadata.get("persona"):
        return task.metadata["persona"]
    index = int(hashlib.sha256(task.id.encode()).hexdigest(), 16) % len(PERSONAS)
    return PERSONAS[index]


def transcript(messages: Messages) -> str:
    """The chat as plain text, one labelled message per paragraph."""
    names = {"user": "USER", "assistant": "ASSISTANT"}
    return "\n\n".join(
        f"{names.get(m['role'], m['role'].upper())}: {m['content']}" for m in messages
    )


def _user_messages(task: Task, conversation: Messages) -> Messages:
    system = prompt_template("user_simulator").format(
        description=task.description, goal=task.goal, persona=persona_for(task)
    )
    if conversation:
        ask = f"The chat so far:\n\n{transcript(conversation)}\n\nWrite your next message."
    else:
        ask = "Write your first message to the assistant."
    return [{"role": "system", "content": system}, {"role": "user", "content": ask}]


def _read_user_reply(text: str) -> str | None:
    data = parse_json_object(text)
    if data is None or not isinstance(data.get("response"), str):
        return None
    return data["response"].strip() or None


async def simulate_user(
    rt: Runtime, role: Role, task: Task, conversation: Messages, *, retries: int
) -> UserTurn:
    """The user's next message; unreadable output is retried, then a recorded fallback is used.

    Fallback rule: after the retry budget, plain non-JSON text is taken as the message itself
    ("raw_text"); anything else (JSON without a response, a failing server) ends the chat
    ("terminate"), so a conversation never continues on an invented message. That ending is a
    failure (UserTurn.failed), never scored as if the user had finished.
    """
    messages = _user_messages(task, conversation)
    last_text, error = "", None
    for attempt in range(1, retries + 2):
        try:
            reply = await rt.chat(role, messages, label="user", schema=user_schema(role))
        except ModelCallError as exc:
            error = str(exc)
            continue
        last_text = reply.text
        response = _read_user_reply(reply.text)
        if response is not None:
            return _turn(response, attempt)
        error = "unreadable simulator output"
    raw = last_text.strip()
    if raw and parse_json_object(raw) is None and not raw.startswith("{"):
        return _turn(raw, retries + 1, fallback="raw_text", error=error)
    return UserTurn(TERMINATE, True, retries + 1, fallback="terminate", error=error)


def _turn(
    response: str, attempts: int, fallback: Fallback | None = None, error: str | None = None
) -> UserTurn:
    terminated = TERMINATE in response
    text = response.replace(TERMINATE, "").strip() if terminated else response
    return UserTurn(text or TERMINATE, terminated, attempts, fallback, error)


def policy_messages(role: Role, conversation: Messages) -> Messages:
    """What the policy sees: its arm's system prompt (if any) and the chat."""
    system = [{"role": "system", "content": role.system_prompt}] if role.system_prompt else []
    return system + [{"role": m["role"], "content": m["content"]} for m in conversation]


async def policy_reply(
    rt: Runtime, role: Role, conversation: Messages, temperature: float | None = None
) -> tuple[str, int | None]:
    """One assistant reply and its completion tokens (from the server's usage)."""
    if temperature is not None:
        role = replace(role, params={**role.params, "temperature": temperature})
    reply = await rt.chat(role, policy_messages(role, conversation), label="policy")
    return reply.text.strip(), reply.completion_tokens
