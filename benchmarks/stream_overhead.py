"""Stream overhead: the latency the platform adds to each streamed token, and what it costs.

Run from the repository root (about 4 minutes on a 2-core machine; `make bench` runs it too):

    .venv/bin/python benchmarks/stream_overhead.py
    .venv/bin/python benchmarks/stream_overhead.py --clients 50 --turns 3 --tokens 64 --delay-ms 25

It needs PostgreSQL and Redis: DATABASE_URL and REDIS_URL name the servers (defaults: the machine's
postgres://postgres@127.0.0.1:5432 and redis://127.0.0.1:6379/9). It always uses its own database,
`collabllm_bench` on that server (created if missing, then migrated), so the commit counters see
nothing but the benchmark.

What it does: starts a fake model whose every token is the text `<t:{time.time_ns()}> ` (its
emission time), one web process (uvicorn, as in production) and, per token gap (--delay-ms) and N
(--clients), N participants already at the chat step. Platform path: N websocket clients each send
--turns turns and time every token seen in a `delta` frame (or only in the final `complete` frame)
against its emission time. Direct path: N clients stream the same fake with httpx. The difference
is what the platform adds. Results: benchmarks/results/stream_overhead-<date>.json (raw) and
benchmarks/results/stream_overhead.md (tables); benchmarks/README.md explains every column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes.openai_server import (  # noqa: E402
    FakeOpenAIServer,
    _event,
    _head,
    _Reply,
    _usage,
)

RESULTS = ROOT / "benchmarks" / "results"
BENCH_DB = "collabllm_bench"
DEFAULT_DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"
# Redis db 9, not 0: group names (chat.<participant id>) must not meet another database's ids.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
STAMP = re.compile(r"<t:(\d+)>")
STAMP_BYTES = re.compile(rb"<t:(\d+)>")
MS = 1e6  # nanoseconds per millisecond

# Targets (DESIGN.md budget for the relay); compared against the newest-token-per-frame latency.
TARGET_ADDED_P99_MS = {50: 5.0, 200: 20.0}
TARGET_ADDED_TTFT_P50_MS = 10.0
TARGET_WRITE_COMMITS_PER_TURN = 4.0
# The direct path counts as a sound baseline only while it keeps up (see baseline_ok).
BASELINE_MAX_P99_MS = 10.0
BASELINE_MAX_LAG_MS = 25.0


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


# --- the stamped fake model ------------------------------------------------------------------


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
        _run(forever())


def _run(main: Awaitable[Any]) -> Any:
    """asyncio.run on uvloop when it is installed (it is: uvicorn[standard] brings it)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


# --- processes -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the benchmark dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Children:
    """Subprocesses in their own process groups, stopped (group-wide) on exit."""

    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def tail(self, name: str, lines: int = 20) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Poll until something listens on 127.0.0.1:port; fail early when proc exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:g}s")


# --- environment and database ----------------------------------------------------------------


def bench_database_url(url: str | None) -> str:
    """The server of url (or the default one), with the benchmark's own database name."""
    if not url:
        return DEFAULT_DATABASE_URL
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def maintenance_url(database_url: str) -> str:
    """A libpq URL for the `postgres` database on the same server (postgres:// scheme)."""
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))


# How the web process holds its database connections: "shipped" takes the DATABASE_* values of
# docker/production.env.example (a health-checked pool); "per-use" is the value shipped before
# (CONN_MAX_AGE 0, a new connection for every use), "persistent" what this benchmark used before.
DB_CONNECTIONS = {
    "per-use": {"DATABASE_POOL": "false", "DATABASE_CONN_MAX_AGE": "0"},
    "persistent": {"DATABASE_POOL": "false", "DATABASE_CONN_MAX_AGE": "60"},
}


