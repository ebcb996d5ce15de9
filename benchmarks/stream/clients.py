"""The measuring clients: what one participant (platform path) or one reader of the fake (direct
path) saw of each reply, token by token, timed against the tokens' emission stamps."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.stream.config import MS, Config
from benchmarks.stream.database import Seat
from benchmarks.stream.stamped_model import STAMP, STAMP_BYTES


@dataclass
class Turn:
    """What one client saw of one reply (latencies in ms)."""

    ok: bool = False
    error: str = ""
    tokens: int = 0
    frames: int = 0
    ttft_ms: float | None = None
    first_ms: float | None = None  # the first token, carried by a leading-edge frame (no hold)
    ack_ms: float | None = None  # platform only: send -> `ack` (the user message is committed)
    started_ms: float | None = None  # platform only: send -> `started` (via the channel layer)
    newest_ms: list[float] = field(default_factory=list)  # newest token of each frame
    every_ms: list[float] = field(default_factory=list)  # every token, at its first arrival
    top: tuple[int, int] = (0, 0)  # (newest emission stamp seen, when it arrived)

    def absorb(self, stamps: list[int], arrived: int, started: int, *, frame: bool) -> None:
        """Record the new tokens of one frame (or read, on the direct path)."""
        if not stamps:
            return
        if self.ttft_ms is None:
            self.ttft_ms = (arrived - started) / MS
            self.first_ms = (arrived - min(stamps)) / MS
        newest = max(stamps)
        if frame:
            self.frames += 1
            self.newest_ms.append((arrived - newest) / MS)
        if newest > self.top[0]:
            self.top = (newest, arrived)
        self.every_ms.extend((arrived - s) / MS for s in stamps)
        self.tokens += len(stamps)

    @property
    def last_ms(self) -> float | None:
        """Latency of the reply's last token, at the frame that first carried it."""
        return (self.top[1] - self.top[0]) / MS if self.tokens else None


def new_stamps(text: str, seen: set[int]) -> list[int]:
    """Emission stamps in text that were not seen before (and remember them)."""
    found = [int(s) for s in STAMP.findall(text)]
    fresh = [s for s in found if s not in seen]
    seen.update(fresh)
    return fresh


# --- platform path: websocket clients --------------------------------------------------------


async def connect(base: str, seat: Seat, sem: asyncio.Semaphore) -> Any:
    """Open the participant's chat socket and read the initial state frame."""
    from websockets.asyncio.client import connect as ws_connect

    url = f"ws://{base}/ws/s/{seat.slug}/chat/"
    async with sem:
        ws = await ws_connect(
            url,
            origin=f"http://{base}",  # type: ignore[arg-type]
            additional_headers={"Cookie": seat.cookie},
            open_timeout=30,
            ping_interval=None,
            max_size=2**22,
        )
        first = json.loads(await asyncio.wait_for(ws.recv(), 30))
    if first.get("type") != "state":
        raise RuntimeError(f"expected a state frame, got {first}")
    return ws


async def platform_turn(ws: Any, cfg: Config) -> Turn:
    """Send one turn and follow its frames to `complete`, `failed` or an error."""
    turn, seen, reply_id = Turn(), set[int](), None
    key = str(uuid.uuid4())
    started = time.time_ns()
    await ws.send(json.dumps({"type": "send", "text": f"bench turn {key[:8]}", "key": key}))
    async with asyncio.timeout(cfg.turn_timeout):
        while True:
            raw = await ws.recv()
            arrived = time.time_ns()
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "ack":
                turn.ack_ms = (arrived - started) / MS
            elif kind == "started":
                reply_id = frame["message"]["id"]
                turn.started_ms = (arrived - started) / MS
            elif kind == "delta" and frame.get("id") == reply_id:
                turn.absorb(new_stamps(frame["delta"], seen), arrived, started, frame=True)
            elif kind == "complete" and frame["message"]["id"] == reply_id:
                return _completed(turn, frame["message"]["text"], seen, arrived, started, cfg)
            elif kind in ("failed", "error"):
                turn.error = f"{kind}: {frame.get('error') or frame.get('code')}"
                return turn


def _completed(
    turn: Turn, text: str, seen: set[int], arrived: int, started: int, cfg: Config
) -> Turn:
    """Account for tokens that only the complete frame carried; check the reply is whole."""
    turn.absorb(new_stamps(text, seen), arrived, started, frame=False)
    in_reply = len(STAMP.findall(text))
    turn.ok = in_reply == cfg.tokens and turn.tokens == cfg.tokens
    if not turn.ok:
        turn.error = f"tokens: reply has {in_reply}, frames carried {turn.tokens}"
    return turn


def _describe(exc: Exception, cfg: Config) -> str:
    if isinstance(exc, TimeoutError):
        return f"timeout: the reply did not end within {cfg.turn_timeout:g} s"
    return f"{type(exc).__name__}: {exc}"


async def _turns(take: Callable[[], Awaitable[Turn]], cfg: Config) -> list[Turn]:
    """cfg.turns turns one after another, a think pause between; stop at the first failed one."""
    turns: list[Turn] = []
    for _ in range(cfg.turns):
        try:
            turn = await take()
        except Exception as exc:  # recorded as a failed turn, not raised
            turn = Turn(error=_describe(exc, cfg))
        turns.append(turn)
        if not turn.ok:
            break
        await asyncio.sleep(random.uniform(0, cfg.think_ms / 1000))
    return turns


async def platform_client(ws: Any, cfg: Config, offset: float) -> list[Turn]:
    """One participant: wait their start offset, then send cfg.turns turns one after another."""
    await asyncio.sleep(offset)
    return await _turns(lambda: platform_turn(ws, cfg), cfg)


# --- direct path: httpx straight to the fake -------------------------------------------------


async def direct_turn(http: Any, url: str, gap: float, cfg: Config) -> Turn:
    """Stream one completion from the fake and time each token at the read that carried it."""
    body = {
        "fake_delay_ms": gap,
        "model": "fake",
        "messages": [{"role": "user", "content": "bench"}],
        "stream": True,
        "max_tokens": cfg.tokens,
        "stream_options": {"include_usage": True},
    }
    turn, seen, buffer = Turn(), set[int](), b""
    started = time.time_ns()
    async with asyncio.timeout(cfg.turn_timeout), http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            arrived = time.time_ns()
            buffer += chunk
            matches = list(STAMP_BYTES.finditer(buffer))
            stamps = [int(m.group(1)) for m in matches if int(m.group(1)) not in seen]
            seen.update(stamps)
            turn.absorb(stamps, arrived, started, frame=True)
            buffer = buffer[matches[-1].end() :] if matches else buffer[-64:]
    turn.ok = turn.tokens == cfg.tokens
    if not turn.ok:
        turn.error = f"tokens: got {turn.tokens}"
    return turn


async def direct_client(url: str, gap: float, cfg: Config, offset: float) -> list[Turn]:
    """One reader of the fake, with its own httpx client: a client shared by N streams spends
    O(N) per request event in httpcore's pool (O(N^2) in all), which saturated this process."""
    import httpx

    # verify=False: plain http on loopback; loading the CA bundle costs ~20 ms per client.
    async with httpx.AsyncClient(timeout=cfg.turn_timeout, verify=False) as http:
        await asyncio.sleep(offset)
        return await _turns(lambda: direct_turn(http, url, gap, cfg), cfg)
