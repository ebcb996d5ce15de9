"""Arrival burst: N people open the study link and consent at once, through several web processes.

Run from the repository root (about 2 minutes for 200 and 1,000 on 2 CPUs):

    .venv/bin/python benchmarks/arrival_burst.py                      # 200 and 1000, pooled
    .venv/bin/python benchmarks/arrival_burst.py --before b2311e2     # that commit first, no pool

It needs PostgreSQL and Redis: DATABASE_URL names the server (default
postgres://postgres@127.0.0.1:5432; use a server of its own: a burst without a pool opens up to N
connections and starves everyone else on it), REDIS_URL the Redis (default
redis://127.0.0.1:6379/9). It always uses its own database, `collabllm_bench_arrivals` (created if
missing, then migrated).

What it does, per N: a fresh live Prolific study with the three paper arms and three document
types; one `uvicorn --workers P` (P = --web-processes, default 2) with the database and connection
values of docker/production.env.example (pool on, max 10, timeout 10 s, health checks; plain-http
cookies; `--pool off` for the earlier default) serving the code under --app-root; N browsers (one
asyncio process, a cookie jar each) released together, 10 % of them a second browser with the id
of the arrival just before it. Each GETs the recruiting link (redirect to the consent page, whose
form gives the CSRF token), then POSTs consent. A 503 busy page is handled as a browser would: a
GET is repeated after Retry-After (plus jitter, like webapp/static/js/busy.js), a POST is sent
again from the busy page's form. Any other 5xx ends that browser's arrival (a participant sees an
error). Recorded: 5xx (not busy) responses, busy pages, per distinct id the participants and
whether consented, shared positions, the imbalance per stratum, entry (link to consent page) and
consent (POST to its redirect) latency p50/p99 counting busy retries, the peak of PostgreSQL
connections to the database (sampled every 50 ms), the machine, its load average and the CPU
time other processes used during the burst. Results: benchmarks/results/arrival_burst-<tag>.*
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.assignment_latency import (  # noqa: E402
    arrival_ids,
    balance,
    machine,
    make_study,
    percentiles,
)
from benchmarks.benchdb import database_prepare, database_url, production_env  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BENCH_DB = "collabllm_bench_arrivals"
# docker/production.env.example's database values (tests/test_compose.py keeps them in sync).
POOLED = {
    "DATABASE_POOL": "true",
    "DATABASE_POOL_MIN_SIZE": "2",
    "DATABASE_POOL_MAX_SIZE": "10",
    "DATABASE_POOL_TIMEOUT": "30",
    "DATABASE_CONN_MAX_AGE": "0",
    "DATABASE_CONN_HEALTH_CHECKS": "true",
}
TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')
MAX_TRIES = 30


def bench_url() -> str:
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return database_url(server, BENCH_DB)


def bench_env(pool: bool, pool_timeout: float | None = None) -> dict[str, str]:
    env = production_env(
        bench_url(),
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9"),
        WHITENOISE_USE_FINDERS="true",
        WHITENOISE_AUTOREFRESH="false",
    )
    env.update(POOLED if pool else {"DATABASE_POOL": "false", "DATABASE_CONN_MAX_AGE": "0"})
    if pool and pool_timeout is not None:
        env["DATABASE_POOL_TIMEOUT"] = str(pool_timeout)
    for name in ("DJANGO_SECRET_KEY_FILE", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    return env


def setup_django(pool: bool) -> None:
    os.environ.update(bench_env(pool))
    import django

    django.setup()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_web(
    app_root: Path, processes: int, env: dict[str, str], log: Path
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "webapp.asgi:application", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(processes), "--lifespan", "off"]
    command += ["--backlog", "4096"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, cwd=app_root, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"web server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"web server did not start:\n{log.read_text()[-3000:]}")


def stop_web(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Tally:
    def __init__(self) -> None:
        self.server_errors: list[int] = []
        self.busy = 0
        self.entry_ms: list[float] = []
        self.consent_ms: list[float] = []
        self.failed = 0
        self.connection_errors = 0


async def request(client: Any, tally: Tally, method: str, url: str, data: dict | None) -> Any:
    """One browser request, repeating it the way the busy page does; None after another 5xx."""
    import httpx

    for _ in range(MAX_TRIES):
        follow = method == "GET"
        try:
            response = await client.request(method, url, data=data, follow_redirects=follow)
        except httpx.TransportError:
            tally.connection_errors += 1  # the browser shows a network error
            return None
        if response.status_code == 503 and "Retry-After" in response.headers:
            tally.busy += 1
            wait = float(response.headers["Retry-After"])
            await asyncio.sleep(wait + random.random() * wait)
            if method == "GET":
                url = str(response.url)  # the page reloads itself (after any redirect)
            else:
                token = TOKEN.search(response.text)
                fields = {k: unescape(v) for k, v in HIDDEN.findall(response.text)}
                data = {**fields, "csrfmiddlewaretoken": token[1] if token else ""}
            continue
        if response.status_code >= 500:
            tally.server_errors.append(response.status_code)
            return None
        return response
    return None


async def arrive(
    base: str, slug: str, pid: str, address: str, start: asyncio.Event, tally: Tally
) -> None:
    import httpx

    # Each browser has an address of its own, as behind the proxy (uvicorn trusts
    # X-Forwarded-For from 127.0.0.1): the door counts re-entries per client address.
    headers = {"X-Forwarded-For": address}
    async with httpx.AsyncClient(base_url=base, timeout=600, headers=headers) as client:
        await start.wait()
        params = f"PROLIFIC_PID={pid}&STUDY_ID=bench&SESSION_ID=s-{pid}"
        t0 = time.perf_counter()
        page = await request(client, tally, "GET", f"/s/{slug}/?{params}", None)
        if page is None:
            tally.failed += 1
            return
        tally.entry_ms.append((time.perf_counter() - t0) * 1000)
        token = TOKEN.search(page.text)
        if not str(page.url).endswith("/consent/") or token is None:
            return  # a second browser: the resume page (or the first one's step)
        t1 = time.perf_counter()
        data = {"csrfmiddlewaretoken": token[1], "choice": "agree"}
        done = await request(client, tally, "POST", f"/s/{slug}/consent/", data)
        if done is None:
            tally.failed += 1
            return
        tally.consent_ms.append((time.perf_counter() - t1) * 1000)


async def burst(base: str, slug: str, ids: list[str]) -> tuple[Tally, float]:
    tally = Tally()
    start = asyncio.Event()
    tasks = [
        asyncio.create_task(arrive(base, slug, pid, f"10.9.{i // 250}.{i % 250 + 1}", start, tally))
        for i, pid in enumerate(ids)
    ]
    await asyncio.sleep(0.5)  # every browser waits on the event
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    return tally, time.perf_counter() - t0


class ConnectionSampler(threading.Thread):
    """Peak count of PostgreSQL backends on the bench database, every 50 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        url = bench_url().replace("postgres://", "postgresql://", 1)
        with psycopg.connect(url, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()
                self.peak = max(self.peak, row[0] if row else 0)
                time.sleep(0.05)


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of `root` and every live descendant, from /proc."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        times[pid] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def _postmaster() -> int:
    """The pid of the PostgreSQL server the benchmark database lives on (0 if unknown)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    connection.close()
    try:
        return int((Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split())[1])
    except OSError:
        return 0  # another machine


def cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def one_burst(args: argparse.Namespace, arrivals: int, run: str) -> dict[str, Any]:
    pool = args.pool == "on"
    from django.db import connection

    slug = make_study(f"n{arrivals}", {"block_size": 3}, run)
    ids = arrival_ids(arrivals, f"{run}-{arrivals}", seed=arrivals)
    connection.close()
    connection.close_pool()  # only the web processes' connections count in the peak
    log = Path(tempfile.gettempdir()) / f"arrival_burst-{run}-{arrivals}.log"
    env = bench_env(pool, args.pool_timeout)
    proc, base = start_web(Path(args.app_root), args.web_processes, env, log)
    sampler = ConnectionSampler()
    postmaster = _postmaster()
    connection.close_pool()

    def ours() -> dict[str, float]:
        return {
            "web": _tree_cpu(proc.pid),
            "client": sum(os.times()[:2]),
            "postgres": _tree_cpu(postmaster) if postmaster else 0.0,
        }

    try:
        sampler.start()
        load_before = os.getloadavg()
        busy0, total0 = cpu_busy()
        cpu0, window = ours(), time.monotonic()
        tally, wall = asyncio.run(burst(base, slug, ids))
        cpu1, window = ours(), time.monotonic() - window
        busy1, total1 = cpu_busy()
    finally:
        sampler.stop.set()
        stop_web(proc)
    sampler.join(timeout=5)
    seats = balance(slug, ids)
    return {
        "arrivals": arrivals,
        "distinct_ids": len(set(ids)),
        "server_errors_5xx": len(tally.server_errors),
        "server_error_codes": sorted(set(tally.server_errors)),
        "busy_pages": tally.busy,
        "arrivals_failed": tally.failed,
        "connection_errors": tally.connection_errors,
        "assigned_once": seats["consented"] == seats["distinct_ids"] == seats["participants"],
        "balance": seats,
        "entry_ms": percentiles(tally.entry_ms),
        "consent_ms": percentiles(tally.consent_ms),
        "wall_s": round(wall, 2),
        "connections_peak": sampler.peak,
        "loadavg_before": load_before,
        "cpus_busy_during": round((busy1 - busy0) / max(wall, 1e-9), 2),
        "cpu_share_busy": round((busy1 - busy0) / max(total1 - total0, 1e-9), 2),
        # CPU-seconds per wall second: the web processes, this client, the PostgreSQL server,
        # and whatever else the machine ran meanwhile.
        "cpus": _per_second(cpu0, cpu1, busy1 - busy0, window),
        "web_log": str(log),
    }


def _per_second(
    before: dict[str, float], after: dict[str, float], busy: float, wall: float
) -> dict[str, float]:
    used = {name: after[name] - before[name] for name in before}
    used["other"] = max(0.0, busy - sum(used.values()))
    return {name: round(value / max(wall, 1e-9), 2) for name, value in used.items()}


def row(tag: str, r: dict[str, Any]) -> str:
    b = r["balance"]
    entry, consent = r["entry_ms"], r["consent_ms"]
    return (
        f"| {tag} | {r['arrivals']} | {r['server_errors_5xx']} | {r['busy_pages']} | "
        f"{r['arrivals_failed']} ({r.get('connection_errors', 0)}) | "
        f"{b['consented']} / {r['distinct_ids']} | "
        f"{b['participants']} | {b['shared_positions']} | {b['max_imbalance']:g} | "
        f"{entry.get('p50', '—')} / {entry.get('p99', '—')} | "
        f"{consent.get('p50', '—')} / {consent.get('p99', '—')} | {r['wall_s']} | "
        f"{r['connections_peak']} | {r['cpu_share_busy']:.0%} | "
        + " / ".join(f"{r['cpus'][k]:.2f}" for k in ("web", "client", "postgres", "other"))
        + " |"
    )


HEADER = (
    "| run | N | 5xx (not busy) | busy pages | arrivals failed (network) | "
    "consented / distinct ids | "
    "participants | shared positions | worst imbalance | entry ms p50 / p99 | "
    "consent ms p50 / p99 | burst s | connections peak | machine CPU busy | "
    "CPUs: web / client / postgres / other |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def write(result: dict[str, Any], tag: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"arrival_burst-{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        f"# arrival_burst ({tag})",
        "",
        f"{result['when']}; {m['cpus']} CPUs {m['cpu']}, Python {m['python']}, PostgreSQL "
        f"{m['postgres']} (max_connections {result['max_connections']}); load average before "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_before'])}; "
        f"{result['web_processes']} web processes (`uvicorn --workers`), pool "
        f"{result['pool']}"
        + (
            f" (max 10 per process, timeout {result['pool_timeout']:g} s)"
            if result["pool"] == "on"
            else ""
        )
        + f"; code: {result['app_root_commit']}.",
        "",
        "`machine CPU busy`: share of all CPUs busy during the burst, other work included; "
        "`CPUs`: CPU-seconds per second of the web processes, the client, the PostgreSQL "
        "server and `other` work on the machine.",
        "",
        HEADER,
        *[row(tag, r) for r in result["runs"]],
        "",
    ]
    (RESULTS / f"arrival_burst-{tag}.md").write_text("\n".join(lines))


def archive(ref: str) -> str:
    """A checkout of `ref` (git archive) in a temporary folder, for the before run."""
    folder = tempfile.mkdtemp(prefix=f"arrival_burst-{ref}-")
    tar = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", folder], input=tar.stdout, check=True)
    return folder


def run_variant(args: argparse.Namespace, max_connections: int, code: str) -> None:
    run = datetime.now(UTC).strftime("%H%M%S")
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "max_connections": max_connections,
        "web_processes": args.web_processes,
        "pool": args.pool,
        "pool_timeout": args.pool_timeout or float(POOLED["DATABASE_POOL_TIMEOUT"]),
        "app_root_commit": code,
        "runs": [],
    }
    for n in args.arrivals:
        r = one_burst(args, n, run)
        result["runs"].append(r)
        print(HEADER.splitlines()[0] if len(result["runs"]) == 1 else "", flush=True)
        print(row(args.tag, r), flush=True)
    if not args.no_write:
        write(result, args.tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrivals", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--web-processes", type=int, default=2)
    parser.add_argument("--pool", choices=["on", "off"], default="on")
    parser.add_argument("--pool-timeout", type=float, help="DATABASE_POOL_TIMEOUT (default 30)")
    parser.add_argument("--app-root", default=str(ROOT), help="the checkout the web server runs")
    parser.add_argument(
        "--before", metavar="REF", help="first run REF (git archive) with the pool off, tag before"
    )
    parser.add_argument("--tag", default="after")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import resource

    # One socket per browser: 1,000 of them need more than the usual 1,024 descriptors.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    database_prepare(bench_url(), bench_env(args.pool == "on"))
    setup_django(args.pool == "on")
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        max_connections = int(cursor.fetchone()[0])
    if args.before:
        before = argparse.Namespace(**{**vars(args), "pool": "off", "tag": "before"})
        before.app_root = archive(args.before)
        run_variant(before, max_connections, f"{args.before} (git archive)")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=args.app_root, capture_output=True, text=True
    ).stdout.strip()
    run_variant(args, max_connections, commit or args.app_root)


if __name__ == "__main__":
    main()
