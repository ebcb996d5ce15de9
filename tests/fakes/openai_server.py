"""A fault-injecting OpenAI-compatible streaming server on plain asyncio (HTTP/1.1, keep-alive).

The request's model picks the behaviour: fake streams N tokens "tok0 tok1 ..."; fake-slow waits
before the first token; fake-stall sends one token, fake-stall-first only headers, then nothing;
fake-500 and fake-400 fail with that status; fake-malformed sends invalid JSON; fake-truncated
ends without finish_reason or [DONE]; fake-drop cuts the connection mid-stream; fake-llamacpp
streams like llama-cpp-python's server (no usage chunk even when asked; counts come from
POST /extras/tokenize/count, which waits while `count_gate` is set and cleared); fake-script
answers with the server's next scripted reply (`responder(body)`, else `script`, a list it pops
from the front; "!500" fails that call; a reply starting "!length " streams the rest and stops
as if cut at the token limit; fake_delay_ms spaces its words, fake_first_token_delay_ms holds
back the first). max_tokens sets N;
extra body fields fake_delay_ms and fake_first_token_delay_ms override the delays per request.
Benchmarks: python -m tests.fakes.openai_server --port 8090 --tokens 64 --delay-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

LENGTH_MARK = "!length "  # a scripted reply that ends as if cut at the token limit
MODELS = tuple(
    "fake fake-slow fake-stall fake-stall-first fake-500 fake-400 fake-malformed fake-truncated"
    " fake-drop fake-script fake-llamacpp".split()
)


@dataclass
class FakeStats:
    """What the server saw; plain counters, safe to read from another thread."""

    connections: int = 0
    chat_requests: int = 0
    streams_completed: int = 0
    disconnects: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    counts: int = 0  # POST /extras/tokenize/count requests answered
    last_body: dict[str, Any] = field(default_factory=dict)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """Read one HTTP/1.1 request as (method, path, body); None once the client has closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    request_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    length = 0
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return method, path, await reader.readexactly(length) if length else b""


def _head(status: int, content_type: str, length: int | None = None) -> bytes:
    """Return response headers: fixed length, or chunked when length is None."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {content_type}\r\n{framing}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()


def _json_response(status: int, payload: dict[str, Any]) -> bytes:
    """Return a complete JSON response."""
    body = json.dumps(payload).encode()
    return _head(status, "application/json", len(body)) + body


def _error(status: int, message: str) -> bytes:
    """Return a complete OpenAI-style JSON error response."""
    return _json_response(status, {"error": {"message": message, "type": "fake", "code": status}})


def _event(payload: str) -> bytes:
    """Wrap one SSE data line in an HTTP chunk."""
    data = f"data: {payload}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


def _usage(body: dict[str, Any], count: int) -> dict[str, int]:
    """Return usage for count tokens; the words of the messages are the fake's prompt tokens."""
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    return {"prompt_tokens": prompt, "completion_tokens": count, "total_tokens": prompt + count}


