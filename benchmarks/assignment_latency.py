"""Assignment latency: consent (which runs the assignment) under 200 concurrent arrivals.

Run from the repository root (about 2 minutes on a 2-core machine):

    .venv/bin/python benchmarks/assignment_latency.py
    .venv/bin/python benchmarks/assignment_latency.py --arrivals 200 --processes 4 --threads 12

It needs PostgreSQL: DATABASE_URL names the server (default postgres://postgres@127.0.0.1:5432).
It always uses its own database, `collabllm_bench_assign` on that server (created if missing, then
migrated). No Redis traffic: sessions live in the database.

What it does, per scenario (design) and repeat: one live Prolific study with the three paper arms
and three document types; --arrivals arrivals, 10 % of them a second browser with the id of the
arrival just before it; --processes worker processes (separate interpreters and connections, like
web processes) of --threads threads each, all released together by one barrier. Each arrival is a
fresh django.test.Client: GET /s/<slug>/?PROLIFIC_PID=.. then POST /s/<slug>/consent/ agree, the
real entry path. Timed: the consent request (wall, client side), and inside it
`assignment.assign_participant` (lock waits included), for every request that assigned; also the
time from the barrier to the consent response (the burst's queueing). Then, from the database:
participants per distinct id, unique positions per stratum, and the imbalance per stratum (max -
min count per unit of weight). Results: benchmarks/results/assignment_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.benchdb import database_prepare, database_url, production_env  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BENCH_DB = "collabllm_bench_assign"
SCENARIOS: dict[str, dict[str, Any]] = {
    "blocks-3": {"block_size": 3},
    "blocks-3-by-document-type": {"block_size": 3, "stratify_by": "document_type"},
    "random-blocks-3-6": {"block_size": 3, "block_sizes": [3, 6]},
    "blocks-4-weighted-1-1-2": {"block_size": 4, "weights": {"collabllm": 2}},
    "least-filled": {"design": "least_filled"},
}


def bench_url() -> str:
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return database_url(server, BENCH_DB)


def bench_env() -> dict[str, str]:
    return production_env(
        bench_url(),
        DATABASE_CONN_MAX_AGE="60",
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9"),
        WHITENOISE_USE_FINDERS="true",  # no collectstatic needed (as in the tests)
        WHITENOISE_AUTOREFRESH="true",
    )


def prepare_database() -> None:
    """Create the benchmark database if it is missing, then migrate it."""
    database_prepare(bench_url(), bench_env())


def setup_django() -> None:
    os.environ.update(bench_env())
    import django

    django.setup()


def arrival_ids(arrivals: int, tag: str, seed: int) -> list[str]:
    """`arrivals` ids, 10 % of them a repeat of the id just before (they start together)."""
    repeats = arrivals // 10
    distinct = arrivals - repeats
    twice = set(random.Random(seed).sample(range(distinct), repeats))
    ids = [f"{tag}-{i:04d}" for i in range(distinct)]
    return [x for i, pid in enumerate(ids) for x in ([pid, pid] if i in twice else [pid])]


def make_study(name: str, spec: dict[str, Any], run: str) -> str:
    from studies.models import Study
    from tests.factories import three_arm_study

    fields = {k: v for k, v in spec.items() if k != "weights"}
    study = three_arm_study(
        slug=f"bench-{run}-{name}"[:50], recruiting_source=Study.Source.PROLIFIC, **fields
    )
    for key, weight in spec.get("weights", {}).items():
        study.conditions.filter(key=key).update(weight=weight)
    return study.slug


def worker(slug: str, chunks: list[list[str]], barrier: Any, out: Any) -> None:
    """One web-process stand-in: a thread per chunk of arrivals, all waiting on `barrier`."""
    setup_django()
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from studies.services import assignment

    local = threading.local()
    original = assignment.assign_participant

    def timed(participant, plan=None):
        t0 = time.perf_counter()
        result = original(participant, plan)
        local.assign_ms.append((time.perf_counter() - t0) * 1000)
        return result

    assignment.assign_participant = timed
    entry, consent = reverse("studies:entry", args=[slug]), reverse("studies:consent", args=[slug])
    rows: list[dict[str, Any]] = []

    def thread(chunk: list[str]) -> None:
        local.assign_ms = []
        connection.ensure_connection()
        barrier.wait()
        start = time.time()
        for pid in chunk:
            client = Client()
            params = {"PROLIFIC_PID": pid, "STUDY_ID": "bench", "SESSION_ID": f"s-{pid}"}
            t0 = time.perf_counter()
            client.get(entry, params)
            t1 = time.perf_counter()
            before = len(local.assign_ms)
            status = client.post(consent, {"choice": "agree"}).status_code
            t2 = time.perf_counter()
            assigned = len(local.assign_ms) > before
            rows.append(
                {
                    "entry_ms": (t1 - t0) * 1000,
                    "consent_ms": (t2 - t1) * 1000,
                    "assign_ms": local.assign_ms[-1] if assigned else None,
                    "done_after_ms": (time.time() - start) * 1000,
                    "status": status,
                }
            )
        connection.close()

    threads = [threading.Thread(target=thread, args=(chunk,)) for chunk in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(rows)


def one_run(slug: str, ids: list[str], processes: int, threads: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    lanes = processes * threads
    chunks = [ids[i::lanes] for i in range(lanes)]
    barrier = ctx.Barrier(lanes)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(slug, chunks[p::processes], barrier, out))
        for p in range(processes)
    ]
    started = time.perf_counter()
    for p in procs:
        p.start()
    rows = [row for _ in procs for row in out.get(timeout=600)]
    for p in procs:
        p.join()
    return {"rows": rows, "wall_s": time.perf_counter() - started}


def percentiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    pct = np.percentile(values, [50, 90, 99])
    return {
        "n": len(values),
        "p50": round(float(pct[0]), 1),
        "p90": round(float(pct[1]), 1),
        "p99": round(float(pct[2]), 1),
        "max": round(max(values), 1),
    }


def balance(slug: str, ids: list[str]) -> dict[str, Any]:
    from studies.models import Participant
    from studies.services.allocation import imbalance

    people = list(Participant.objects.filter(study__slug=slug).select_related("study"))
    weights = {c.key: c.weight for c in people[0].study.conditions.all()} if people else {}
    strata: dict[str, Counter] = defaultdict(Counter)
    for p in people:
        if p.allocation:
            strata[p.allocation["arm"]["stratum"]][p.allocation["arm"]["choice"]] += 1
    slots = Counter(
        (p.allocation["arm"]["stratum"], p.allocation["arm"]["position"])
        for p in people
        if p.allocation
    )
    per_stratum = {s: imbalance(c, weights) for s, c in sorted(strata.items())}
    return {
        "distinct_ids": len(set(ids)),
        "participants": len(people),
        "consented": sum(p.status == "consented" for p in people),
        "shared_positions": sum(n - 1 for n in slots.values()),
        "counts": {s: dict(sorted(c.items())) for s, c in sorted(strata.items())},
        "imbalance": per_stratum,
        "max_imbalance": max(per_stratum.values(), default=0),
    }


def machine() -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "postgres": pg,
        "loadavg_before": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrivals", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=12, help="per process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--no-write", action="store_true")
    cfg = parser.parse_args()
    prepare_database()
    setup_django()
    from django.db import connections

    run = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": vars(cfg),
        "scenarios": [],
    }
    runs = [
        (name, r, cfg.processes, cfg.threads) for name in cfg.scenarios for r in range(cfg.repeats)
    ]
    # The same arrivals one at a time: the cost of an assignment without any queueing.
    runs.append((cfg.scenarios[0], 0, 1, 1))
    for name, repeat, processes, threads in runs:
        slug = make_study(name, SCENARIOS[name], f"{run}-{repeat}-{processes * threads}")
        ids = arrival_ids(cfg.arrivals, f"{name}-{repeat}-{processes * threads}", seed=repeat)
        connections.close_all()
        done = one_run(slug, ids, processes, threads)
        rows = done["rows"]
        result = {
            "scenario": name,
            "repeat": repeat,
            "lanes": f"{processes}x{threads}",
            "spec": SCENARIOS[name],
            "slug": slug,
            "wall_s": round(done["wall_s"], 2),
            "consent_ms": percentiles([r["consent_ms"] for r in rows if r["assign_ms"]]),
            "assign_ms": percentiles([r["assign_ms"] for r in rows if r["assign_ms"]]),
            "entry_ms": percentiles([r["entry_ms"] for r in rows]),
            "burst_done_ms": percentiles([r["done_after_ms"] for r in rows]),
            "statuses": dict(Counter(str(r["status"]) for r in rows)),
            **balance(slug, ids),
        }
        report["scenarios"].append(result)
        print(
            f"{name} #{repeat} {result['lanes']}: consent p50 {result['consent_ms']['p50']} ms "
            f"p99 {result['consent_ms']['p99']} ms, assign p50 {result['assign_ms']['p50']} p99 "
            f"{result['assign_ms']['p99']} ms, max imbalance {result['max_imbalance']:g}, "
            f"participants {result['participants']}/{result['distinct_ids']}, "
            f"shared positions {result['shared_positions']}",
            flush=True,
        )
    report["pooled"] = pooled(report["scenarios"])
    if not cfg.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "assignment_latency.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "assignment_latency.md").write_text(markdown(report))


def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario, the worst imbalance over its repeats."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[r["scenario"]].append(r)
    return {
        name: {
            "max_imbalance": max(r["max_imbalance"] for r in rs),
            "shared_positions": sum(r["shared_positions"] for r in rs),
            "duplicate_participants": sum(r["participants"] - r["distinct_ids"] for r in rs),
        }
        for name, rs in by.items()
    }


def markdown(report: dict[str, Any]) -> str:
    m, c = report["machine"], report["config"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_before"])
    lines = [
        "# assignment_latency",
        "",
        f"{report['date']}: {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, PostgreSQL "
        f"{m['postgres']}, load average before {load}.",
        f"{c['arrivals']} arrivals per run (10 % repeated ids), {c['processes']} processes x "
        f"{c['threads']} threads released by one barrier; {c['repeats']} runs per scenario; the "
        "last row sends the same arrivals one at a time (lanes 1x1: no queueing).",
        "",
        "Latencies in ms (p50 / p99 over the requests that assigned). consent = the consent POST "
        "through the test client; assign = `assign_participant` inside it, lock waits included; "
        "burst done = barrier to consent response, every arrival.",
        "",
        "| scenario | run | lanes | consent p50 / p99 | assign p50 / p99 | burst done p50 / p99 "
        "| wall s | participants / ids | shared positions | max imbalance per stratum |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["scenarios"]:
        lines.append(
            f"| {r['scenario']} | {r['repeat']} | {r['lanes']} | {r['consent_ms']['p50']} / "
            f"{r['consent_ms']['p99']} | {r['assign_ms']['p50']} / {r['assign_ms']['p99']} | "
            f"{r['burst_done_ms']['p50']} / {r['burst_done_ms']['p99']} | {r['wall_s']} | "
            f"{r['participants']} / {r['distinct_ids']} | {r['shared_positions']} | "
            f"{r['max_imbalance']:g} |"
        )
    lines += ["", "Counts per stratum (first run of each scenario):", ""]
    seen = set()
    for r in report["scenarios"]:
        if r["scenario"] in seen:
            continue
        seen.add(r["scenario"])
        for stratum, counts in r["counts"].items():
            lines.append(f"- {r['scenario']} `{stratum}`: {counts}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
