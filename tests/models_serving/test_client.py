"""The streaming client against the fault-injecting fake server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from models_serving.client import (
    ERROR_KINDS,
    EndpointSpec,
    GenerationResult,
    ModelCallError,
    _events,
    close_clients,
    stream_chat,
)
from tests.fakes.openai_server import FakeOpenAIServer
from tests.ports import unanswered_port

MESSAGES = [{"role": "user", "content": "write me a short poem"}]


def spec_for(server: FakeOpenAIServer, model: str, read_timeout: float = 5.0) -> EndpointSpec:
    """Return an endpoint that asks the fake server for one behaviour."""
    return EndpointSpec(
        base_url=f"http://127.0.0.1:{server.port}/v1", model=model, read_timeout=read_timeout
    )


async def collect(
    spec: EndpointSpec, params: dict[str, Any] | None = None
) -> tuple[list[str], GenerationResult]:
    """Drain one stream into its deltas and its final result."""
    deltas: list[str] = []
    result: GenerationResult | None = None
    async for item in stream_chat(spec, MESSAGES, params or {}):
        assert result is None, "nothing may follow the GenerationResult"
        if isinstance(item, GenerationResult):
            result = item
        else:
            deltas.append(item)
    assert result is not None
    return deltas, result


async def failure_kind(spec: EndpointSpec, params: dict[str, Any] | None = None) -> str:
    """Run a stream that must fail and return the ModelCallError kind."""
    with pytest.raises(ModelCallError) as info:
        await collect(spec, params)
    return info.value.kind


async def until(condition: Callable[[], bool]) -> None:
    """Wait until condition() holds, failing the test after two seconds."""
    async with asyncio.timeout(2.0):
        # The fake's counters are plain ints (readable from any thread), so poll them.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_it_yields_every_delta_then_a_result_whose_text_is_their_join(fake_server):
    deltas, result = await collect(spec_for(fake_server, "fake"))
    assert deltas == ["tok0"] + [f" tok{i}" for i in range(1, 8)]
    assert result.text == "".join(deltas)


async def test_it_takes_token_counts_from_the_servers_usage_chunk(fake_server):
    _, result = await collect(spec_for(fake_server, "fake"))
    assert (result.prompt_tokens, result.completion_tokens) == (5, 8)


async def test_it_reports_the_servers_finish_reason_and_model(fake_server):
    _, result = await collect(spec_for(fake_server, "fake"), {"max_tokens": 3})
    assert (result.finish_reason, result.model) == ("length", "fake")


async def test_time_to_first_token_covers_the_servers_delay_and_fits_in_the_duration(fake_server):
    spec = spec_for(fake_server, "fake-slow")
    _, result = await collect(spec, {"fake_first_token_delay_ms": 200})
    assert result.time_to_first_token is not None
    assert 0.2 <= result.time_to_first_token <= result.duration


async def test_it_asks_for_a_stream_with_usage_and_passes_generation_params(fake_server):
    params = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 4, "seed": 7, "top_k": 20}
    await collect(spec_for(fake_server, "fake"), params)
    body = fake_server.stats.last_body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert {k: body[k] for k in params} == params


async def test_it_refuses_params_that_would_override_the_request(fake_server):
    with pytest.raises(ValueError, match="model"):
        await collect(spec_for(fake_server, "fake"), {"model": "other"})


async def test_a_closed_port_is_unreachable(closed_port):
    spec = EndpointSpec(base_url=f"http://127.0.0.1:{closed_port}/v1", model="fake")
    assert await failure_kind(spec) == "unreachable"
    await close_clients()


async def test_a_server_that_accepts_no_connection_in_time_is_unreachable():
    with unanswered_port() as port:
        spec = EndpointSpec(
            base_url=f"http://127.0.0.1:{port}/v1", model="fake", connect_timeout=0.3
        )
        with pytest.raises(ModelCallError) as info:
            await collect(spec)
    await close_clients()
    assert info.value.kind == "unreachable" and "connect timeout" in info.value.detail


async def test_a_server_that_never_sends_a_token_is_a_timeout(fake_server):
    assert await failure_kind(spec_for(fake_server, "fake-stall-first", 0.3)) == "timeout"


async def test_a_stall_after_the_first_token_is_a_timeout(fake_server):
    deltas: list[str] = []
    with pytest.raises(ModelCallError) as info:
        async for item in stream_chat(spec_for(fake_server, "fake-stall", 0.3), MESSAGES, {}):
            deltas.append(str(item))
    assert (deltas, info.value.kind) == (["tok0"], "timeout")


async def test_an_http_500_is_a_server_error(fake_server):
    assert await failure_kind(spec_for(fake_server, "fake-500")) == "server_error"


async def test_an_http_400_is_rejected(fake_server):
    assert await failure_kind(spec_for(fake_server, "fake-400")) == "rejected"


async def test_invalid_json_in_the_stream_is_malformed(fake_server):
    assert await failure_kind(spec_for(fake_server, "fake-malformed")) == "malformed_stream"


async def test_a_stream_that_ends_without_a_finish_reason_is_malformed(fake_server):
    assert await failure_kind(spec_for(fake_server, "fake-truncated")) == "malformed_stream"


async def test_a_connection_dropped_mid_stream_is_malformed(fake_server):
    assert await failure_kind(spec_for(fake_server, "fake-drop")) == "malformed_stream"


async def test_closing_the_generator_early_disconnects_from_the_server(fake_server):
    stream = stream_chat(
        spec_for(fake_server, "fake"), MESSAGES, {"max_tokens": 100, "fake_delay_ms": 50}
    )
    assert await anext(stream) == "tok0"
    await stream.aclose()
    await until(lambda: fake_server.stats.disconnects == 1)
    assert fake_server.stats.streams_completed == 0


async def test_cancelling_the_consuming_task_disconnects_from_the_server(fake_server):
    first_delta = asyncio.Event()
    spec = spec_for(fake_server, "fake")

    async def consume() -> None:
        async for _ in stream_chat(spec, MESSAGES, {"max_tokens": 100, "fake_delay_ms": 50}):
            first_delta.set()

    task = asyncio.create_task(consume())
    await first_delta.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: fake_server.stats.disconnects == 1)
    assert fake_server.stats.streams_completed == 0


async def test_calls_on_one_event_loop_reuse_the_connection(fake_server):
    await collect(spec_for(fake_server, "fake"))
    await collect(spec_for(fake_server, "fake"))
    assert (fake_server.stats.chat_requests, fake_server.stats.connections) == (2, 1)


def test_each_new_event_loop_gets_a_client_that_works():
    server = FakeOpenAIServer(tokens=3)
    base_url, stop = server.run_in_thread()
    spec = EndpointSpec(base_url=base_url, model="fake")

    async def one_call() -> str:
        try:
            return (await collect(spec))[1].text
        finally:
            await close_clients()

    try:
        texts = [asyncio.run(one_call()), asyncio.run(one_call())]
    finally:
        stop()
    assert texts == ["tok0 tok1 tok2"] * 2


def test_each_failure_kind_has_its_own_user_message_without_the_detail():
    errors = [ModelCallError(kind, "secret-host:9999 said no") for kind in ERROR_KINDS]
    messages = {error.user_message() for error in errors}
    assert len(messages) == len(ERROR_KINDS) == 5
    assert not any("secret-host" in message for message in messages)


def test_an_unknown_error_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        ModelCallError("oops", "detail")  # type: ignore[arg-type]


class _Body:
    """A streamed response whose body arrives in the given pieces."""

    def __init__(self, pieces: list[bytes], encoding: str = "") -> None:
        self.pieces = pieces
        self.headers = {"content-encoding": encoding} if encoding else {}

    async def aiter_raw(self):
        for piece in self.pieces:
            yield piece

    aiter_bytes = aiter_raw


async def test_server_sent_events_split_anywhere_decode_whole():
    body = (
        b'data: {"choices": [{"delta": {"content": "h\\u00e9"}}]}\r\n\r\n'
        b': a comment\n\ndata:{"choices": [{"delta": {"content": "\xf0\x9f\x98\x80"}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    for cut in range(1, len(body)):
        stream = SimpleNamespace(response=_Body([body[:cut], body[cut:]]))
        chunks = [c async for c in _events(stream)]
        assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["hé", "😀"], cut


async def test_a_last_event_without_a_newline_is_read():
    stream = SimpleNamespace(response=_Body([b'data: {"a": 1}\n\ndata: {"b": 2}'], "identity"))
    assert [c async for c in _events(stream)] == [{"a": 1}, {"b": 2}]
