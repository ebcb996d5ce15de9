"""Fixtures for the model-serving tests (the real embedded model comes from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from models_serving.client import close_clients
from tests.fakes.openai_server import FakeOpenAIServer
from tests.ports import free_port


@pytest.fixture
def closed_port() -> int:
    """A loopback port with no listener, for refused connections."""
    return free_port()


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeOpenAIServer]:
    """A fake server with 8 instant tokens on this test's loop; cached clients closed after."""
    server = FakeOpenAIServer(tokens=8)
    await server.start()
    yield server
    await close_clients()
    await server.stop()
