"""The benchmark's database: its environment, seeding, and what the turns cost it in commits.

The web process, manage.py and this process share one environment (`bench_env`). The database
(`collabllm_bench` unless --database names another) is created if missing and migrated; every
participant is seeded at the chat step. Commits are counted from pg_stat_database and, exactly,
from the WAL (pg_walinspect): which transactions wrote to the bench database, and what rows.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmarks.benchdb import production_env
from benchmarks.stream.config import BENCH_DB, DEFAULT_SERVER_URL, ROOT, Config, say


def bench_database_url(url: str | None, name: str = BENCH_DB) -> str:
    """The server of url (or the default one), with the benchmark's own database `name`."""
    parts = urlsplit(url or DEFAULT_SERVER_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


def database_name(cfg: Config) -> str:
    """The name of the benchmark's database (--database)."""
    return urlsplit(cfg.database_url).path.lstrip("/")


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
    return production_env(
        cfg.database_url,
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        **database_env(cfg.db_connections),
        REDIS_URL=cfg.redis_url,
        CHAT_TURNS_PER_MINUTE="1000",
        CHAT_FRAME_INTERVAL=str(cfg.frame_interval),
    )


def prepare_database(cfg: Config, env: dict[str, str]) -> None:
    """Create the benchmark database if it is missing, then migrate it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(maintenance_url(cfg.database_url), autocommit=True) as conn:
        name = database_name(cfg)
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not found:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
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
        commits, sessions = conn.execute(query, [database_name(cfg)]).fetchone() or (0, 0)
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
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [database_name(cfg)]
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
