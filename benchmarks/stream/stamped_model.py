"""The stamped fake model: every token's text is its own emission time, so a client can time it.

The test fake (tests/fakes/openai_server.py), but token i of a model "fake" reply is the text
`<t:{time.time_ns()}> `: whoever sees the token subtracts that stamp from its arrival time. The
token gap comes with each request (`fake_delay_ms`). The benchmark starts it as a process of its
own, so its CPU is counted apart:

    .venv/bin/python -m benchmarks.stream.stamped_model --port 8091 --tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable
from typing import Any

from tests.fakes.openai_server import FakeOpenAIServer, _event, _head, _Reply, _usage

STAMP = re.compile(r"<t:(\d+)>")
STAMP_BYTES = re.compile(rb"<t:(\d+)>")


class StampedFakeServer(FakeOpenAIServer):
    """The test fake, but token i's text is `<t:{emission time in ns}> ` (model "fake" only)."""

    async def _stream(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        count, delay, first = self._plan(body)
        reply = _Reply(body["model"])
        writer.write(_head(200, "text/event-stream"))
        writer.write(_event(reply.chunk({"role": "assistant", "content": ""})))
        await writer.drain()
        await asyncio.sleep(first)
        for _ in range(count):
            await asyncio.sleep(delay)
            writer.write(_event(reply.chunk({"content": f"<t:{time.time_ns()}> "})))
            await writer.drain()
        writer.write(_event(reply.chunk({}, "length")))
        if (body.get("stream_options") or {}).get("include_usage"):
            writer.write(_event(reply.chunk(None, usage=_usage(body, count))))
        writer.write(_event("[DONE]") + b"0\r\n\r\n")
        await writer.drain()
        self.stats.streams_completed += 1


def serve_fake(port: int, tokens: int, delay_ms: float) -> None:
    """Run the stamped fake in the foreground (the benchmark starts this as a subprocess)."""
    server = StampedFakeServer("127.0.0.1", port, tokens, delay_ms / 1000, 0.0)

    async def forever() -> None:
        print(await server.start(), flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        run_loop(forever())


def run_loop(main: Awaitable[Any]) -> Any:
    """asyncio.run on uvloop when it is installed (it is: uvicorn[standard] brings it)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=25.0, help="unless a request says")
    args = parser.parse_args(argv)
    serve_fake(args.port, args.tokens, args.delay_ms)


if __name__ == "__main__":
    main()
