"""Fault injection against the real platform: processes, participants, faults, audit, report.

`fault_run(FaultConfig(...))` starts its own PostgreSQL, Redis, fake model and web processes
(`services`), takes simulated participants to the chat with the pilot driver, lets them chat
(`participant`) while faults are injected one after another, then audits what they saw against
the database (`audit`). Used by tests/faults/test_fault_injection.py (short) and
benchmarks/fault_injection.py (long).

Faults, in shuffled rounds so that every kind comes up (weights say how often per round):
web_kill (kill -9 one web process, start it again on its port), redis_restart (kill -9 Redis, start
an empty one on its port), pg_restart (pg_ctl stop -m fast or immediate, then start), socket_drop
(cut one participant's socket), model_stall / model_drop / model_500 / model_malformed (the next
streamed request misbehaves: stall after one token, connection dropped after one token, HTTP 500,
invalid JSON after one token), dup_send / dup_retry / dup_rating (a participant sends that frame
twice). A fault counts once it happened: a model fault when a request met it, a duplicate when sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg

from tests.faults.audit import Audit, audit_run, expected_text
from tests.faults.participant import SimParticipant, enter
from tests.faults.services import ROOT, FaultyModel, Postgres, Redis, WebSlot

WEIGHTS = {
    "web_kill": 2,
    "redis_restart": 2,
    "pg_restart": 2,
    "socket_drop": 3,
    "model_stall": 1,
    "model_drop": 1,
    "model_500": 1,
    "model_malformed": 1,
    "dup_send": 2,
    "dup_retry": 1,
    "dup_rating": 1,
}
DATABASE = "collabllm_faults"


@dataclass
class FaultConfig:
    faults: int = 30
    participants: int = 3
    web_processes: int = 2
    tokens: int = 40
    token_delay_ms: float = 40.0  # a healthy reply streams for about 1.6 s
    slow_every: int = 5  # every 5th healthy reply streams slower than the stale window
    slow_delay_ms: float = 250.0
    interval: float = 1.0  # seconds between faults
    stale_seconds: float = 8.0  # CHAT_STALE_STREAM_SECONDS of the web processes
    checkpoint_interval: float = 1.0
    read_timeout: float = 3.0  # the endpoint's: a stalled stream fails after this
    rating_every: int = 3
    seed: int = 0
    max_seconds: float = 900.0  # the chaos phase ends here even short of `faults`
    settle_seconds: float = 90.0
    keep_dir: bool = False
    weights: dict[str, int] = field(default_factory=lambda: dict(WEIGHTS))


class Platform:
    """PostgreSQL, Redis, the fake model and the web slots, with the study seeded."""

    def __init__(self, config: FaultConfig, root: Path) -> None:
        self.config, self.root = config, root
        self.pg = Postgres(root / "pg")
        self.redis = Redis(root / "redis")
        self.model = FaultyModel(
            tokens=config.tokens,
            token_delay=config.token_delay_ms / 1000,
            first_token_delay=0.0,
            slow_every=config.slow_every,
            slow_delay_ms=config.slow_delay_ms,
        )
        self.webs: list[WebSlot] = []
        self.plan: dict = {}
        self._stop_model: Callable[[], None] | None = None

    @property
    def database_url(self) -> str:
        return self.pg.url(DATABASE)

    def start(self) -> None:
        c = self.config
        self.pg.init()
        self.pg.start()
        self.pg.create_database(DATABASE)
        self.redis.start()
        model_url, self._stop_model = self.model.run_in_thread()
        ports = [WebSlot(i, self.root, {}).port for i in range(c.web_processes)]
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
        env.update({
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "DJANGO_SECRET_KEY": "fault-injection-only-secret-key-0123456789-abcdefghijkl",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECURE_COOKIES": "false",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_HSTS_SECONDS": "0",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "WHITENOISE_USE_FINDERS": "true",
            "SITE_URL": f"http://127.0.0.1:{ports[0]}",
            # The database connection settings production ships (docker/production.env.example).
            "DATABASE_POOL": "true",
            "DATABASE_POOL_MAX_SIZE": "10",
            "DATABASE_CONN_MAX_AGE": "0",
            "DATABASE_CONN_HEALTH_CHECKS": "true",
            "CHAT_TURNS_PER_MINUTE": "1000",
            "CHAT_CHECKPOINT_INTERVAL": str(c.checkpoint_interval),
            "CHAT_STALE_STREAM_SECONDS": str(c.stale_seconds),
            "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        self._child([sys.executable, "manage.py", "migrate", "-v0"], env)
        seed = [sys.executable, "-m", "tests.faults.seed", "--model-url", model_url,
                "--tokens", str(c.tokens), "--read-timeout", str(c.read_timeout),
                "--rating-every", str(c.rating_every)]  # fmt: skip
        self.plan = json.loads(self._child(seed, env).splitlines()[-1])
        self.webs = [WebSlot(i, self.root, env, port) for i, port in enumerate(ports)]
        for web in self.webs:
            web.start()

    def _child(self, command: list[str], env: dict[str, str]) -> str:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{command[1:3]} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def stop(self) -> None:
        for web in self.webs:
            web.stop()
        if self._stop_model is not None:
            self._stop_model()
        self.redis.kill()
        if (self.pg.data / "postmaster.pid").exists():
            self.pg.stop("immediate")

    def log_errors(self) -> int:
        """Tracebacks in the web processes' logs (for the report; each is a lead, not a loss)."""
        return sum(w.log.read_text(errors="replace").count("Traceback") for w in self.webs)


