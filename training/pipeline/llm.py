"""Model calls for the pipeline: whole replies through models_serving's client, bounded in flight,
counted, with JSON output constrained the way each server understands it."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from models_serving.client import EndpointSpec, GenerationResult, ModelCallError, stream_chat
from training.pipeline.settings import Role

Messages = list[dict[str, str]]


@dataclass
class CallStats:
    """What a run asked of the model servers (for throughput reports)."""

    calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_role: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None


class Runtime:
    """Shared by every call of a run: one bound on calls in flight and one set of counters."""

    def __init__(self, max_in_flight: int) -> None:
        self.gate = asyncio.Semaphore(max_in_flight)
        self.stats = CallStats()
        self._token_cache: dict[tuple[str, str], int] = {}

    async def chat(
        self, role: Role, messages: Messages, *, label: str, schema: dict[str, Any] | None = None
    ) -> Reply:
        """Ask one role for a whole reply; raise ModelCallError when the server fails."""
        params = dict(role.params)
        if schema is not None:
            params.update(_response_format(role, label, schema))
        self.stats.calls += 1
        self.stats.by_role[label] = self.stats.by_role.get(label, 0) + 1
        async with self.gate:
            try:
                result = await _whole_reply(role.endpoint, messages, params)
            except ModelCallError:
                self.stats.failures += 1
                raise
        self.stats.prompt_tokens += result.prompt_tokens or 0
        self.stats.completion_tokens += result.completion_tokens or 0
        return Reply(
            result.text, result.prompt_tokens, result.completion_tokens, result.finish_reason
        )

    async def count_tokens(self, endpoint: EndpointSpec, text: str) -> int:
        """Tokens of text in the serving model's own tokenizer (vLLM or llama.cpp endpoint)."""
        root = endpoint.base_url.rstrip("/").removesuffix("/v1")
        key = (root, text)
        if key not in self._token_cache:
            async with self.gate:
                self._token_cache[key] = await _server_token_count(endpoint, root, text)
        return self._token_cache[key]


def _response_format(role: Role, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    if role.json_mode == "json_schema":
        # vLLM 0.32 honours response_format json_schema and silently ignores guided_json.
        spec = {"name": name, "schema": schema}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}
    if role.json_mode == "json_object":
        return {"response_format": {"type": "json_object", "schema": _clamped(schema)}}
    return {}


# llama.cpp unrolls maxLength into grammar rules; past about 1,000 it rejects the grammar and the
# llama-cpp-python server crashes (seen with 0.3.36), so its string limits are kept at 800.
LLAMA_CPP_MAX_LENGTH = 800


def _clamped(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    if "maxLength" in out:
        out["maxLength"] = min(int(out["maxLength"]), LLAMA_CPP_MAX_LENGTH)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _clamped(v) for k, v in out["properties"].items()}
    return out


async def _whole_reply(
    endpoint: EndpointSpec, messages: Messages, params: dict[str, Any]
) -> GenerationResult:
    async for item in stream_chat(endpoint, messages, params):
        if isinstance(item, GenerationResult):
            return item
    raise ModelCallError("malformed_stream", "the stream ended without a result")


_LLAMA_CPP_ROOTS: set[str] = set()  # servers whose /tokenize said 404: ask llama.cpp's route


async def _server_token_count(endpoint: EndpointSpec, root: str, text: str) -> int:
    timeout = httpx.Timeout(endpoint.read_timeout, connect=endpoint.connect_timeout)
    async with httpx.AsyncClient(timeout=timeout) as http:
        # vLLM: POST /tokenize; llama-cpp-python's server: POST /extras/tokenize/count.
        if root not in _LLAMA_CPP_ROOTS:
            body = {"model": endpoint.model, "prompt": text}
            vllm = await http.post(f"{root}/tokenize", json=body)
            if vllm.status_code == 200:
                return int(vllm.json()["count"])
            if vllm.status_code == 404:
                _LLAMA_CPP_ROOTS.add(root)
        llama = await http.post(f"{root}/extras/tokenize/count", json={"input": text})
        llama.raise_for_status()
        return int(llama.json()["count"])


# About 2.5 characters per token in small models' free text (less than English's usual 4), so a
# JSON string sized by it ends before max_tokens cuts the object off unreadable.
CHARS_PER_TOKEN = 2.5


def text_budget(role: Role, cap: int, *, overhead: int = 40) -> int:
    """Characters a JSON reply's strings may take so the object fits in the role's max_tokens."""
    max_tokens = role.params.get("max_tokens")
    if not max_tokens:
        return cap
    return max(16, min(cap, int(int(max_tokens) * CHARS_PER_TOKEN) - overhead))


_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in text (bare or inside prose or fences), or None."""
    for candidate in (text.strip(), *(_OBJECT.findall(text) or ())):
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, dict):
            return value
    return None
