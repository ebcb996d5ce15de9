"""The LLM user simulator: a persona with a hidden goal writes the participant's chat messages.

After CollabLLM's simulator (COLLABLLM.md section 3): the simulated user knows a goal the
assistant does not, starts vague and reveals details over the turns. The prompt is short and the
reply capped because the default endpoint is a 135M model; when its output is empty or useless,
a message templated from the persona and goal is sent instead and counted as a fallback.
"""

import asyncio
import random
import re
from contextlib import aclosing
from dataclasses import dataclass, field

from models_serving.client import EndpointSpec, GenerationResult, ModelCallError, stream_chat

PERSONAS = (
    "a busy nurse who writes short, direct messages",
    "a retired teacher who is polite and likes concrete examples",
    "a university student who is unsure what they want at first",
    "a small-business owner who cares about a friendly tone",
    "a software engineer who wants things concise and well structured",
    "a parent writing in the evenings who prefers simple words",
)
DETAILS = (
    "Keep it under 300 words.",
    "Use a warm, personal tone.",
    "Start with a short story or example.",
    "Avoid jargon; my readers are not experts.",
    "End with one clear takeaway.",
    "Mention why this matters to me personally.",
)
FOLLOW_UPS = (
    "Thanks. Could you make it more specific?",
    "That helps. Can you tighten the opening?",
    "Good start. Please rework it with this in mind:",
    "Close, but not quite. Could you revise it?",
    "Nice. Can you suggest a better title and ending?",
)
SYSTEM = (
    "You are {persona}. You are chatting with an AI assistant to write {doc} about {topic}. "
    "Your goal, which the assistant does not know: {goal} "
    "Write your next message to the assistant: one or two sentences, in your own voice. "
    "Do not write the document yourself."
)
MIN_WORDS = 3
HISTORY_MESSAGES = 2
HISTORY_CHARS = 300


@dataclass(frozen=True)
class SimulatedUser:
    """Who the simulated participant is and what they secretly want."""

    persona: str
    document_type: str
    topic: str
    goal: str
    details: tuple[str, ...]


@dataclass
class UserMessage:
    text: str
    fallback: str | None = None  # why the templated message was used, None when the model's was


@dataclass
class UserSimulator:
    """Writes simulated user messages on one OpenAI-compatible endpoint."""

    spec: EndpointSpec | None
    params: dict = field(default_factory=lambda: {"max_tokens": 60, "temperature": 0.8})
    min_chars: int = 0
    max_chars: int = 4000
    timeout: float = 60.0

    async def next_message(
        self, user: SimulatedUser, history: list[dict[str, str]], turn: int
    ) -> UserMessage:
        """The user's message for turn `turn` (1-based) given the conversation so far."""
        text, reason = "", None
        if self.spec is None:
            reason = "no_endpoint"
        else:
            try:
                async with asyncio.timeout(self.timeout):
                    text = _clean(await self._generate(user, history))
            except ModelCallError as exc:
                reason = f"model_error:{exc.kind}"
            except TimeoutError:
                reason = "model_error:timeout"
            if reason is None:
                reason = _useless(text, history)
        if reason is not None:
            text = _templated(user, turn)
        return UserMessage(self._fit(text, user), reason)

    async def _generate(self, user: SimulatedUser, history: list[dict[str, str]]) -> str:
        assert self.spec is not None
        system = SYSTEM.format(
            persona=user.persona, doc=user.document_type, topic=user.topic, goal=user.goal
        )
        # The simulator plays the user, so the conversation's roles are swapped for it.
        swapped = {"user": "assistant", "assistant": "user"}
        recent = [
            {"role": swapped[m["role"]], "content": m["content"][:HISTORY_CHARS]}
            for m in history[-HISTORY_MESSAGES:]
        ]
        if not recent or recent[-1]["role"] != "user":
            recent.append({"role": "user", "content": "Hello! What would you like to write?"})
        messages = [{"role": "system", "content": system}, *recent]
        async with aclosing(stream_chat(self.spec, messages, self.params)) as stream:
            async for item in stream:
                if isinstance(item, GenerationResult):
                    return item.text
        return ""

    def _fit(self, text: str, user: SimulatedUser) -> str:
        """Pad a short message with the goal's details (the study may require a length); cap it."""
        extra = [user.goal, *user.details]
        while len(text) < self.min_chars:
            text += " " + (extra.pop(0) if extra else "Please keep helping me with this.")
        return text[: self.max_chars].strip()


def simulated_user(
    *, document_type: str, topic: str, brief: str, rng: random.Random
) -> SimulatedUser:
    """A persona and a hidden goal for one task, drawn with `rng`."""
    details = tuple(rng.sample(DETAILS, k=3))
    goal = f"a {document_type} about {topic} that my readers will enjoy. {details[0]}"
    if brief:
        goal += f" ({brief[:160]})"
    return SimulatedUser(rng.choice(PERSONAS), document_type, topic, goal, details)


def _templated(user: SimulatedUser, turn: int) -> str:
    if turn <= 1:
        return f"Hi! I need help writing a {user.document_type} about {user.topic}."
    detail = user.details[(turn - 2) % len(user.details)]
    return f"{FOLLOW_UPS[(turn - 2) % len(FOLLOW_UPS)]} {detail}"


ROLE_PREFIX = re.compile(r"^\s*(user|assistant|me|you)\s*:\s*", re.IGNORECASE)


def _clean(text: str) -> str:
    text = ROLE_PREFIX.sub("", text.strip().strip('"').strip())
    return " ".join(text.replace("[[TERMINATE CHAT]]", "").split())


def _useless(text: str, history: list[dict[str, str]]) -> str | None:
    """Why the model's message cannot be sent (empty, too short, a repeat), or None."""
    if not text:
        return "empty"
    if len(re.findall(r"[A-Za-z]{2,}", text)) < MIN_WORDS:
        return "too_short"
    if any(m["role"] == "user" and m["content"].startswith(text) for m in history):
        return "repeat"
    return None