def database_env(mode: str) -> dict[str, str]:
    """The DATABASE_* connection variables (not the URL) for one connection mode."""
    if mode != "shipped":
        return DB_CONNECTIONS[mode]
    shipped = {}
    for line in (ROOT / "docker" / "production.env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("DATABASE_") and name != "DATABASE_URL":
            shipped[name.strip()] = value.strip()
    return shipped


def bench_env(cfg: Config) -> dict[str, str]:
    """The environment of the web process, manage.py and this process's Django."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="bench-" + "x" * 50,
        DJANGO_SECURE_COOKIES="false",
        DJANGO_SECURE_SSL_REDIRECT="false",
        DJANGO_HSTS_SECONDS="0",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=cfg.database_url,
        **database_env(cfg.db_connections),
        REDIS_URL=cfg.redis_url,
        CHAT_TURNS_PER_MINUTE="1000",
        CHAT_FRAME_INTERVAL=str(cfg.frame_interval),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.pop("DJANGO_SECRET_KEY_FILE", None)
    return env


def prepare_database(cfg: Config, env: dict[str, str]) -> None:
    """Create the benchmark database if it is missing, then migrate it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(maintenance_url(cfg.database_url), autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if not found:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    with psycopg.connect(bench_url(cfg), autocommit=True) as db, contextlib.suppress(psycopg.Error):
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")  # counts the write commits
    command = [sys.executable, "manage.py", "migrate", "--noinput"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


@dataclass(frozen=True)
class Seat:
    """One participant at the chat step, and the session cookie that is their credential."""

    slug: str
    participant_id: int
    cookie: str


Groups = dict[float, dict[str, int]]  # token gap (ms) -> group name -> participants
Seats = dict[tuple[float, str], list[Seat]]


def seed(cfg: Config, fake_url: str, groups: Groups) -> Seats:
    """Per token gap, a live study on the fake model; per group, that many participants chatting.

    The gap travels to the fake in the condition's generation params (`fake_delay_ms`).
    """
    os.environ.update(bench_env(cfg))
    import django

    django.setup()
    from django.db import connections

    from tests.factories import ConditionFactory, ModelEndpointFactory, StudyFactory, TaskFactory

    run = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    endpoint = ModelEndpointFactory(
        name=f"bench-{run}", base_url=fake_url, served_model="fake", read_timeout=60.0
    )
    seats: Seats = {}
    for gap, named in groups.items():
        slug = f"bench-{run}-{gap:g}ms".replace(".", "-")
        study = StudyFactory(slug=slug, min_turns=1000, rating_every=0, max_turns=None)
        params = {"max_tokens": cfg.tokens, "fake_delay_ms": gap}
        ConditionFactory(study=study, key="bench", endpoint=endpoint, generation_params=params)
        task: Any = TaskFactory(study=study)  # factories return model instances
        for name, count in named.items():
            seats[gap, name] = [_seat(study, task.pk, f"{name}-{i}") for i in range(count)]
    connections.close_all()
    return seats


def _seat(study: Any, task_id: int, label: str) -> Seat:
    from django.conf import settings
    from django.contrib.sessions.backends.db import SessionStore

    from studies.services import participants as svc
    from tests.factories import ParticipantFactory

    participant: Any = ParticipantFactory(study=study, external_id=f"bench:{study.slug}:{label}")
    svc.participant_consent(participant_id=participant.pk)
    svc.participant_choose_topic(participant_id=participant.pk, task_id=task_id)
    svc.participant_submit_intent(participant_id=participant.pk, answers=["bench", "bench"])
    session = SessionStore()
    session[f"participant:{study.slug}"] = participant.pk
    session.create()
    cookie = f"{settings.SESSION_COOKIE_NAME}={session.session_key}"
    return Seat(study.slug, participant.pk, cookie)


def seat_outcomes(seats: list[Seat]) -> dict[str, int]:
    """Assistant messages of these participants by status (the database's account of the turns)."""
    from django.db import connections
    from django.db.models import Count

    from studies.models import Message

    rows = (
        Message.objects.filter(participant_id__in=[s.participant_id for s in seats])
        .filter(role=Message.Role.ASSISTANT)
        .values("status")
        .annotate(n=Count("id"))
    )
    outcome = {row["status"]: row["n"] for row in rows}
    connections.close_all()
    return outcome


# --- counters: CPU from /proc, commits from pg_stat_* ----------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0.0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = stat.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def comm_cpu(names: Iterable[str]) -> dict[int, float]:
    """CPU seconds of every process whose command name is in names (e.g. all postgres), by pid."""
    wanted, found = set(names), {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in wanted:
                    found[int(entry.name)] = proc_cpu(int(entry.name))
    return found


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


GROUPS = {"postgres": ["postgres"], "redis": ["redis-server"]}


@dataclass
class CpuSample:
    at: float
    cpu: dict[str, float]
    groups: dict[str, dict[int, float]]
    machine: tuple[int, int]


def cpu_sample(pids: dict[str, int]) -> CpuSample:
    cpu = {name: proc_cpu(pid) for name, pid in pids.items()}
    times = os.times()
    cpu["clients"] = times.user + times.system
    groups = {name: comm_cpu(comms) for name, comms in GROUPS.items()}
    return CpuSample(time.monotonic(), cpu, groups, machine_jiffies())


def cpu_delta(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU seconds per process over the window, the rest of the machine's, and wall seconds.

    `postgres` counts every postgres process (other databases' too; a backend that exited in
    the window is missed); `other_cpu_s` is whatever else ran on the machine meanwhile (e.g.
    someone's test suite): this benchmark shares the CPUs with everything else.
    """
    out = {f"{k}_cpu_s": round(after.cpu[k] - before.cpu[k], 3) for k in before.cpu}
    for name, now in after.groups.items():
        then = before.groups[name]
        out[f"{name}_cpu_s"] = round(
            sum(max(0.0, v - then.get(pid, 0.0)) for pid, v in now.items()), 3
        )
    busy = (after.machine[0] - before.machine[0]) / CLOCK_TICKS
    total = max(1, after.machine[1] - before.machine[1]) / CLOCK_TICKS
    out["other_cpu_s"] = round(max(0.0, busy - sum(out.values())), 3)
    out["wall_s"] = round(after.at - before.at, 3)
    out["machine_busy_frac"] = round(busy / total, 3)
    return out


def background_load(seconds: float = 2.0) -> float:
    """CPUs' worth of work the machine does while this benchmark does nothing."""
    before = machine_jiffies()
    time.sleep(seconds)
    after = machine_jiffies()
    return round((after[0] - before[0]) / CLOCK_TICKS / seconds, 2)


def wait_until_idle(pid: int, timeout: float = 15.0) -> None:
    """Wait until a process uses under 5% of a CPU over half a second (or timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = proc_cpu(pid)
        time.sleep(0.5)
        if proc_cpu(pid) - before < 0.025:
            return


def wait_until_quiet(limit: float, timeout: float) -> float:
    """Wait (at most timeout seconds) until the background load is under limit CPUs."""
    deadline = time.monotonic() + timeout
    load = background_load()
    while load > limit and time.monotonic() < deadline:
        say(f"the machine is busy ({load:.2f} CPUs of other work); waiting for it to settle")
        time.sleep(5)
        load = background_load()
    return load


def bench_url(cfg: Config) -> str:
    """A libpq URL for the bench database."""
    return urlsplit(cfg.database_url)._replace(scheme="postgresql").geturl()


@dataclass
class DbSample:
    xact_commit: int
    wal_lsn: str
    sessions: int = 0  # connections ever opened to the bench database (PostgreSQL 14+)


def db_sample(cfg: Config) -> DbSample:
    """The bench database's commit counter (read-only transactions included) and the WAL position.

    Read through the `postgres` database, so the reading is not itself a bench commit.
    """
    import psycopg

    with psycopg.connect(maintenance_url(cfg.database_url), autocommit=True) as conn:
        query = "SELECT xact_commit, sessions FROM pg_stat_database WHERE datname = %s"
        commits, sessions = conn.execute(query, [BENCH_DB]).fetchone() or (0, 0)
        (lsn,) = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone() or ("",)
    return DbSample(int(commits), str(lsn), int(sessions))


# The WAL itself says which transactions wrote to the bench database and what they wrote: exact,
# unlike the lazily flushed pg_stat_* counters, and blind to other databases on the server.
WAL_RECORDS = """
SELECT xid::text, resource_manager, record_type,
       substring(block_ref from %(blocks)s) AS filenode
FROM pg_get_wal_records_info(%(start)s::pg_lsn, %(end)s::pg_lsn)
"""
HEAP_WRITES = ("INSERT", "UPDATE", "HOT_UPDATE", "DELETE")


@contextlib.contextmanager
def wal_retained(cfg: Config) -> Iterator[None]:
    """Keep the window's WAL on disk until it is counted (a temporary physical replication slot,
    dropped with its session); best effort: without it a checkpoint may recycle the WAL."""
    import psycopg

    try:
        conn = psycopg.connect(maintenance_url(cfg.database_url), autocommit=True)
    except psycopg.Error:
        yield
        return
    try:
        with contextlib.suppress(psycopg.Error):
            slot = f"stream_overhead_{os.getpid()}"
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", [slot])
        yield
    finally:
        conn.close()


def wal_writes(cfg: Config, start: str, end: str) -> dict[str, Any] | None:
    """Committed transactions that wrote to the bench database between two WAL positions, and
    their row writes per table (heap INSERT/UPDATE/DELETE records); None without pg_walinspect."""
    import psycopg

    try:
        with psycopg.connect(bench_url(cfg), autocommit=True) as db:
            (oid,) = db.execute(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            ).fetchone() or (0,)
            names: dict[str, str] = dict(db.execute(
                "SELECT pg_relation_filenode(oid)::text, relname FROM pg_class"
                " WHERE pg_relation_filenode(oid) IS NOT NULL"
            ).fetchall())  # fmt: skip
            args = {"start": start, "end": end, "blocks": rf"rel \d+/{oid}/(\d+)"}
            records = db.execute(WAL_RECORDS, args).fetchall()
    except psycopg.Error as exc:
        say(f"pg_walinspect unavailable ({exc}); write commits not counted")
        return None
    return _tally(records, names)


def _tally(
    records: list[tuple[str, str, str, str | None]], names: dict[str, str]
) -> dict[str, Any]:
    wrote = {xid for xid, _, _, node in records if node}
    committed = {xid for xid, rm, kind, _ in records if rm == "Transaction" and "COMMIT" in kind}
    rows: dict[str, dict[str, int]] = {}
    for _, rm, kind, node in records:
        base = kind.split("+")[0]  # UPDATE+INIT is an UPDATE that started a new page
        if rm == "Heap" and node and base in HEAP_WRITES:
            table = rows.setdefault(names.get(node, node), {})
            table[base] = table.get(base, 0) + 1
    return {"write_commits": len(wrote & committed), "rows": rows}


def settle_stats(cfg: Config, timeout: float = 20.0) -> None:
    """Wait until the bench database's commit counter stops moving.

    PostgreSQL 15 backends flush their statistics about a second after going idle; the web
    process keeps its connections (CONN_MAX_AGE), so waiting is how to see its last commits.
    """
    import psycopg

    deadline, last, still = time.monotonic() + timeout, -1, 0
    with psycopg.connect(maintenance_url(cfg.database_url), autocommit=True) as conn:
        while time.monotonic() < deadline and still < 3:
            row = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [BENCH_DB]
            ).fetchone()
            value = int(row[0]) if row else 0
            still = still + 1 if value == last else 0
            last = value
            time.sleep(0.5)


def db_delta(
    before: DbSample, after: DbSample, turns: int, wal: dict[str, Any] | None
) -> dict[str, Any]:
    """Per-turn database work over the window."""
    per = max(1, turns)
    out: dict[str, Any] = {
        "commits_per_turn": round((after.xact_commit - before.xact_commit) / per, 2),
        "connections_per_turn": round((after.sessions - before.sessions) / per, 2),
        "write_commits_per_turn": None,
        "checkpoints_per_turn": None,
        "rows": None,
    }
    if wal is not None:
        message = wal["rows"].get("studies_message", {})
        updates = message.get("UPDATE", 0) + message.get("HOT_UPDATE", 0)
        out["write_commits_per_turn"] = round(wal["write_commits"] / per, 2)
        # Each completed reply is saved by one UPDATE; any other UPDATE of a message checkpoints.
        out["checkpoints_per_turn"] = round(max(0, updates - turns) / per, 2)
        out["rows"] = wal["rows"]
    return out


# --- measurement records ---------------------------------------------------------------------


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


async def platform_client(ws: Any, cfg: Config, offset: float) -> list[Turn]:
    """One participant: wait their start offset, then send cfg.turns turns one after another."""
    await asyncio.sleep(offset)
    turns: list[Turn] = []
    for _ in range(cfg.turns):
        try:
            turn = await platform_turn(ws, cfg)
        except Exception as exc:  # recorded as a failed turn, not raised
            turn = Turn(error=_describe(exc, cfg))
        turns.append(turn)
        if not turn.ok:
            break
        await asyncio.sleep(random.uniform(0, cfg.think_ms / 1000))
    return turns


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

    turns: list[Turn] = []
    # verify=False: plain http on loopback; loading the CA bundle costs ~20 ms per client.
    async with httpx.AsyncClient(timeout=cfg.turn_timeout, verify=False) as http:
        await asyncio.sleep(offset)
        for _ in range(cfg.turns):
            try:
                turn = await direct_turn(http, url, gap, cfg)
            except Exception as exc:  # recorded as a failed turn, not raised
                turn = Turn(error=_describe(exc, cfg))
            turns.append(turn)
            if not turn.ok:
                break
            await asyncio.sleep(random.uniform(0, cfg.think_ms / 1000))
    return turns


# --- phases ----------------------------------------------------------------------------------


async def loop_lag(samples: list[float], stop: asyncio.Event, every: float = 0.01) -> None:
    """Record how late this event loop wakes up (ms): the client side's own saturation."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(every)
        samples.append((time.monotonic() - before - every) * 1000)


async def measured(
    clients: Sequence[Awaitable[list[Turn]]], pids: dict[str, int], cfg: Config
) -> tuple[list[Turn], dict[str, float], list[float]]:
    """Run the clients with a loop-lag probe; return turns, CPU over the window, lag samples."""
    lag: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(loop_lag(lag, stop))
    before = cpu_sample(pids)
    try:
        async with asyncio.timeout(cfg.phase_timeout):
            results = await asyncio.gather(*clients)
    finally:
        after = cpu_sample(pids)
        stop.set()
        await probe
    return [t for turns in results for t in turns], cpu_delta(before, after), lag


def offsets(n: int, gap: float, cfg: Config) -> list[float]:
    """Start offsets spread evenly over the ramp (default: one reply's duration), so the N
    streams run side by side in a steady state rather than in step."""
    ramp = cfg.ramp_s if cfg.ramp_s is not None else cfg.tokens * gap / 1000
    return [ramp * i / max(1, n) for i in range(n)]


async def connect_all(seats: list[Seat], base: str) -> tuple[list[Any], list[str]]:
    """Open every seat's socket (25 at a time); return the sockets and the failures."""
    sem = asyncio.Semaphore(25)
    opened = await asyncio.gather(*(connect(base, s, sem) for s in seats), return_exceptions=True)
    sockets = [ws for ws in opened if not isinstance(ws, BaseException)]
    errors = [f"connect: {type(e).__name__}: {e}" for e in opened if isinstance(e, BaseException)]
    return sockets, errors


async def platform_phase(
    seats: list[Seat], gap: float, base: str, pids: dict[str, int], cfg: Config
) -> dict[str, Any]:
    """Connect every seat, then run their turns; DB counters around the turns only."""
    sockets, connect_errors = await connect_all(seats, base)
    try:
        with wal_retained(cfg):
            await asyncio.to_thread(settle_stats, cfg)
            before = await asyncio.to_thread(db_sample, cfg)
            starts = offsets(len(sockets), gap, cfg)
            clients = [platform_client(ws, cfg, o) for ws, o in zip(sockets, starts, strict=True)]
            turns, cpu, lag = await measured(clients, pids, cfg)
            await asyncio.to_thread(settle_stats, cfg)
            after = await asyncio.to_thread(db_sample, cfg)
            wal = await asyncio.to_thread(wal_writes, cfg, before.wal_lsn, after.wal_lsn)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await asyncio.to_thread(wait_until_idle, pids["web"])  # its disconnects, before the next
    summary = summarise(len(seats), turns, cpu, lag, cfg)
    summary["errors"] = sorted(set(connect_errors))[:3] + summary["errors"]
    # Per turn = per reply the database completed, whether or not its client saw the end of it.
    outcomes = await asyncio.to_thread(seat_outcomes, seats)
    summary["db"] = db_delta(before, after, outcomes.get("complete", 0), wal)
    summary["db"]["assistant_messages"] = outcomes
    summary["web_cpu_us_per_token"] = _per_token(cpu.get("web_cpu_s"), summary["tokens"])
    return summary


async def direct_phase(
    n: int, gap: float, fake_url: str, pids: dict[str, int], cfg: Config
) -> dict[str, Any]:
    url = f"{fake_url}/chat/completions"
    clients = [direct_client(url, gap, cfg, o) for o in offsets(n, gap, cfg)]
    turns, cpu, lag = await measured(clients, pids, cfg)
    return summarise(n, turns, cpu, lag, cfg)


def _per_token(cpu_s: float | None, tokens: int) -> float | None:
    return round(cpu_s / tokens * 1e6, 1) if cpu_s is not None and tokens else None


# --- statistics ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[rank], 2)


def dist(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "max": pct(values, 100),
    }


def summarise(
    clients: int, turns: list[Turn], cpu: dict[str, float], lag: list[float], cfg: Config
) -> dict[str, Any]:
    """Distributions over the turns that completed whole; counts of those that did not."""
    ok = [t for t in turns if t.ok]
    errors = sorted({t.error for t in turns if not t.ok})
    return {
        "turns_expected": clients * cfg.turns,
        "turns_ok": len(ok),
        "turns_failed": len(turns) - len(ok),
        "errors": errors[:5],
        "tokens": sum(t.tokens for t in ok),
        "tokens_per_s": round(sum(t.tokens for t in ok) / cpu["wall_s"]) if cpu["wall_s"] else None,
        "frames_per_reply": round(sum(t.frames for t in ok) / max(1, len(ok)), 1),
        "newest_ms": dist([v for t in ok for v in t.newest_ms]),
        "every_ms": dist([v for t in ok for v in t.every_ms]),
        "last_token_ms": dist([t.last_ms for t in ok if t.last_ms is not None]),
        "ttft_ms": dist([t.ttft_ms for t in ok if t.ttft_ms is not None]),
        "first_token_ms": dist([t.first_ms for t in ok if t.first_ms is not None]),
        "ack_ms": dist([t.ack_ms for t in ok if t.ack_ms is not None]),
        "started_ms": dist([t.started_ms for t in ok if t.started_ms is not None]),
        "client_loop_lag_ms": dist(lag),
        "cpu": cpu,
    }


def baseline_ok(direct: dict[str, Any]) -> bool:
    """Whether the direct path kept up: if the fake and its readers are themselves saturated,
    the baseline is inflated and `added` (platform minus direct) understates the overhead."""
    every_p99 = direct["every_ms"]["p99"]
    lag_p99 = direct["client_loop_lag_ms"]["p99"]
    return (
        direct["turns_ok"] == direct["turns_expected"]
        and every_p99 is not None
        and every_p99 <= BASELINE_MAX_P99_MS
        and (lag_p99 or 0) <= BASELINE_MAX_LAG_MS
    )


def added(platform: dict[str, Any], direct: dict[str, Any]) -> dict[str, float | None]:
    """Platform minus direct, percentile by percentile (not a percentile of differences)."""
    out: dict[str, float | None] = {}
    for metric in ("first_token_ms", "newest_ms", "every_ms", "last_token_ms", "ttft_ms"):
        for q in ("p50", "p99"):
            a, b = platform[metric][q], direct[metric][q]
            out[f"{metric}_{q}"] = None if a is None or b is None else round(a - b, 2)
    return out


# --- orchestration ---------------------------------------------------------------------------


_STARTED = time.monotonic()


def say(message: str) -> None:
    elapsed = time.monotonic() - _STARTED
    print(f"stream_overhead {elapsed:5.0f}s | {message}", file=sys.stderr, flush=True)


def start_fake(children: Children, cfg: Config, env: dict[str, str]) -> tuple[str, int]:
    """Start the stamped fake model; return its base URL (ending in /v1) and pid."""
    port = free_port()
    # Each request names its own token gap (fake_delay_ms); the server's default is unused.
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-fake", "--fake-port",
               str(port), "--tokens", str(cfg.tokens)]  # fmt: skip
    proc = children.start("fake", command, env)
    wait_for_port(port, proc, timeout=30)
    return f"http://127.0.0.1:{port}/v1", proc.pid


def start_web(children: Children, env: dict[str, str]) -> tuple[str, int]:
    """Start one uvicorn web process; return its host:port and pid once /healthz answers."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "webapp.asgi:application", "--host",
               "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = children.start("web", command, env)
    wait_for_port(port, proc, timeout=60)
    response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"/healthz answered {response.status_code}")
    return f"127.0.0.1:{port}", proc.pid


async def run_levels(
    cfg: Config, seats: Seats, fake_url: str, base: str, pids: dict[str, int]
) -> list[dict[str, Any]]:
    """Warm up, then per token gap and N: the platform path, then the direct path."""
    first = cfg.delays[0]
    if seats.get((first, "warmup")):
        say(f"warm-up: {cfg.warmup} clients, 1 turn each (not reported)")
        warm = Config(**{**asdict(cfg), "turns": 1})
        await platform_phase(seats[first, "warmup"], first, base, pids, warm)
        await direct_phase(cfg.warmup, first, fake_url, pids, warm)
    results: list[dict[str, Any]] = []
    for gap in cfg.delays:
        for n in cfg.clients:
            say(f"gap {gap:g} ms, N={n}: platform path ({n} websockets x {cfg.turns} turns)")
            platform = await platform_phase(seats[gap, str(n)], gap, base, pids, cfg)
            say(f"gap {gap:g} ms, N={n}: direct path ({n} httpx streams x {cfg.turns} turns)")
            direct = await direct_phase(n, gap, fake_url, pids, cfg)
            level: dict[str, Any] = {"gap_ms": gap, "clients": n}
            level["offered_tokens_per_s"] = round(n * 1000 / gap)
            level.update(platform=platform, direct=direct, added=added(platform, direct))
            level["baseline_ok"] = baseline_ok(direct)
            results.append(level)
            say(_progress_line(level))
    return results


def _progress_line(level: dict[str, Any]) -> str:
    p, d, a = level["platform"], level["direct"], level["added"]
    errors = (
        f", errors: {'; '.join(p['errors'] + d['errors'])}" if p["errors"] + d["errors"] else ""
    )
    return (
        f"gap {level['gap_ms']:g} ms, N={level['clients']}: turns ok {p['turns_ok']}/"
        f"{p['turns_expected']} (direct {d['turns_ok']}), added newest-token p50/p99 "
        f"{a['newest_ms_p50']}/{a['newest_ms_p99']} ms, "
        f"added TTFT p50 {a['ttft_ms_p50']} ms{errors}"
    )


# --- report ----------------------------------------------------------------------------------


def machine_info(cfg: Config) -> dict[str, Any]:
    import psycopg
    import redis

    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    with psycopg.connect(maintenance_url(cfg.database_url)) as conn:
        (pg,) = conn.execute("SHOW server_version").fetchone() or ("?",)
    redis_version = redis.Redis.from_url(cfg.redis_url).info().get("redis_version", "?")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgres": pg,
        "redis": redis_version,
    }


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The design targets, each with the measured value it is judged on."""
    rows = []
    for level in results:
        n, added_ms, platform_ = level["clients"], level["added"], level["platform"]
        name = f"gap {level['gap_ms']:g} ms, N={n}"
        if not level["baseline_ok"]:
            name += " (baseline saturated: `added` understated)"
        limit = TARGET_ADDED_P99_MS.get(n)
        if limit is not None:
            rows.append(_target(f"{name}: added p99 per token, (a) newest in frame", "ms",
                                added_ms["newest_ms_p99"], limit))  # fmt: skip
            rows.append(_target(f"{name}: added p99, (0) first token (no coalescing hold)", "ms",
                                added_ms["first_token_ms_p99"], limit))  # fmt: skip
        rows.append(_target(f"{name}: added TTFT p50", "ms", added_ms["ttft_ms_p50"],
                            TARGET_ADDED_TTFT_P50_MS))  # fmt: skip
        db = platform_["db"]
        total, checkpoints = db["write_commits_per_turn"], db["checkpoints_per_turn"]
        writes = None if total is None else round(total - checkpoints, 2)
        rows.append(_target(f"{name}: write commits per turn, checkpoints excluded", "",
                            writes, TARGET_WRITE_COMMITS_PER_TURN))  # fmt: skip
        failed = platform_["turns_expected"] - platform_["turns_ok"]
        rows.append(_target(f"{name}: failed or short turns", "", failed, 0))
    return rows


def _target(name: str, unit: str, value: float | None, limit: float) -> dict[str, Any]:
    passed = value is not None and value <= limit
    return {"target": name, "unit": unit, "value": value, "limit": limit, "pass": passed}


def _f(value: Any) -> str:
    return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _pair(d: dict[str, Any], metric: str) -> str:
    return f"{_f(d[metric]['p50'])} / {_f(d[metric]['p99'])}"


def _level(level: dict[str, Any]) -> str:
    return f"{level['gap_ms']:g} | {level['clients']}"


LATENCY_COLUMNS = {
    "first_token_ms": "(0) first token, no hold",
    "newest_ms": "(a) newest token per frame",
    "every_ms": "(b) every token",
    "last_token_ms": "last token",
    "ttft_ms": "TTFT",
}


def latency_table(results: list[dict[str, Any]]) -> list[str]:
    titles = " | ".join(f"{title} p50 / p99" for title in LATENCY_COLUMNS.values())
    lines = [
        f"| gap ms | N | path | {titles} | turns ok / expected | tokens |",
        "|---|---|---|" + "---|" * len(LATENCY_COLUMNS) + "---|---|",
    ]
    for level in results:
        for path in ("platform", "direct"):
            d = level[path]
            cells = " | ".join(_pair(d, metric) for metric in LATENCY_COLUMNS)
            ok = f"{d['turns_ok']} / {d['turns_expected']}"
            lines.append(f"| {_level(level)} | {path} | {cells} | {ok} | {d['tokens']} |")
        a = level["added"]
        cells = " | ".join(f"{_f(a[m + '_p50'])} / {_f(a[m + '_p99'])}" for m in LATENCY_COLUMNS)
        lines.append(f"| {_level(level)} | **added** | {cells} | | |")
    return lines


def ttft_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| gap ms | N | send → ack (turn committed) | send → started (via channel layer) "
        "| send → first delta (platform TTFT) | direct TTFT |",
        "|---|---|---|---|---|---|",
    ]
    for level in results:
        p, d = level["platform"], level["direct"]
        cells = " | ".join(_pair(p, m) for m in ("ack_ms", "started_ms", "ttft_ms"))
        lines.append(f"| {_level(level)} | {cells} | {_pair(d, 'ttft_ms')} |")
    return lines


def cost_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| gap ms | N | tokens/s offered / delivered | web CPU µs / token "
        "| CPUs busy: web / fake / clients / postgres / redis / other "
        "| client loop lag p99 (ms) | frames / reply | commits / turn (all, read-only too) "
        "| write commits / turn | checkpoints / turn | connections opened / turn |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level in results:
        p, db = level["platform"], level["platform"]["db"]
        lines.append(
            f"| {_level(level)} | {level['offered_tokens_per_s']} / {_f(p['tokens_per_s'])} "
            f"| {_f(p['web_cpu_us_per_token'])} | {_cores(p['cpu'])} "
            f"| {_f(p['client_loop_lag_ms']['p99'])} | {_f(p['frames_per_reply'])} "
            f"| {_f(db['commits_per_turn'])} | {_f(db['write_commits_per_turn'])} "
            f"| {_f(db['checkpoints_per_turn'])} | {_f(db.get('connections_per_turn'))} |"
        )
    return lines


def direct_cost_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| gap ms | N | tokens/s offered / delivered | CPUs busy: web / fake / clients / postgres "
        "/ redis / other | client loop lag p99 (ms) | sound baseline |",
        "|---|---|---|---|---|---|",
    ]
    for level in results:
        d = level["direct"]
        lines.append(
            f"| {_level(level)} | {level['offered_tokens_per_s']} / {_f(d['tokens_per_s'])} "
            f"| {_cores(d['cpu'])} | {_f(d['client_loop_lag_ms']['p99'])} "
            f"| {'yes' if level['baseline_ok'] else '**no**'} |"
        )
    return lines


def _cores(cpu: dict[str, float]) -> str:
    """CPU seconds per wall second of each party over the window."""
    wall = cpu["wall_s"] or 1.0
    names = ("web", "fake", "clients", "postgres", "redis", "other")
    return " / ".join(f"{cpu[f'{name}_cpu_s'] / wall:.2f}" for name in names)


def target_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | measured | limit | met |", "|---|---|---|---|"]
    for row in rows:
        unit = f" {row['unit']}" if row["unit"] else ""
        met = "yes" if row["pass"] else "**NO**"
        lines.append(f"| {row['target']} | {_f(row['value'])}{unit} | ≤ {_f(row['limit'])}{unit} "
                     f"| {met} |")  # fmt: skip
    return lines


def error_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for level in results:
        for path in ("platform", "direct"):
            for error in level[path]["errors"]:
                lines.append(f"- gap {level['gap_ms']:g} ms, N={level['clients']}, {path}: {error}")
    return ["Errors (distinct, first 5 per phase):", "", *lines, ""] if lines else []


def _ramp(cfg: dict[str, Any]) -> str:
    return "one reply's duration" if cfg["ramp_s"] is None else f"{cfg['ramp_s']:g} s"


def markdown(report: dict[str, Any]) -> str:
    cfg, machine, results = report["config"], report["machine"], report["results"]
    gaps = ", ".join(f"{gap:g}" for gap in cfg["delays"])
    tag = f" ({report['tag']})" if report.get("tag") else ""
    head = [
        f"# stream_overhead{tag} — {report['generated']}",
        "",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"PostgreSQL {machine['postgres']}, Redis {machine['redis']}; other work on the machine "
        f"before the run: {machine.get('background_cpus_before', '?')} CPUs. The fake model, the "
        "web process, PostgreSQL, Redis and the clients all share these CPUs.",
        "",
        f"Load: {cfg['tokens']} tokens per reply, one every {gaps} ms (`gap`), {cfg['turns']} "
        f"turns per client, client starts spread over {_ramp(cfg)}, frame interval "
        f"{cfg['frame_interval'] * 1000:g} ms. Latencies in ms from the token's emission by the "
        "fake; `added` = platform minus direct, percentile by percentile.",
        "",
    ]
    body = [
        *latency_table(results), "",
        *error_lines(results),
        "Where the platform's TTFT goes (ms from send, p50 / p99):", "",
        *ttft_table(results), "",
        "Cost on the platform path (over the turns only):", "",
        *cost_table(results), "",
        f"Direct path (a sound baseline while its every-token p99 ≤ {BASELINE_MAX_P99_MS:g} ms "
        f"and its client loop lag p99 ≤ {BASELINE_MAX_LAG_MS:g} ms):", "",
        *direct_cost_table(results), "",
        "Targets (the relay overhead is judged on (a), the newest token of each frame, and on (0), "
        "the leading-edge first token, which has no coalescing hold):", "",
        *target_table(report["targets"]),
    ]  # fmt: skip
    return "\n".join(head + body) + "\n"


def write_report(report: dict[str, Any], tag: str) -> tuple[Path, Path]:
    """Write the raw numbers (dated) and the table (latest) to benchmarks/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    suffix = f"-{tag}" if tag else ""
    raw = RESULTS / f"stream_overhead-{stamp}{suffix}.json"
    raw.write_text(json.dumps(report, indent=2) + "\n")
    table = RESULTS / f"stream_overhead{suffix}.md"
    table.write_text(markdown(report))
    return raw, table


# --- entry point -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--clients", type=int, nargs="+", default=[50, 100, 200], help="N values to run")
    add("--turns", type=int, default=3, help="turns per client (K)")
    add("--tokens", type=int, default=64, help="tokens per reply (T)")
    add("--delay-ms", type=float, nargs="+", default=[5.0, 25.0], help="token gaps to run (ms)")
    add("--warmup", type=int, default=10, help="clients in an unreported warm-up (0: none)")
    add("--ramp-s", type=float, help="spread of the clients' start times (default: one reply)")
    add("--think-ms", type=float, default=100.0, help="max random pause between turns")
    add("--turn-timeout", type=float, default=60.0)
    add("--phase-timeout", type=float, default=240.0)
    add("--frame-interval", type=float, default=0.05, help="CHAT_FRAME_INTERVAL for the web")
    add("--wait-quiet", type=float, default=0.0, help="wait up to this long for a quiet machine")
    add("--quiet-limit", type=float, default=0.3, help="CPUs of other work that count as quiet")
    add("--no-write", action="store_true", help="print the table only; write no results")
    add("--tag", default="", help="suffix for the result files, e.g. a variant's name")
    modes = ["shipped", *DB_CONNECTIONS]
    add("--db-connections", choices=modes, default="shipped", help="see DB_CONNECTIONS")
    add("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    add("--fake-port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    return Config(
        clients=args.clients, turns=args.turns, tokens=args.tokens, delays=args.delay_ms,
        warmup=args.warmup, ramp_s=args.ramp_s, think_ms=args.think_ms,
        turn_timeout=args.turn_timeout, phase_timeout=args.phase_timeout,
        frame_interval=args.frame_interval,
        database_url=bench_database_url(os.environ.get("DATABASE_URL")),
        redis_url=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        write=not args.no_write, db_connections=args.db_connections,
    )  # fmt: skip


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def benchmark(cfg: Config, children: Children) -> dict[str, Any]:
    """Set everything up, run every level, and return the report."""
    env = bench_env(cfg)
    say(f"database {urlsplit(cfg.database_url).path[1:]}: create if missing, migrate")
    prepare_database(cfg, env)
    fake_url, fake_pid = start_fake(children, cfg, env)
    groups = {gap: {str(n): n for n in cfg.clients} for gap in cfg.delays}
    groups[cfg.delays[0]]["warmup"] = cfg.warmup
    say(f"seeding {sum(sum(g.values()) for g in groups.values())} participants at the chat step")
    seats = seed(cfg, fake_url, groups)
    base, web_pid = start_web(children, env)
    say(f"fake model {fake_url} (pid {fake_pid}), web http://{base} (pid {web_pid})")
    results = _run(run_levels(cfg, seats, fake_url, base, {"web": web_pid, "fake": fake_pid}))
    config = {k: v for k, v in asdict(cfg).items() if k not in ("database_url", "redis_url")}
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(cfg),
        "config": config,
        "results": results,
        "targets": targets(results),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_fake:
        serve_fake(args.fake_port, args.tokens, args.delay_ms[0])
        return 0
    cfg = config_from(args)
    load = wait_until_quiet(args.quiet_limit, args.wait_quiet)
    say(f"background load before the run: {load:.2f} CPUs")
    # SIGINT too: a shell starts background jobs with it ignored, and Python would keep it so.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    children = Children(Path(tempfile.mkdtemp(prefix="stream_overhead-")))
    try:
        report = benchmark(cfg, children)
        report["machine"]["background_cpus_before"] = load
        report["tag"] = args.tag
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception:
        traceback.print_exc()
        for name in children.procs:
            say(f"last lines of {children.logs / name}.log:\n{children.tail(name)}")
        say(f"failed; the logs are in {children.logs}")
        return 1
    finally:
        children.stop_all()
    shutil.rmtree(children.logs, ignore_errors=True)
    print(markdown(report))
    if cfg.write:
        for path in write_report(report, args.tag):
            say(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
