"""Constant-cost limits for chat socket frames: one token bucket per frame type, per socket.

Each bucket is two floats updated in O(1) per frame, so a flood costs the same per frame however
long it lasts (a list of recent timestamps grows with the flood and makes every check slower).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """A sustained rate and the burst allowed on top of it."""

    per_second: float
    burst: int


# What chat.js sends, and so what a real page never exceeds: a message per submitted draft (plus
# one resend after a reconnect), a retry, continue or rating per click, presence on connect, on
# every visibility change and every heartbeat (15 s), paste per paste event, and sync after each
# complete/failed/rated frame, after a refused continue, at the time limit, and at most every 2 s
# while a stream is quiet.
# The turn limit itself (CHAT_TURNS_PER_MINUTE, turns.turn_start) still applies to stored turns.
FRAME_RATES: dict[str, Rate] = {
    "send": Rate(0.5, 10),
    "retry": Rate(0.2, 5),
    "continue": Rate(0.2, 5),
    "rating": Rate(0.5, 5),
    "presence": Rate(0.5, 20),
    "paste": Rate(0.5, 20),
    "sync": Rate(1.0, 10),
    "invalid": Rate(0.2, 10),  # unreadable, oversized or unknown frames
}
# Frames refused beyond this are sustained abuse: the socket is closed (CLOSE_CODE).
ABUSE_RATE = Rate(2.0, 200)
CLOSE_CODE = 4429


class Verdict(enum.Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # drop the frame and say so (once per run of refusals)
    DROP = "drop"  # drop silently: the page was already told
    CLOSE = "close"  # sustained abuse: close the socket


class TokenBucket:
    """Up to burst tokens, refilled continuously at rate.per_second."""

    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate.burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(float(self.rate.burst), self.tokens + elapsed * self.rate.per_second)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def now() -> float:
    """The limiter's clock (a module function so that tests can stop it)."""
    return time.monotonic()


class FrameLimiter:
    """Per-socket buckets for every frame type, and one for refusals (sustained abuse)."""

    __slots__ = ("_abuse", "_buckets", "_clock", "_told")

    def __init__(
        self,
        rates: dict[str, Rate] | None = None,
        abuse: Rate = ABUSE_RATE,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._clock = clock or now
        start = self._clock()
        self._buckets = {kind: TokenBucket(r, start) for kind, r in (rates or FRAME_RATES).items()}
        self._abuse = TokenBucket(abuse, start)
        self._told: set[str] = set()  # at most one entry per frame type

    def check(self, kind: str) -> Verdict:
        """Whether a frame of this type may be handled now (unknown types count as invalid)."""
        kind = kind if kind in self._buckets else "invalid"
        at = self._clock()
        if self._buckets[kind].take(at):
            self._told.discard(kind)
            return Verdict.ALLOW
        if not self._abuse.take(at):
            return Verdict.CLOSE
        if kind in self._told:
            return Verdict.DROP
        self._told.add(kind)
        return Verdict.REFUSE
