"""The one seam to the models: streamed chat completions from OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Literal, cast, get_args

import httpx
import httpx2  # openai's HTTP client; raw stream reads raise its errors
import openai
from openai.types.chat import ChatCompletionMessageParam

ErrorKind = Literal["unreachable", "timeout", "server_error", "rejected", "malformed_stream"]
ERROR_KINDS: tuple[ErrorKind, ...] = get_args(ErrorKind)

_USER_MESSAGES: dict[ErrorKind, str] = {
    "unreachable": "The assistant's server could not be reached.",
    "timeout": "The assistant's server did not answer in time.",
    "server_error": "The assistant's server ran into an error.",
    "rejected": "The assistant's server refused the request.",
    "malformed_stream": "The assistant's reply arrived incomplete or garbled.",
}

# Passed to the SDK as named arguments; anything else in params travels in extra_body.
_SDK_PARAMS = frozenset(
    "temperature top_p max_tokens max_completion_tokens seed stop presence_penalty"
    " frequency_penalty logit_bias user".split()
)
_RESERVED_PARAMS = frozenset({"model", "messages", "stream", "stream_options"})


@dataclass(frozen=True)
class EndpointSpec:
    """Where a model is served and how long to wait for it."""

    base_url: str
    model: str
    api_key: str = "none"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


class ModelCallError(Exception):
    """A model call failed; kind says how, detail says what happened (for logs, not users)."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown ModelCallError kind {kind!r}")
        super().__init__(f"{kind}: {detail}")
        self.kind: ErrorKind = kind
        self.detail = detail

    def user_message(self) -> str:
        """Return a short participant-safe sentence naming what failed."""
        return _USER_MESSAGES[self.kind]


@dataclass(frozen=True)
class GenerationResult:
    """The whole reply and the server's account of it, yielded last by stream_chat."""

    text: str
    model: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    time_to_first_token: float | None
    duration: float
    usage_source: str = "stream"  # "stream" (server's usage chunk), "tokenize" or "none"
    inter_token_latency: float | None = None  # mean seconds between text chunks after the first


_ClientKey = tuple[str, str, float, float, int]
_clients: dict[_ClientKey, tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI]] = {}


def _client_for(spec: EndpointSpec) -> openai.AsyncOpenAI:
    """Return a cached client for this endpoint, bound to the running event loop."""
    loop = asyncio.get_running_loop()
    for key in [k for k, (lp, _) in _clients.items() if lp.is_closed()]:
        del _clients[key]
    key = (spec.base_url, spec.api_key, spec.connect_timeout, spec.read_timeout, id(loop))
    cached = _clients.get(key)
    if cached is not None and cached[0] is loop:
        return cached[1]
    timeout = openai.Timeout(
        connect=spec.connect_timeout,
        read=spec.read_timeout,
        write=spec.connect_timeout,
        pool=spec.connect_timeout,
    )
    client = openai.AsyncOpenAI(
        base_url=spec.base_url, api_key=spec.api_key, timeout=timeout, max_retries=0
    )
    _clients[key] = (loop, client)
    return client


async def close_clients() -> None:
    """Close the cached clients bound to the running event loop (test teardown, shutdown)."""
    loop = asyncio.get_running_loop()
    for key in [k for k, (lp, _) in _clients.items() if lp is loop]:
        _, client = _clients.pop(key)
        await client.close()


# A server that accepts no connection in time is as gone as one that refuses it: "unreachable"
# is retried on another replica and marks this one down. A read timeout stays "timeout".
_CONNECT_TIMEOUTS = (httpx.ConnectTimeout, httpx2.ConnectTimeout)


