"""One simulated participant's conversation over the chat websocket, as chat.js speaks it."""

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect

from studies.pilot.simulator import SimulatedUser, UserSimulator

MAX_RETRIES_PER_TURN = 1
# A participant told "you are sending messages too quickly" waits and sends again; the server's
# limit is a one-minute window (CHAT_TURNS_PER_MINUTE), so this many pauses always outlast it.
RATE_LIMIT_PAUSE_SECONDS = 10.0
RATE_LIMIT_RESENDS = 7


class StepFailed(Exception):
    """A step of the visit went wrong; `step` names it in the report."""

    def __init__(self, step: str, message: str, code: str | None = None) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message
        self.code = code  # the server's error code, when the server refused


@dataclass
class TurnTiming:
    seconds: float  # user send -> complete frame
    ttft: float  # user send -> first text of the reply


@dataclass
class ChatOutcome:
    """Filled in as the chat goes, so a chat that fails midway still reports its turns."""

    messages: int = 0  # written by the simulator
    turns: list[TurnTiming] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    ratings: int = 0
    replies: list[str] = field(default_factory=list)
    errors: list[StepFailed] = field(default_factory=list)  # survived (a retried reply)


@dataclass
class ChatSession:
    """Drives one websocket until the server says the participant may finish."""

    socket: ClientConnection
    simulator: UserSimulator
    user: SimulatedUser
    frame_timeout: float
    score: int
    outcome: ChatOutcome
    history: list[dict[str, str]] = field(default_factory=list)

    async def run(self) -> ChatOutcome:
        state = await self._until(lambda f: f["type"] == "state", step="chat")
        await self._send({"type": "presence", "signal": "visible"})
        guard = (state.get("max_turns") or state["min_turns"]) * 3 + 5
        for _ in range(guard):
            if state.get("rating_due") is not None:
                state = await self._rate(state["rating_due"])
            elif state.get("can_finish"):
                return self.outcome
            elif state.get("status") != "chatting":
                raise StepFailed("chat", f"the chat is in state {state.get('status')!r}")
            else:
                state = await self._turn(state["completed_turns"] + 1)
        raise StepFailed("chat", "the server never allowed finishing")

    async def _turn(self, turn: int) -> dict:
        message = await self.simulator.next_message(self.user, self.history, turn)
        self.outcome.messages += 1
        if message.fallback:
            self.outcome.fallbacks.append(message.fallback)
        key = str(uuid.uuid4())
        await self._send({"type": "presence", "signal": "active"})
        ack, started = await self._send_message(message.text, key)
        self.history.append({"role": "user", "content": ack["message"]["text"]})
        for attempt in range(MAX_RETRIES_PER_TURN + 1):
            frame, first_text = await self._reply()
            if frame["type"] == "complete":
                done = time.monotonic()
                reply = frame["message"]["text"]
                self.outcome.turns.append(
                    TurnTiming(done - started, (first_text or done) - started)
                )
                self.outcome.replies.append(reply)
                self.history.append({"role": "assistant", "content": reply})
                return await self._sync()
            error = StepFailed(
                "chat", f"reply failed ({frame.get('error')}): {frame.get('message')}"
            )
            if attempt == MAX_RETRIES_PER_TURN:
                raise error
            self.outcome.errors.append(error)  # a participant would press retry, and so do we
            await self._send({"type": "retry", "message_id": frame["id"]})
        raise AssertionError("unreachable")

    async def _send_message(self, text: str, key: str) -> tuple[dict, float]:
        """The server's ack of the message, and when the accepted send left."""
        for resend in range(RATE_LIMIT_RESENDS + 1):
            started = time.monotonic()
            await self._send({"type": "send", "text": text, "key": key})
            try:
                ack = await self._until(
                    lambda f: f["type"] == "ack" and f.get("key") == key, step="chat", key=key
                )
                return ack, started
            except StepFailed as refused:
                if refused.code != "rate_limited" or resend == RATE_LIMIT_RESENDS:
                    raise
                self.outcome.errors.append(refused)  # survived: shown in the report
                await rate_limit_pause()
        raise AssertionError("unreachable")

    async def _reply(self) -> tuple[dict, float | None]:
        """The reply's last frame (complete or failed), and when its first text arrived."""
        first_text = None
        while True:
            frame = await self._until(
                lambda f: f["type"] in ("complete", "failed", "delta"), step="chat"
            )
            if frame["type"] != "delta":
                return frame, first_text
            if first_text is None and (frame.get("delta") or frame.get("full")):
                first_text = time.monotonic()

    async def _rate(self, after_turn: int) -> dict:
        await self._send({"type": "rating", "after_turn": after_turn, "score": self.score})
        state = await self._until(lambda f: f["type"] == "state", step="rating")
        self.outcome.ratings += 1
        return state

    async def _sync(self) -> dict:
        await self._send({"type": "sync"})
        return await self._until(lambda f: f["type"] == "state", step="chat")

    async def _send(self, frame: dict) -> None:
        await self.socket.send(json.dumps(frame))

    async def _until(self, wanted, step: str, key: str | None = None) -> dict:
        """The next frame `wanted` accepts; an error frame (for this key, if any) fails `step`."""
        try:
            async with asyncio.timeout(self.frame_timeout):
                while True:
                    frame = json.loads(await self.socket.recv())
                    if frame.get("type") == "error" and (
                        key is None or frame.get("key") in (key, None)
                    ):
                        raise StepFailed(
                            step, f"{frame.get('code')}: {frame.get('message')}", frame.get("code")
                        )
                    if wanted(frame):
                        return frame
        except TimeoutError:
            raise StepFailed(
                step, f"no answer from the server in {self.frame_timeout:.0f}s"
            ) from None


async def rate_limit_pause() -> None:
    """What a participant told to slow down does before pressing send again."""
    await asyncio.sleep(RATE_LIMIT_PAUSE_SECONDS)


async def chat_run(
    *,
    ws_url: str,
    origin: str,
    cookies: str,
    simulator: UserSimulator,
    user: SimulatedUser,
    frame_timeout: float,
    score: int,
    outcome: ChatOutcome,
) -> ChatOutcome:
    """Open the chat socket with the participant's session cookie and chat until finishing."""
    try:
        async with connect(
            ws_url,
            origin=origin,  # type: ignore[arg-type]  # websockets' Origin is a NewType of str
            additional_headers={"Cookie": cookies},
            open_timeout=frame_timeout,
            proxy=None,
        ) as socket:
            return await ChatSession(socket, simulator, user, frame_timeout, score, outcome).run()
    except StepFailed:
        raise
    except Exception as exc:  # a refused handshake, a dropped socket, a server that is gone
        raise StepFailed("chat", f"websocket: {exc!r}") from exc
