"""The benchmark's settings (`Config`), its defaults and its progress log (`say`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
BENCH_DB = "collabllm_bench"  # the default database (--database)
DEFAULT_SERVER_URL = "postgres://postgres@127.0.0.1:5432"
# Redis db 9, not 0: group names (chat.<participant id>) must not meet another database's ids.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
MS = 1e6  # nanoseconds per millisecond


@dataclass(frozen=True)
class Config:
    clients: list[int]
    turns: int
    tokens: int
    delays: list[float]  # ms between tokens; one run of every N per value
    warmup: int
    ramp_s: float | None  # None: one reply's duration (tokens x gap)
    think_ms: float
    turn_timeout: float
    phase_timeout: float
    frame_interval: float
    database_url: str
    redis_url: str
    write: bool
    db_connections: str = "shipped"  # see DB_CONNECTIONS
    web_processes: int = 1  # the clients are spread over this many web processes


_STARTED = time.monotonic()


def say(message: str) -> None:
    elapsed = time.monotonic() - _STARTED
    print(f"stream_overhead {elapsed:5.0f}s | {message}", file=sys.stderr, flush=True)