class Injector:
    """Injects faults one at a time and counts the ones that happened."""

    def __init__(self, platform: Platform, people: list[SimParticipant], rng: random.Random):
        self.platform, self.people, self.rng = platform, people, rng
        self.counts: Counter[str] = Counter()
        self.kills: list[tuple[int, float]] = []
        self.skipped: Counter[str] = Counter()
        self.wanted: Counter[str] = Counter()
        self.timeline: list[tuple[float, str, str]] = []  # (seconds into the run, kind, detail)
        self.t0, self.t0_epoch = time.monotonic(), time.time()
        for person in people:
            person.wanted = self.wanted  # shared: whoever sends that frame next duplicates it

    def total(self) -> Counter[str]:
        counts = Counter(self.counts)
        counts.update(self.platform.model.applied)
        for p in self.people:
            counts.update(p.faults)
        return counts

    def _rounds(self, weights: dict[str, int]):
        while True:
            kinds = [k for k, n in weights.items() for _ in range(n)]
            self.rng.shuffle(kinds)
            yield from kinds

    async def run(self, target: int, interval: float, until: float) -> None:
        schedule = self._rounds(self.platform.config.weights)
        kind, tries = None, 0
        while sum(self.total().values()) < target and time.monotonic() < until:
            kind = kind or next(schedule)
            if await self.inject(kind):
                kind, tries = None, 0
            else:  # not possible right now (e.g. the model's last fault is still queued)
                self.skipped[kind] += 1
                tries += 1
                if tries >= 10:
                    kind, tries = None, 0
            await asyncio.sleep(interval)

    async def _mid_stream(self) -> None:
        """Wait (a little) until some reply is streaming, then a random part of a reply more."""
        for _ in range(100):  # at most 5 s
            if any(x.following for x in self.people):
                break
            await asyncio.sleep(0.05)
        reply_seconds = self.platform.config.tokens * self.platform.config.token_delay_ms / 1000
        await asyncio.sleep(self.rng.uniform(0, reply_seconds))

    async def _near_end(self) -> None:
        """Wait (a little) until some reply on screen is most of the way through."""
        whole = len(expected_text(self.platform.config.tokens))
        for _ in range(200):  # at most 10 s
            for x in self.people:
                reply = x.replies.get(x.following or -1)
                if reply is not None and len(reply.shown) >= 0.7 * whole:
                    return
            await asyncio.sleep(0.05)

    async def _slow_stream(self) -> None:
        """Wait (a little) until one of the slow replies streams, then a random while more."""
        for _ in range(200):  # at most 10 s
            if self.platform.model.slow_streaming:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(self.rng.uniform(0, 2.0))

    async def inject(self, kind: str) -> bool:
        """Inject one fault of `kind`; False when it cannot happen right now.

        Blips are aimed where they hurt: a PostgreSQL restart at the end of a reply (its final
        write), a Redis restart while a reply longer than the stale window streams (its relay and
        checkpoints), a web kill or socket drop anywhere in a reply.
        """
        p = self.platform
        if kind in ("web_kill", "socket_drop"):
            await self._mid_stream()
        elif kind == "pg_restart":
            await self._near_end()
        elif kind == "redis_restart":
            await self._slow_stream()
        if kind == "web_kill":
            web = self.rng.choice(p.webs)
            self._note(kind, f"web {web.index}")
            self.kills.append((web.index, time.monotonic()))
            web.kill()
            self.counts[kind] += 1
            await asyncio.to_thread(web.start)
        elif kind == "redis_restart":
            down = self.rng.uniform(0.2, 2.0)
            self._note(kind, f"down {down:.1f} s")
            await asyncio.to_thread(p.redis.restart, down)
            self.counts[kind] += 1
        elif kind == "pg_restart":
            mode, down = self.rng.choice(("fast", "immediate")), self.rng.uniform(0.5, 2.5)
            self._note(kind, f"-m {mode}, down {down:.1f} s")
            await asyncio.to_thread(p.pg.restart, mode, down)
            self.counts[kind] += 1
        elif kind == "socket_drop":
            live = [x for x in self.people if x.socket is not None]
            streaming = [x for x in live if x.following is not None]
            victim = self.rng.choice(streaming or live) if live else None
            if victim is None or not victim.drop():
                return False
            self._note(kind, f"participant {victim.index}")
            self.counts[kind] += 1
        elif kind.startswith("model_"):
            if p.model.faults:
                return False
            p.model.faults.append(kind.removeprefix("model_"))
            self._note(kind, "queued for the next streamed request")
        else:  # a duplicate frame, sent by the next participant that sends that frame
            if self.wanted[kind]:
                return False
            self.wanted[kind] += 1
            self._note(kind, "asked of the next participant sending that frame")
        return True

    def _note(self, kind: str, detail: str) -> None:
        self.timeline.append((round(time.monotonic() - self.t0, 2), kind, detail))


