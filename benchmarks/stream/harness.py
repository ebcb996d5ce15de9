"""The harness: run every phase (platform path, then direct path) per token gap and N.

A phase connects its participants, runs their turns with the CPU and database counters around
them, and summarises what the clients saw; `benchmark` sets everything up (database, fake model,
web processes, seats) and returns the report that report.py renders.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from benchmarks.stream.clients import Turn, connect, direct_client, platform_client
from benchmarks.stream.config import Config, say
from benchmarks.stream.counters import Pids, cpu_delta, cpu_sample, machine_info, wait_until_idle
from benchmarks.stream.database import (
    Seat,
    Seats,
    bench_env,
    db_delta,
    db_sample,
    prepare_database,
    seat_outcomes,
    seed,
    settle_stats,
    wal_retained,
    wal_writes,
)
from benchmarks.stream.processes import Children, start_fake, start_web
from benchmarks.stream.report import targets
from benchmarks.stream.stamped_model import run_loop
from benchmarks.stream.stats import added, baseline_ok, summarise


async def loop_lag(samples: list[float], stop: asyncio.Event, every: float = 0.01) -> None:
    """Record how late this event loop wakes up (ms): the client side's own saturation."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(every)
        samples.append((time.monotonic() - before - every) * 1000)


async def measured(
    clients: Sequence[Awaitable[list[Turn]]], pids: Pids, cfg: Config
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


async def connect_all(seats: list[Seat], bases: list[str]) -> tuple[list[Any], list[str]]:
    """Open every seat's socket (25 at a time), seat i on web process i mod the number of them
    (as a proxy would spread them); return the sockets and the failures."""
    sem = asyncio.Semaphore(25)
    opened = await asyncio.gather(
        *(connect(bases[i % len(bases)], s, sem) for i, s in enumerate(seats)),
        return_exceptions=True,
    )
    sockets = [ws for ws in opened if not isinstance(ws, BaseException)]
    errors = [f"connect: {type(e).__name__}: {e}" for e in opened if isinstance(e, BaseException)]
    return sockets, errors


async def platform_phase(
    seats: list[Seat], gap: float, bases: list[str], pids: Pids, cfg: Config
) -> dict[str, Any]:
    """Connect every seat, then run their turns; DB counters around the turns only."""
    sockets, connect_errors = await connect_all(seats, bases)
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
        for pid in pids["web"]:  # their disconnects, before the next phase
            await asyncio.to_thread(wait_until_idle, pid)
    summary = summarise(len(seats), turns, cpu, lag, cfg)
    summary["errors"] = sorted(set(connect_errors))[:3] + summary["errors"]
    # Per turn = per reply the database completed, whether or not its client saw the end of it.
    outcomes = await asyncio.to_thread(seat_outcomes, seats)
    summary["db"] = db_delta(before, after, outcomes.get("complete", 0), wal)
    summary["db"]["assistant_messages"] = outcomes
    summary["web_cpu_us_per_token"] = _per_token(cpu.get("web_cpu_s"), summary["tokens"])
    return summary


async def direct_phase(
    n: int, gap: float, fake_url: str, pids: Pids, cfg: Config
) -> dict[str, Any]:
    url = f"{fake_url}/chat/completions"
    clients = [direct_client(url, gap, cfg, o) for o in offsets(n, gap, cfg)]
    turns, cpu, lag = await measured(clients, pids, cfg)
    return summarise(n, turns, cpu, lag, cfg)


def _per_token(cpu_s: float | None, tokens: int) -> float | None:
    return round(cpu_s / tokens * 1e6, 1) if cpu_s is not None and tokens else None


# --- orchestration ---------------------------------------------------------------------------


async def run_levels(
    cfg: Config, seats: Seats, fake_url: str, bases: list[str], pids: Pids
) -> list[dict[str, Any]]:
    """Warm up, then per token gap and N: the platform path, then the direct path."""
    first = cfg.delays[0]
    if seats.get((first, "warmup")):
        say(f"warm-up: {cfg.warmup} clients, 1 turn each (not reported)")
        warm = Config(**{**asdict(cfg), "turns": 1})
        await platform_phase(seats[first, "warmup"], first, bases, pids, warm)
        await direct_phase(cfg.warmup, first, fake_url, pids, warm)
    results: list[dict[str, Any]] = []
    for gap in cfg.delays:
        for n in cfg.clients:
            say(f"gap {gap:g} ms, N={n}: platform path ({n} websockets x {cfg.turns} turns)")
            platform = await platform_phase(seats[gap, str(n)], gap, bases, pids, cfg)
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
    webs = [start_web(children, env, f"web{i}" if i else "web") for i in range(cfg.web_processes)]
    bases, web_pids = [base for base, _ in webs], [pid for _, pid in webs]
    where = ", ".join(f"http://{base} (pid {pid})" for base, pid in webs)
    say(f"fake model {fake_url} (pid {fake_pid}), web {where}")
    pids: Pids = {"web": web_pids, "fake": [fake_pid]}
    results = run_loop(run_levels(cfg, seats, fake_url, bases, pids))
    config = {k: v for k, v in asdict(cfg).items() if k not in ("database_url", "redis_url")}
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(cfg),
        "config": config,
        "results": results,
        "targets": targets(results),
    }
