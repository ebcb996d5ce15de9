"""Fixtures shared across the suite: fake and real model servers, a logged-in researcher."""

import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from django.db import connections
from django.test import Client

from models_serving.client import EndpointSpec, close_clients
from models_serving.launch import EMBEDDED_ALIAS, start_llama_server, stop_server, wait_until_ready
from tests.fakes.openai_server import FakeOpenAIServer
from tests.ports import free_port


@pytest.fixture(autouse=True)
async def _close_model_clients() -> AsyncIterator[None]:
    """Close cached model clients on the loop that made them, before pytest-asyncio closes it.

    A client left behind would be collected later on another loop and fail to close its sockets.
    """
    yield
    await close_clients()


@pytest.fixture
def researcher(db) -> Client:
    """A test client logged in as a superuser (tests of roles make their own users)."""
    from django.contrib.auth.models import User  # the app registry is ready once tests run

    user = User.objects.create_superuser("researcher", "r@example.org", "pw-researcher-1")
    client = Client()
    client.force_login(user)
    return client


@dataclass
class FakeModel:
    base_url: str
    tokens: int
    server: FakeOpenAIServer


async def _fake(tokens: int, token_delay: float) -> AsyncIterator[FakeModel]:
    server = FakeOpenAIServer(tokens=tokens, token_delay=token_delay, first_token_delay=0.2)
    base_url = await server.start()
    yield FakeModel(base_url, tokens, server)
    await close_clients()
    await server.stop()


@pytest.fixture
async def fake_model() -> AsyncIterator[FakeModel]:
    """A fast fault-injecting model server on this test's loop (the model name picks faults)."""
    async for model in _fake(tokens=24, token_delay=0.01):
        yield model


@pytest.fixture
async def slow_fake_model() -> AsyncIterator[FakeModel]:
    """A model that takes a few seconds per reply, for mid-stream reconnects."""
    async for model in _fake(tokens=40, token_delay=0.08):
        yield model


@pytest.fixture(scope="session")
def embedded_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointSpec]:
    """The real embedded llama.cpp server on SmolLM2 (or TEST_MODEL_BASE_URL), ready to answer."""
    base_url = os.environ.get("TEST_MODEL_BASE_URL")
    if base_url:
        model = os.environ.get("TEST_MODEL_NAME", EMBEDDED_ALIAS)
        yield EndpointSpec(base_url=base_url, model=model, read_timeout=120)
        return
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    proc = start_llama_server(port, log_path=log_path, n_ctx=2048)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_ready(base_url, timeout=120, proc=proc)
        yield EndpointSpec(base_url=base_url, model=EMBEDDED_ALIAS, read_timeout=120)
    finally:
        stop_server(proc, timeout=20)


def _open_sessions(database: str) -> list[tuple]:
    """Other backends connected to `database` (read from the maintenance database)."""
    import psycopg

    params = connections["default"].get_connection_params()
    params.pop("pool", None)
    params = {**params, "dbname": "postgres", "autocommit": True}
    with psycopg.connect(**params) as conn:
        return conn.execute(
            "SELECT pid, application_name, state, left(query, 120) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [database],
        ).fetchall()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker) -> Iterator[None]:
    """The suite leaves no connection open at teardown: once every connection is closed and the
    pool with them, no session may remain on the test database (a leaked one would also make
    DROP DATABASE fail, with a less useful message)."""
    yield
    with django_db_blocker.unblock():
        database = connections["default"].settings_dict["NAME"]
        connections.close_all()
        connections["default"].close_pool()
        deadline = time.monotonic() + 10  # a backend ends a moment after its client closes
        while (left := _open_sessions(database)) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert not left, f"connections left open on {database} at teardown: {left}"