async def _settle(database_url: str, seconds: float) -> int:
    """Wait until no reply is streaming (a held reply may still be written); return those left."""
    deadline = time.monotonic() + seconds
    while True:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM studies_message WHERE status = 'streaming'"
            ).fetchone()
        left = row[0] if row else 0
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(1.0)


async def fault_run(config: FaultConfig) -> dict:
    """Run the whole thing; return the report (see `report_table`)."""
    root = Path(tempfile.mkdtemp(prefix="faults-"))
    os.chmod(root, 0o755)  # PostgreSQL runs as another user when we are root
    platform = Platform(config, root)
    started = time.monotonic()
    try:
        await asyncio.to_thread(platform.start)
        setup_seconds = time.monotonic() - started
        rng = random.Random(config.seed)
        base = platform.webs[0].base_url
        cookies = await asyncio.gather(
            *(
                enter(platform.webs[i % len(platform.webs)].base_url, platform.plan, i, config.seed)
                for i in range(config.participants)
            )
        )
        ws_urls = [
            f"ws://127.0.0.1:{w.port}/ws/s/{platform.plan['slug']}/chat/" for w in platform.webs
        ]
        people = [
            SimParticipant(i, ws_urls, base, c, config.stale_seconds, random.Random(f"p{i}"))
            for i, c in enumerate(cookies)
        ]
        stop = asyncio.Event()
        chaos_start = time.monotonic()
        until = chaos_start + config.max_seconds
        chatting = [asyncio.create_task(p.run(stop, until + config.settle_seconds)) for p in people]
        await asyncio.sleep(2.0)  # everyone is mid-conversation before the first fault
        injector = Injector(platform, people, rng)
        await injector.run(config.faults, config.interval, until)
        chaos_seconds = time.monotonic() - chaos_start
        stop.set()
        await asyncio.gather(*chatting)
        left_streaming = await _settle(platform.database_url, config.stale_seconds + 10)
        audit = audit_run(
            platform.database_url,
            people,
            tokens=config.tokens,
            kills=injector.kills,
            requests=platform.model.requests,
            t0=injector.t0_epoch,
        )
        return _report(config, injector, people, audit, platform, left_streaming, {
            "setup": setup_seconds, "chaos": chaos_seconds,
            "total": time.monotonic() - started,
        })  # fmt: skip
    finally:
        await asyncio.to_thread(platform.stop)
        if not config.keep_dir:
            shutil.rmtree(root, ignore_errors=True)


def _report(config, injector, people, audit: Audit, platform, left_streaming, seconds) -> dict:
    faults = injector.total()
    return {
        "config": {k: v for k, v in asdict(config).items() if k != "keep_dir"},
        "faults": dict(sorted(faults.items())),
        "total_faults": sum(faults.values()),
        "skipped_faults": dict(injector.skipped),
        "audit": {k: v for k, v in asdict(audit).items() if k not in ("findings", "t0")},
        "findings": audit.findings,
        "streaming_rows_left": left_streaming,
        "timeline": injector.timeline,
        "participants": [
            {
                "index": p.index,
                "turns_acked": sum(s.acked for s in p.sent.values()),
                "refused": dict(Counter(s.refused for s in p.sent.values() if s.refused)),
                "reconnects": p.reconnects,
                "ratings": p.ratings,
                "server_errors": dict(p.errors),
                "gave_up": p.gave_up,
            }
            for p in people
        ],
        "web_starts": sum(w.starts for w in platform.webs),
        "web_log_tracebacks": platform.log_errors(),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def report_table(report: dict) -> str:
    """The report as a few aligned lines for a terminal or a markdown code block."""
    a = report["audit"]
    lines = [f"{'fault':<18}{'injected':>9}"]
    lines += [f"{kind:<18}{n:>9}" for kind, n in report["faults"].items()]
    lines += [f"{'total':<18}{report['total_faults']:>9}", ""]
    rows = [
        ("turns (acked)", a["turns"]),
        ("complete", a["complete"]),
        ("reply rows", a["replies"]),
        ("visibly failed", a["visibly_failed"]),
        ("  crash window", a["crash_window"]),
        ("silently lost", a["silently_lost"]),
        ("truncated", a["truncated"]),
        ("duplicated", a["duplicated"]),
    ]
    lines += [f"{name:<18}{n:>9}" for name, n in rows]
    s = report["seconds"]
    lines.append(f"\nseconds: setup {s['setup']}, chaos {s['chaos']}, total {s['total']}")
    lines += report["findings"][:50]
    return "\n".join(lines)