class _Reply:
    """Builds the JSON objects of one completion."""

    def __init__(self, model: str) -> None:
        self.fields = dict(id=f"fake-{time.monotonic_ns()}", created=int(time.time()), model=model)

    def chunk(self, delta: dict[str, str] | None, finish: str | None = None, **rest: Any) -> str:
        """Return one chat.completion.chunk; delta None makes a chunk without choices."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        payload = {**self.fields, "object": "chat.completion.chunk", "choices": choices}
        return json.dumps({**payload, **rest})

    def completion(self, text: str, usage: dict[str, int]) -> dict[str, Any]:
        """Return a whole chat.completion."""
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return {**self.fields, "object": "chat.completion", "choices": [choice], "usage": usage}


@dataclass
class FakeOpenAIServer:
    """An OpenAI-compatible server whose failures are chosen by the request's model name."""

    host: str = "127.0.0.1"
    port: int = 0
    tokens: int = 16
    token_delay: float = 0.0
    first_token_delay: float = 1.0
    stats: FakeStats = field(default_factory=FakeStats)
    script: list[str] = field(default_factory=list)
    # While set to a cleared Event, /extras/tokenize/count waits for it (a busy llama.cpp slot).
    count_gate: asyncio.Event | None = None
    # For fake-script under concurrency: picks the reply from the request body (wins over script).
    responder: Callable[[dict[str, Any]], str] | None = None
    _server: asyncio.Server | None = field(default=None, init=False, repr=False)
    _connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = field(
        default_factory=dict, init=False, repr=False
    )

    async def start(self) -> str:
        """Start listening and return the base URL (ending in /v1)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://{self.host}:{self.port}/v1"

    async def stop(self) -> None:
        """Stop listening and drop every open connection, stalled ones included."""
        if self._server is None:
            return
        self._server.close()
        # Aborting (not cancelling) lets each handler see EOF and return by itself.
        for writer in self._connections.values():
            writer.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def run_in_thread(self) -> tuple[str, Callable[[], None]]:
        """Serve from a background thread with its own loop; return (base_url, stop)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-openai", daemon=True)
        thread.start()

        def call(coroutine: Coroutine[Any, Any, Any]) -> Any:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=10)

        def stop() -> None:
            call(self.stop())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

        return call(self.start()), stop

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = cast("asyncio.Task[Any]", asyncio.current_task())
        self._connections[task] = writer
        self.stats.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                if not await self._respond(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _respond(
        self,
        request: tuple[str, str, bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; return whether the connection may serve another."""
        method, path, body = request
        if (method, path) == ("GET", "/v1/models"):
            listing = [{"id": m, "object": "model", "owned_by": "fake"} for m in MODELS]
            writer.write(_json_response(200, {"object": "list", "data": listing}))
        elif (method, path) == ("POST", "/tokenize"):
            # vLLM's tokenizer endpoint; the fake's tokens are whitespace-separated words.
            words = len(str(json.loads(body).get("prompt", "")).split())
            writer.write(_json_response(200, {"count": words, "tokens": list(range(words))}))
        elif (method, path) == ("POST", "/extras/tokenize/count"):
            # llama-cpp-python's tokenizer count; the fake's tokens are whitespace-separated words.
            if self.count_gate is not None:
                await self.count_gate.wait()
            words = len(str(json.loads(body).get("input", "")).split())
            self.stats.counts += 1
            writer.write(_json_response(200, {"count": words}))
        elif (method, path) == ("POST", "/v1/chat/completions"):
            self.stats.chat_requests += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                return await self._chat(body, reader, writer)
            finally:
                self.stats.in_flight -= 1
        else:
            writer.write(_error(404, f"no route for {method} {path}"))
        await writer.drain()
        return True

    async def _chat(
        self, raw: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        body = self.stats.last_body = json.loads(raw)  # clients of a fake send JSON objects
        model = body.get("model")
        if model not in MODELS:
            writer.write(_error(404, f"model {model!r} not found"))
        elif model == "fake-script" and self._next_scripted(body) == "!500":
            writer.write(_error(500, "scripted failure"))
        elif model in ("fake-500", "fake-400"):
            writer.write(_error(int(model[-3:]), f"{model} fails on purpose"))
        elif model.startswith("fake-stall") and not body.get("stream"):
            return await self._watched(asyncio.Event().wait(), reader)
        else:
            send = self._stream if body.get("stream") else self._whole
            return await self._watched(send(body, writer), reader)
        await writer.drain()
        return True

    async def _watched(self, work: Coroutine[Any, Any, Any], reader: asyncio.StreamReader) -> bool:
        """Run work until done or until the client disconnects (read EOF); False if it did."""
        producer = asyncio.ensure_future(work)
        # The client sends nothing more while it waits for this response, so EOF means it left.
        watcher = asyncio.ensure_future(reader.read(1))
        await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        watcher.cancel()
        await asyncio.wait({watcher})  # a reader allows one waiter; let this one go first
        if producer.done() and not isinstance(producer.exception(), ConnectionError):
            producer.result()  # re-raises anything but a dropped connection
            return True
        producer.cancel()
        self.stats.disconnects += 1
        return False

    def _plan(self, body: dict[str, Any]) -> tuple[int, float, float]:
        """Return (token count, per-token delay, first-token delay) for this request."""
        count = int(body.get("max_tokens") or self.tokens)
        delay = float(body.get("fake_delay_ms", self.token_delay * 1000)) / 1000
        slow = self.first_token_delay if body["model"] == "fake-slow" else 0.0
        first = float(body.get("fake_first_token_delay_ms", slow * 1000)) / 1000
        return count, delay, first

    def _next_scripted(self, body: dict[str, Any]) -> str:
        """Pick this request's scripted reply (kept in the body for _scripted)."""
        if self.responder is not None:
            text = self.responder(body)
        else:
            text = self.script.pop(0) if self.script else "tok0"
        body["_scripted"] = text
        return text

    async def _scripted(
        self, body: dict[str, Any], reply: _Reply, writer: asyncio.StreamWriter
    ) -> None:
        """Stream the chosen scripted reply word by word, with usage when asked for."""
        text, finish = body["_scripted"], "stop"
        if text.startswith(LENGTH_MARK):
            text, finish = text.removeprefix(LENGTH_MARK), "length"
        words = text.split(" ")
        # Only when the request asks: scripted replies otherwise arrive at once, as before.
        delay = float(body.get("fake_delay_ms", 0)) / 1000
        first = float(body.get("fake_first_token_delay_ms", 0)) / 1000
        if first:  # the headers are out: the client is waiting for its first token
            await writer.drain()
            await asyncio.sleep(first)
        for i, word in enumerate(words):
            if delay and i:
                await writer.drain()
                await asyncio.sleep(delay)
            writer.write(_event(reply.chunk({"content": word if i == 0 else " " + word})))
        writer.write(_event(reply.chunk({}, finish)))
        if (body.get("stream_options") or {}).get("include_usage"):
            writer.write(_event(reply.chunk(None, usage=_usage(body, len(words)))))
        writer.write(_event("[DONE]"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self.stats.streams_completed += 1

    async def _whole(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """Answer without streaming, after the time the tokens would have taken."""
        count, delay, first = self._plan(body)
        await asyncio.sleep(first + delay * count)
        text = " ".join(f"tok{i}" for i in range(count))
        writer.write(
            _json_response(200, _Reply(body["model"]).completion(text, _usage(body, count)))
        )
        await writer.drain()

    async def _stream(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """Write one streamed reply, misbehaving as the model name says."""
        model = body["model"]
        count, delay, first = self._plan(body)
        reply = _Reply(model)
        writer.write(_head(200, "text/event-stream"))
        await writer.drain()
        if model == "fake-stall-first":
            await asyncio.Event().wait()
        await asyncio.sleep(first)
        writer.write(_event(reply.chunk({"role": "assistant", "content": ""})))
        if model == "fake-script":
            await self._scripted(body, reply, writer)
            return
        for i in range(count):
            if delay:
                await asyncio.sleep(delay)
            writer.write(_event(reply.chunk({"content": f" tok{i}" if i else "tok0"})))
            await writer.drain()
            if model == "fake-stall":
                await asyncio.Event().wait()
            if model == "fake-drop":
                writer.transport.abort()
                return
            if model == "fake-malformed":
                writer.write(_event('{"choices": [{"delta": {"content": "unterminated'))
                break
        if model not in ("fake-truncated", "fake-malformed"):
            writer.write(_event(reply.chunk({}, "length" if body.get("max_tokens") else "stop")))
            usage = (body.get("stream_options") or {}).get("include_usage")
            if usage and model != "fake-llamacpp":
                writer.write(_event(reply.chunk(None, usage=_usage(body, count))))
            writer.write(_event("[DONE]"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self.stats.streams_completed += 1


async def _serve_forever(server: FakeOpenAIServer) -> None:
    print(await server.start(), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    """Run the fake server in the foreground for benchmarks."""
    parser = argparse.ArgumentParser(description="Fault-injecting fake OpenAI server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--first-token-delay-ms", type=float, default=1000.0)
    args = parser.parse_args()
    server = FakeOpenAIServer(
        args.host, args.port, args.tokens, args.delay_ms / 1000, args.first_token_delay_ms / 1000
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(server))


if __name__ == "__main__":
    main()
