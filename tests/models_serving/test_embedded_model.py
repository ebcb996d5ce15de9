"""One happy path against the real embedded llama.cpp server (structure only, never text)."""

from __future__ import annotations

import pytest

from models_serving.client import EndpointSpec, GenerationResult, close_clients, stream_chat


@pytest.mark.slow
async def test_the_embedded_model_streams_a_reply_that_matches_its_result(embedded_model):
    spec: EndpointSpec = embedded_model
    messages = [{"role": "user", "content": "Say hello in one short sentence."}]
    items = [
        item async for item in stream_chat(spec, messages, {"max_tokens": 24, "temperature": 0.0})
    ]
    await close_clients()
    *head, result = items
    deltas = [item for item in head if isinstance(item, str)]
    assert isinstance(result, GenerationResult)
    assert deltas and deltas == head and all(deltas)
    assert result.text == "".join(deltas)
    assert result.finish_reason in ("stop", "length")
    assert result.time_to_first_token is not None
    assert 0 < result.time_to_first_token <= result.duration
    if result.completion_tokens is not None:
        assert result.prompt_tokens and result.prompt_tokens > 0
        assert 0 < result.completion_tokens <= 24