def _caused_by(exc: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    """Whether exc or anything in its cause/context chain is one of types."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _classify(exc: Exception) -> ModelCallError | None:
    """Translate a failure to open the stream into a ModelCallError (None if it is not one)."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, openai.APITimeoutError) and _caused_by(exc, _CONNECT_TIMEOUTS):
        return ModelCallError("unreachable", f"{detail} (connect timeout)")
    if isinstance(exc, openai.APITimeoutError):
        return ModelCallError("timeout", detail)
    if isinstance(exc, openai.APIStatusError):
        kind: ErrorKind = "server_error" if exc.status_code >= 500 else "rejected"
        return ModelCallError(kind, f"HTTP {exc.status_code}: {exc.message}")
    if isinstance(exc, openai.APIConnectionError):
        cause = f"{detail} ({type(exc.__cause__).__name__}: {exc.__cause__})"
        return ModelCallError("unreachable", cause)
    return None


def _split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split generation params into SDK keyword arguments and extra body fields."""
    clash = _RESERVED_PARAMS & params.keys()
    if clash:
        raise ValueError(f"params may not set {sorted(clash)}")
    named = {k: v for k, v in params.items() if k in _SDK_PARAMS}
    extra = {k: v for k, v in params.items() if k not in _SDK_PARAMS}
    return named, extra


class _Accumulator:
    """Collects the deltas, finish reason, model name and token counts of one stream."""

    def __init__(self, started: float, model: str) -> None:
        self.started = started
        self.model = model
        self.parts: list[str] = []
        self.saw_choice = False
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    def absorb(self, chunk: dict[str, Any]) -> str:
        """Record one decoded chunk and return its text delta ("" if none)."""
        if chunk.get("error"):
            raise ModelCallError("server_error", f"error event in stream: {chunk['error']}")
        self.model = chunk.get("model") or self.model
        # vLLM and hosted APIs honour stream_options.include_usage with a final choice-less chunk.
        # llama-cpp-python's server (0.3.36) ignores it: its stream carries no usage, timings or
        # token ids at all (only the non-streamed response has usage), so counts stay None there.
        usage = chunk.get("usage")
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens")
            self.completion_tokens = usage.get("completion_tokens")
        choices = chunk.get("choices") or []
        first = next((c for c in choices if c.get("index", 0) == 0), None)
        if first is None:
            return ""
        self.saw_choice = True
        self.finish_reason = first.get("finish_reason") or self.finish_reason
        text = (first.get("delta") or {}).get("content")
        if not text:
            return ""
        self.last_token_at = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = self.last_token_at
        self.parts.append(text)
        return text

    def result(self) -> GenerationResult:
        """Return the final result, or raise if the stream never finished."""
        if not self.saw_choice or self.finish_reason is None:
            raise ModelCallError("malformed_stream", "stream ended without a finish_reason")
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        itl = None
        if self.first_token_at is not None and self.last_token_at and len(self.parts) > 1:
            itl = (self.last_token_at - self.first_token_at) / (len(self.parts) - 1)
        return GenerationResult(
            text="".join(self.parts),
            model=self.model,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            time_to_first_token=ttft,
            duration=time.monotonic() - self.started,
            inter_token_latency=itl,
        )


async def _events(stream: Any) -> AsyncGenerator[dict[str, Any], None]:
    """Decode the SSE body ourselves: the SDK's per-chunk model objects cost about 3x the CPU
    (about 145 vs 45 us a chunk, benchmarks/README.md), and a web process relays many streams.

    The body is read as bytes (raw when the server sent it unencoded) and split into lines here:
    httpx's text and line decoders add two generator layers and a decode per chunk, and
    json.loads reads bytes as well as text.
    """
    response = stream.response
    encoded = response.headers.get("content-encoding", "identity") not in ("", "identity")
    body = response.aiter_bytes() if encoded else response.aiter_raw()
    done, rest = False, b""
    async for data in body:  # read to the end: the connection is reused
        if done:
            continue
        lines = (rest + data).split(b"\n") if rest else data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            yield _decoded(payload)
    if not done and rest.startswith(b"data:") and (payload := rest[5:].strip()) != b"[DONE]":
        yield _decoded(payload)


def _decoded(payload: bytes) -> dict[str, Any]:
    chunk = json.loads(payload)
    if not isinstance(chunk, dict):
        raise TypeError(f"a stream chunk must be an object, not {type(chunk).__name__}")
    return chunk


async def _deltas(stream: Any, acc: _Accumulator) -> AsyncGenerator[str, None]:
    """Read the stream into acc and yield text deltas, translating failures while reading."""
    iterator = _events(stream).__aiter__()
    while True:
        try:
            chunk = await iterator.__anext__()
            delta = acc.absorb(chunk)
        except StopAsyncIteration:
            return
        except (ValueError, TypeError, AttributeError) as exc:
            # Invalid JSON in a data: line (JSONDecodeError), or a chunk that is not a chat chunk.
            raise ModelCallError("malformed_stream", f"{type(exc).__name__}: {exc}") from exc
        except httpx2.TimeoutException as exc:
            raise ModelCallError("timeout", f"{exc!r} after {len(acc.parts)} deltas") from exc
        except httpx2.TransportError as exc:
            raise ModelCallError(
                "malformed_stream", f"{exc!r} after {len(acc.parts)} deltas"
            ) from exc
        if delta:
            yield delta


async def stream_chat(
    spec: EndpointSpec,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    *,
    count: bool = True,
) -> AsyncGenerator[str | GenerationResult, None]:
    """Yield text deltas as they arrive, then one GenerationResult; raise ModelCallError.

    A stream that carried no usage is counted by the server's tokenizer before the result is
    yielded (`count_tokens`); with count=False the result comes at once with usage_source "none"
    and no counts, for a caller that counts later, off its participant's path.
    """
    named, extra = _split_params(params)
    client = _client_for(spec)
    started = time.monotonic()
    try:
        stream = await client.chat.completions.create(
            model=spec.model,
            messages=cast(list[ChatCompletionMessageParam], messages),
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra or None,
            **named,
        )
    except Exception as exc:
        error = _classify(exc)
        if error is None:
            raise
        raise error from exc
    acc = _Accumulator(started, spec.model)
    try:
        async with aclosing(_deltas(stream, acc)) as deltas:
            async for delta in deltas:
                yield delta
    finally:
        # Closing the response drops the connection, which tells the server to stop generating.
        await stream.close()
    result = acc.result()
    if result.completion_tokens is None:
        result = (
            await count_tokens(spec, messages, result)
            if count
            else replace(result, usage_source="none")
        )
    yield result


_tokenize_support: dict[str, bool] = {}


async def count_tokens(
    spec: EndpointSpec, messages: list[dict[str, str]], result: GenerationResult
) -> GenerationResult:
    """Ask the server's own tokenizer for counts when its stream carried no usage.

    llama-cpp-python's server streams no usage; its /extras/tokenize/count endpoint counts with the
    model's tokenizer. The prompt count covers the message texts, not the chat template's own
    tokens, so it is a slight undercount; usage_source="tokenize" records that it was counted so.
    """
    root = spec.base_url.rstrip("/").removesuffix("/v1")
    if _tokenize_support.get(root) is False:
        return replace(result, usage_source="none")
    # The count waits in the same queue as generation on a busy single-slot server: allow it the
    # read timeout, and only a server that says it has no such endpoint is remembered as such (a
    # timeout under load is not a reason to stop counting for good).
    timeout = httpx.Timeout(spec.read_timeout, connect=spec.connect_timeout)
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            counts = []
            for text in ("\n".join(m["content"] for m in messages), result.text):
                response = await http.post(f"{root}/extras/tokenize/count", json={"input": text})
                if response.status_code in (404, 405, 501):
                    _tokenize_support[root] = False
                response.raise_for_status()
                counts.append(int(response.json()["count"]))
    except (httpx.HTTPError, KeyError, ValueError, TypeError):
        return replace(result, usage_source="none")
    _tokenize_support[root] = True
    return replace(
        result, prompt_tokens=counts[0], completion_tokens=counts[1], usage_source="tokenize"
    )
