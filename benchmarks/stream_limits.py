"""Stream limits: what participants see when more of them ask at once than an endpoint may stream.

Run from the repository root (about 3 minutes on a 2-core machine):

    .venv/bin/python benchmarks/stream_limits.py
    .venv/bin/python benchmarks/stream_limits.py --levels 4:8 4:32 --tokens 40 --delay-ms 60

It needs PostgreSQL and Redis: DATABASE_URL names the server (its database is replaced by
`collabllm_bench_limits`, dropped and migrated at the start, dropped at the end) and REDIS_URL the
Redis (default redis://127.0.0.1:6379/4; only this run's endpoint keys are deleted afterwards).

Per level L:N (`ModelEndpoint.max_concurrent_streams` = L on a fresh endpoint, N fresh participants
at the chat step) every participant sends one turn at the same moment over its websocket, through
one uvicorn web process, to a fake model run in this process that counts its in-flight streams.
Recorded per level: replies completed / failed (busy) / other, the peak of concurrent upstream
streams, the wait from send to the first text, busy frames per participant, wall time, slot
utilisation and how well the order of first text follows the order the turns were accepted.
Results: benchmarks/results/stream_limits.json and .md; benchmarks/README.md explains the columns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.benchdb import database_drop, database_prepare, database_url  # noqa: E402
from benchmarks.stream.clients import connect  # noqa: E402
from benchmarks.stream.counters import background_load, machine_info  # noqa: E402
from benchmarks.stream.database import _seat, bench_env, seat_outcomes  # noqa: E402
from benchmarks.stream.processes import Children, start_web  # noqa: E402
from benchmarks.stream.stamped_model import run_loop  # noqa: E402
from benchmarks.stream.stats import pct  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BENCH_DB = "collabllm_bench_limits"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/4"
DEFAULT_LEVELS = ["4:4", "4:8", "4:16", "4:32", "32:32", "1:32"]


@dataclass(frozen=True)
class Config:
    levels: list[tuple[int, int]]  # (limit L, participants N)
    tokens: int
    delay_ms: float
    turn_timeout: float
    database_url: str
    redis_url: str
    # bench_env (benchmarks/stream/database.py) reads these two and the two URLs.
    frame_interval: float = 0.05
    db_connections: str = "shipped"


class CountingFake(FakeOpenAIServer):
    """The test fake, also counting the streams it is serving and when each ran."""

    in_flight: int = 0
    peak: int = 0
    spans: list[tuple[float, float]] = []  # replaced per level by reset()

    async def _stream(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        start = time.monotonic()
        try:
            await super()._stream(body, writer)
        finally:
            self.in_flight -= 1
            self.spans.append((start, time.monotonic()))

    def reset(self) -> None:
        """Forget the previous level (call only while nothing streams)."""
        self.peak, self.spans = self.in_flight, []


@dataclass
class Ask:
    """What one participant saw of their one turn (times: monotonic seconds)."""

    sent: float = 0.0
    ack: float | None = None
    first_text: float | None = None
    done: float | None = None
    busy_frames: int = 0
    outcome: str = "other"  # completed, busy, or what else ended it


async def ask(ws: Any, barrier: asyncio.Event, cfg: Config) -> Ask:
    """Send one turn once the barrier opens; follow it to `complete` or `failed`."""
    result = Ask()
    await barrier.wait()
    result.sent = time.monotonic()
    key = str(uuid.uuid4())
    try:
        await ws.send(json.dumps({"type": "send", "text": "limits", "key": key}))
        async with asyncio.timeout(cfg.turn_timeout):
            while result.done is None:
                _absorb(result, json.loads(await ws.recv()), time.monotonic())
    except Exception as exc:  # recorded, not raised
        result.outcome = f"{type(exc).__name__}: {exc}"[:120]
    return result


def _absorb(result: Ask, frame: dict[str, Any], now: float) -> None:
    kind = frame.get("type")
    if kind == "ack":
        result.ack = now
    elif kind == "busy":  # one participant, one turn: every busy frame on the socket is ours
        result.busy_frames += 1
    elif kind == "delta" and frame.get("delta") and result.first_text is None:
        result.first_text = now
    elif kind == "complete":
        result.done, result.outcome = now, "completed"
        if result.first_text is None:  # the whole reply came in one frame
            result.first_text = now
    elif kind in ("failed", "error"):
        result.done, result.outcome = now, str(frame.get("error") or frame.get("code"))


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Rank agreement of two orders (1: same order, 0: unrelated); ties count as neither."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True)]
    agree = disagree = 0
    for i, (xi, yi) in enumerate(pairs):
        for xj, yj in pairs[i + 1 :]:
            sign = (xi - xj) * (yi - yj)
            agree, disagree = agree + (sign > 0), disagree + (sign < 0)
    total = agree + disagree
    return round((agree - disagree) / total, 2) if total else None


def summarise(limit: int, asks: list[Ask], fake: CountingFake, outcomes: dict[str, int]) -> dict:
    """One level's numbers."""
    start = min(a.sent for a in asks)
    waits = [a.first_text - a.sent for a in asks if a.first_text is not None]
    busy = [a.busy_frames for a in asks]
    served = [a for a in asks if a.first_text is not None and a.ack is not None]
    spans = sorted(fake.spans)
    stream_s = [end - begin for begin, end in spans]
    end = max((a.done or a.sent) for a in asks)
    makespan = end - start
    ideal = math.ceil(len(asks) / limit) * (pct(stream_s, 50) or 0.0)
    counts: dict[str, int] = {}
    for a in asks:
        counts[a.outcome] = counts.get(a.outcome, 0) + 1
    return {
        "limit": limit,
        "participants": len(asks),
        "completed": counts.pop("completed", 0),
        "failed_busy": counts.pop("busy", 0),
        "other": counts,
        "db_assistant_messages": outcomes,
        "peak_upstream_streams": fake.peak,
        "upstream_streams": len(spans),
        "stream_s_p50": pct(stream_s, 50),
        "queue_wait_s": {q: _r(pct(waits, p)) for q, p in (("p50", 50), ("p95", 95), ("max", 100))},
        "busy_frames": {
            "total": sum(busy),
            "participants_with_any": sum(b > 0 for b in busy),
            "max_per_participant": max(busy, default=0),
        },
        "wall_s": round(makespan, 2),
        "ideal_fifo_s": round(ideal, 2),
        "slot_utilisation": round(sum(stream_s) / (limit * makespan), 2) if makespan else None,
        "order_tau": kendall_tau([a.ack for a in served], [a.first_text for a in served]),  # type: ignore[misc]
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# --- setup -----------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"stream_limits {time.strftime('%H:%M:%S')} | {message}", file=sys.stderr, flush=True)


def fresh_database(cfg: Config, env: dict[str, str]) -> None:
    """Drop and recreate the benchmark database, then migrate it."""
    database_prepare(cfg.database_url, env, fresh=True)


def drop_database(cfg: Config) -> None:
    database_drop(cfg.database_url)


def seed(cfg: Config, fake_url: str, run: str) -> dict[str, list[Any]]:
    """Per level (and a warm-up) an endpoint with limit L and a study of N chatting participants."""
    import django

    django.setup()
    from django.db import connections

    from tests.factories import ConditionFactory, ModelEndpointFactory, StudyFactory, TaskFactory

    params = {"max_tokens": cfg.tokens, "fake_delay_ms": cfg.delay_ms}
    seats: dict[str, list[Any]] = {}
    for limit, n in [(64, 2), *cfg.levels]:
        name = f"{run}-L{limit}-N{n}" if len(seats) else f"{run}-warmup"
        endpoint = ModelEndpointFactory(
            name=name, base_url=fake_url, read_timeout=60.0, max_concurrent_streams=limit
        )
        study = StudyFactory(slug=name, min_turns=1000, rating_every=0, max_turns=None)
        ConditionFactory(study=study, key="bench", endpoint=endpoint, generation_params=params)
        task: Any = TaskFactory(study=study)
        seats[name] = [_seat(study, task.pk, f"p{i}") for i in range(n)]
    connections.close_all()
    return seats


async def run_level(seats: list[Any], base: str, fake: CountingFake, cfg: Config) -> list[Ask]:
    """Connect every seat, then let every participant send one turn at once."""
    sem = asyncio.Semaphore(25)
    sockets = await asyncio.gather(*(connect(base, s, sem) for s in seats))
    fake.reset()
    barrier = asyncio.Event()
    try:
        pending = [asyncio.create_task(ask(ws, barrier, cfg)) for ws in sockets]
        await asyncio.sleep(0.2)  # every task is parked at the barrier
        barrier.set()
        return await asyncio.gather(*pending)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def run_all(cfg: Config, seats: dict[str, list[Any]], base: str, fake: CountingFake) -> list:
    names = list(seats)
    say("warm-up: 2 participants, one turn each (not reported)")
    await run_level(seats[names[0]], base, fake, cfg)
    results = []
    for (limit, n), name in zip(cfg.levels, names[1:], strict=True):
        say(f"L={limit}, N={n}")
        asks = await run_level(seats[name], base, fake, cfg)
        outcomes = await asyncio.to_thread(seat_outcomes, seats[name])
        level = summarise(limit, asks, fake, outcomes)
        results.append(level)
        say(" | ".join(_cells(level)))
        await asyncio.sleep(1.0)  # the web process settles its disconnects
    return results


def forget_keys(cfg: Config, run: str) -> None:
    """Delete this run's stream-slot keys (the endpoints are named after the run)."""
    import redis

    client = redis.Redis.from_url(cfg.redis_url)
    for key in client.scan_iter(match=f"collabllm:streams:{{{run}-*"):
        client.delete(key)
    client.close()


# --- report ----------------------------------------------------------------------------------

COLUMNS = ("L | N | completed | failed (busy) | other | peak upstream streams | queue wait s p50 / "
           "p95 / max | busy frames (total / participants / max) | wall s (ideal FIFO) | "
           "slot utilisation | order τ")  # fmt: skip


def _cells(level: dict[str, Any]) -> list[str]:
    w, b = level["queue_wait_s"], level["busy_frames"]
    other = ", ".join(f"{k}: {v}" for k, v in level["other"].items()) or "0"
    return [
        str(level["limit"]), str(level["participants"]), str(level["completed"]),
        str(level["failed_busy"]), other, str(level["peak_upstream_streams"]),
        f"{w['p50']} / {w['p95']} / {w['max']}",
        f"{b['total']} / {b['participants_with_any']} / {b['max_per_participant']}",
        f"{level['wall_s']} ({level['ideal_fifo_s']})", str(level["slot_utilisation"]),
        str(level["order_tau"]),
    ]  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    m, c = report["machine"], report["config"]
    lines = [
        f"# stream_limits — {report['generated']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, PostgreSQL "
        f"{m['postgres']}, Redis {m['redis']}; other work before the run: "
        f"{m['background_cpus_before']} CPUs. One uvicorn web process; the fake model and the "
        "clients share this process.",
        "",
        f"Each participant sends one turn at the same moment; replies are {c['tokens']} tokens, "
        f"one every {c['delay_ms']:g} ms. BUSY_DEADLINE {c['busy_deadline_s']:g} s, backoff "
        f"{c['busy_backoff_s'][0]:g} s doubling to {c['busy_backoff_s'][1]:g} s.",
        "",
        "| " + COLUMNS + " |",
        "|" + "---|" * len(COLUMNS.split(" | ")),
        *("| " + " | ".join(_cells(level)) + " |" for level in report["results"]),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", nargs="+", default=DEFAULT_LEVELS, help="L:N pairs")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply")
    parser.add_argument("--delay-ms", type=float, default=60.0, help="gap between tokens")
    parser.add_argument("--turn-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    url = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/"
    return Config(
        levels=[(int(a), int(b)) for a, b in (lv.split(":") for lv in args.levels)],
        tokens=args.tokens,
        delay_ms=args.delay_ms,
        turn_timeout=args.turn_timeout,
        database_url=database_url(url, BENCH_DB),
        redis_url=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    load = background_load()
    env = bench_env(cfg)  # type: ignore[arg-type]  # reads the URLs and two settings
    os.environ.update(env)
    run = "limits-" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    children = Children(Path(tempfile.mkdtemp(prefix="stream_limits-")))
    fake = CountingFake(tokens=cfg.tokens, token_delay=cfg.delay_ms / 1000, first_token_delay=0.0)
    fake.reset()
    fake_url, stop_fake = fake.run_in_thread()
    try:
        say(f"database {BENCH_DB}: drop, create, migrate")
        fresh_database(cfg, env)
        seats = seed(cfg, fake_url, run)
        base, _ = start_web(children, env)
        say(f"fake model {fake_url}, web http://{base}")
        results = run_loop(run_all(cfg, seats, base, fake))
        machine = machine_info(cfg) | {"background_cpus_before": load}
    except Exception:
        traceback.print_exc()
        say(f"failed; logs in {children.logs}")
        return 1
    finally:
        children.stop_all()
        stop_fake()
        forget_keys(cfg, run)
        drop_database(cfg)
    from studies.services.generation import BUSY_BACKOFF, BUSY_DEADLINE

    config = {"tokens": cfg.tokens, "delay_ms": cfg.delay_ms, "levels": cfg.levels,
              "busy_deadline_s": BUSY_DEADLINE, "busy_backoff_s": BUSY_BACKOFF}  # fmt: skip
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    report = {"generated": generated, "machine": machine, "config": config, "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stream_limits.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "stream_limits.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
