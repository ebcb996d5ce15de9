"""Fixtures for the training pipeline: a scripted model server and small tasks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from models_serving.client import EndpointSpec, close_clients
from tests.fakes.openai_server import FakeOpenAIServer
from training.pipeline.settings import Role, Roles
from training.pipeline.tasks import Task

DOC = "Balcony compost needs a lidded bin, brown leaves and patience; turn it weekly."


@pytest.fixture
def doc_task() -> Task:
    return Task(
        id="doc-1",
        kind="document",
        split="train",
        description="a note on balcony compost",
        goal="A three-sentence note for beginners. Target: " + DOC,
        reference=DOC,
    )


@pytest.fixture
async def scripted() -> AsyncIterator[FakeOpenAIServer]:
    """A fake server answering with scripted text (its `responder` or `script`)."""
    server = FakeOpenAIServer(tokens=8)
    await server.start()
    yield server
    await close_clients()
    await server.stop()


def scripted_roles(server: FakeOpenAIServer, **params: Any) -> Roles:
    spec = EndpointSpec(
        base_url=f"http://127.0.0.1:{server.port}/v1", model="fake-script", read_timeout=10
    )
    return Roles.single(Role(spec, dict(params)))


def kind_of(body: dict[str, Any]) -> str:
    """Which role a request came from, by its system prompt."""
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    if system.startswith("You are playing a person"):
        return "user"
    if system.startswith("Below is a chat"):
        return "extractor"
    if system.startswith("Rate how well"):
        return "judge"
    return "policy"


def responder(**replies: str | Callable[[dict[str, Any]], str]) -> Callable[[dict], str]:
    """Replies per role; a callable gets the request body."""

    def respond(body: dict[str, Any]) -> str:
        reply = replies[kind_of(body)]
        return reply(body) if callable(reply) else reply

    return respond


def user_says(text: str) -> str:
    return json.dumps({"thought": "ok", "response": text})
