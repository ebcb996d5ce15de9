"""A simulated participant that keeps chatting through faults, and remembers what it saw.

The pages up to the chat are the pilot driver's (`studies.pilot.driver.Visit`). The chat speaks
chat.js's protocol and behaves as the page does: an unacknowledged message is resent with the same
idempotency key after a reconnect, a quiet streaming reply asks for the whole state, a reply that
stays quiet past the stale window makes the page reload (reconnect), and a failed reply is
retried. It records every reply as shown on screen, for the auditor to hold against the database.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, WebSocketException

from studies.pilot.driver import PilotPlan, TaskInfo, Visit
from studies.pilot.simulator import UserSimulator
from studies.services.deltas import delta_apply

QUIET_SYNC = 5.0  # chat.js: a streaming reply quiet this long asks for the whole state
FRAME_TIMEOUT = 15.0  # an answer to sync/rating/send that takes longer: the page reconnects
BACKOFF = (0.3, 4.0)
# Every message names its sender, turn and key, so the model's requests can be traced back.
ENDED = ("complete", "failed", "interrupted")
TAG = re.compile(r"Participant (\d+), turn \d+ \(([0-9a-f]{8})\)")


class Reconnect(Exception):
    """The socket is gone or the page would reload: connect again."""


class _AtChat(Exception):
    """The visit reached the chat page."""


@dataclass
class Reply:
    """One assistant row as this participant saw it."""

    id: int
    turn: int
    slot: int  # the web slot whose process was asked to generate it
    requested_at: float
    shown: str = ""  # the longest text ever on screen for it
    text: str = ""  # the text on screen now
    status: str = "streaming"  # the status on screen now
    complete_text: str | None = None  # what a `complete` frame (or a complete state) showed
    failure_seen: bool = False
    final_at: float | None = None

    def see(self, text: str, status: str | None = None) -> None:
        self.text = text
        if len(text) > len(self.shown):
            self.shown = text
        if status not in ENDED:  # streaming, or a state this harness does not know (waiting)
            return
        self.status = status
        if self.final_at is None:
            self.final_at = time.monotonic()
        if status == "complete":
            self.complete_text = text
        else:
            self.failure_seen = True


@dataclass
class Sent:
    """One user message, by idempotency key."""

    key: str
    text: str
    sends: int = 0
    acked: bool = False
    user_id: int | None = None
    turn: int | None = None
    refused: str = ""


@dataclass
class SimParticipant:
    index: int
    ws_urls: list[str]  # one per web slot
    origin: str
    cookies: str
    stale_seconds: float
    rng: random.Random
    sent: dict[str, Sent] = field(default_factory=dict)
    replies: dict[int, Reply] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)  # injected by this participant
    wanted: Counter[str] = field(default_factory=Counter)  # duplicates the scheduler asked for
    errors: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    gave_up: str = ""
    socket: ClientConnection | None = None
    slot: int = 0
    following: int | None = None
    state: dict | None = None
    pending: Sent | None = None
    ratings: int = 0
    turn_slot: dict[int, tuple[int, float]] = field(default_factory=dict)

    # ---- the run -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, deadline: float) -> None:
        """Chat until `stop` is set and the last turn is settled, or until `deadline`."""
        wait = BACKOFF[0]
        self.slot = self.index % len(self.ws_urls)
        while time.monotonic() < deadline:
            try:
                await self._connect()
                wait = BACKOFF[0]
                if await self._chat(stop, deadline):
                    return
            except (Reconnect, OSError, TimeoutError, WebSocketException):
                self.reconnects += 1
                await asyncio.sleep(wait)
                wait = min(wait * 2, BACKOFF[1])
                self.slot = self.rng.randrange(len(self.ws_urls))
            finally:
                await self._close()
        self.gave_up = self.gave_up or "deadline"

    def drop(self) -> bool:
        """Cut this participant's socket as a network would (no close handshake)."""
        if self.socket is None:
            return False
        self.socket.transport.abort()
        return True

    async def _connect(self) -> None:
        try:
            self.socket = await connect(
                self.ws_urls[self.slot],
                origin=self.origin,  # type: ignore[arg-type]
                additional_headers={"Cookie": self.cookies},
                open_timeout=10,
                proxy=None,
            )
        except InvalidHandshake as exc:
            raise Reconnect(f"handshake: {exc}") from exc
        await self._until(lambda f: f["type"] == "state")

    async def _close(self) -> None:
        socket, self.socket, self.following = self.socket, None, None
        if socket is not None:
            socket.transport.abort()

    async def _chat(self, stop: asyncio.Event, deadline: float) -> bool:
        """Act on the state until done (True); a lost socket raises Reconnect."""
        while time.monotonic() < deadline:
            state = self.state or {}
            messages = [m for m in state.get("messages", []) if m["role"] == "assistant"]
            last = messages[-1] if messages else None
            if self.pending is not None:
                await self._send(self.pending)
            elif state.get("rating_due") is not None:
                await self._rate(state["rating_due"])
            elif last is not None and last["status"] not in ENDED:
                await self._follow(last["id"], deadline)
            elif last is not None and last["status"] in ("failed", "interrupted"):
                await self._retry(last)
            elif stop.is_set():
                return True
            elif state.get("status") != "chatting":
                self.gave_up = f"chat state {state.get('status')!r}"
                return True
            else:
                self._new_turn(state.get("completed_turns", 0) + 1)
        return False

    # ---- actions -------------------------------------------------------------------------------

    def _new_turn(self, turn: int) -> None:
        key = str(uuid.uuid4())
        text = (
            f"Participant {self.index}, turn {turn} ({key[:8]}): please improve my draft and "
            "keep the tone warm and concrete."
        )
        self.pending = self.sent[key] = Sent(key, text)

    async def _send(self, sent: Sent) -> None:
        frame = {"type": "send", "text": sent.text, "key": sent.key}
        copies = 1 + self._duplicate("dup_send")
        for _ in range(copies):
            await self._put(frame)
            sent.sends += 1
        ack = await self._until(
            lambda f: f.get("key") == sent.key and f["type"] in ("ack", "error")
        )
        if ack["type"] == "error":
            if ack.get("code") != "busy":  # busy: a reply still streams; send again after it
                sent.refused, self.pending = str(ack.get("code")), None
            await asyncio.sleep(0.5)  # as a person reading the notice: never a tight loop
        else:
            self.pending = None
            if not ack.get("replayed"):
                self.turn_slot[ack["message"]["turn"]] = (self.slot, time.monotonic())
        await self._sync()

    async def _retry(self, message: dict) -> None:
        self.turn_slot[message["turn"]] = (self.slot, time.monotonic())
        for _ in range(1 + self._duplicate("dup_retry")):
            await self._put({"type": "retry", "message_id": message["id"]})
        await self._sync()

    async def _rate(self, after_turn: int) -> None:
        frame = {"type": "rating", "after_turn": after_turn, "score": self.rng.randint(4, 9)}
        for _ in range(1 + self._duplicate("dup_rating")):
            await self._put(frame)
        self.ratings += 1
        await self._sync()

    async def _follow(self, reply_id: int, deadline: float) -> None:
        """Watch a streaming reply until the screen shows it ended."""
        self.following = reply_id
        last_frame = last_progress = time.monotonic()
        shown = -1
        while time.monotonic() < deadline:
            reply = self.replies.get(reply_id)
            if reply is not None and reply.status != "streaming":
                self.following = None
                await self._sync()
                return
            if reply is not None and len(reply.shown) != shown:
                shown, last_progress = len(reply.shown), time.monotonic()
            if await self._recv(1.0) is not None:
                last_frame = time.monotonic()
            now = time.monotonic()
            if now - last_frame > QUIET_SYNC:
                await self._put({"type": "sync"})
                last_frame = now
            if now - last_progress > self.stale_seconds + QUIET_SYNC:
                raise Reconnect("the reply stayed quiet: reload the page")
        self.following = None

    def _duplicate(self, kind: str) -> int:
        if self.wanted[kind] <= 0:
            return 0
        self.wanted[kind] -= 1
        self.faults[kind] += 1
        return 1

    # ---- frames --------------------------------------------------------------------------------

    async def _sync(self) -> None:
        await self._put({"type": "sync"})
        await self._until(lambda f: f["type"] == "state")

    async def _put(self, frame: dict) -> None:
        if self.socket is None:
            raise Reconnect("no socket")
        await self.socket.send(json.dumps(frame))

    async def _until(self, wanted) -> dict:
        deadline = time.monotonic() + FRAME_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            frame = await self._recv(left)
            if frame is not None and wanted(frame):
                return frame
        raise Reconnect("no answer from the server")

    async def _recv(self, seconds: float) -> dict | None:
        if self.socket is None:
            raise Reconnect("no socket")
        try:
            async with asyncio.timeout(seconds):
                raw = await self.socket.recv()
        except TimeoutError:
            return None
        frame = json.loads(raw)
        self._observe(frame)
        return frame

    def _reply(self, message_id: int, turn: int) -> Reply:
        reply = self.replies.get(message_id)
        if reply is None:
            slot, at = self.turn_slot.get(turn, (self.slot, time.monotonic()))
            reply = self.replies[message_id] = Reply(message_id, turn, slot, at)
        return reply

    def _observe(self, frame: dict) -> None:
        """What the page would show for this frame."""
        kind = frame.get("type")
        if kind == "state":
            self.state = frame
            for m in frame["messages"]:
                if m["role"] == "assistant":
                    self._reply(m["id"], m["turn"]).see(m["text"], m["status"])
        elif kind == "started":
            m = frame["message"]
            self._reply(m["id"], m["turn"]).see(m["text"])
        elif kind == "delta" and frame.get("id") in self.replies:
            reply = self.replies[frame["id"]]
            if reply.status != "streaming":
                return
            text = delta_apply(reply.text, frame)
            if text is not None:  # None: a gap, healed by a later frame
                reply.see(text)
        elif kind == "saving" and frame.get("id") in self.replies:
            self.replies[frame["id"]].see(frame.get("text") or "")  # finished, being stored
        elif kind == "complete":
            m = frame["message"]
            self._reply(m["id"], m["turn"]).see(m["text"], "complete")
        elif kind == "failed" and frame.get("id") in self.replies:
            self.replies[frame["id"]].see(frame.get("text") or "", "failed")
        elif kind == "ack":
            sent = self.sent.get(frame.get("key", ""))
            if sent is not None:
                sent.acked, sent.user_id = True, frame["message"]["id"]
                sent.turn = frame["message"]["turn"]
        elif kind == "error":
            self.errors[str(frame.get("code"))] += 1


class _ToChat(Visit):
    async def _chat(self, page, response):  # type: ignore[override]
        raise _AtChat


async def enter(base_url: str, plan: dict, index: int, seed: int) -> str:
    """Take participant `index` through entry, consent, brief and check; return its cookies."""
    tasks = {pk: TaskInfo(*info) for pk, info in plan["tasks"].items()}
    pilot = PilotPlan(base_url, plan["slug"], plan["entry_path"], tasks, seed=seed)
    rng = random.Random(f"{seed}:{index}")
    from studies.pilot.driver import ParticipantRun

    async with httpx.AsyncClient(base_url=base_url, timeout=30, follow_redirects=False) as http:
        visit = _ToChat(pilot, http, UserSimulator(None), rng, ParticipantRun(index))
        try:
            await visit.go()
        except _AtChat:
            return "; ".join(f"{c.name}={c.value}" for c in http.cookies.jar)
    raise RuntimeError(f"participant {index} never reached the chat: {visit.run.step}")
