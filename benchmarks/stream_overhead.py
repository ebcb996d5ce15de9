"""Stream overhead: the latency the platform adds to each streamed token, and what it costs.

Run from the repository root (about 4 minutes on a 2-core machine; `make bench` runs it too):

    .venv/bin/python benchmarks/stream_overhead.py
    .venv/bin/python benchmarks/stream_overhead.py --clients 50 --turns 3 --tokens 64 --delay-ms 25

It needs PostgreSQL and Redis: DATABASE_URL and REDIS_URL name the servers (defaults: the machine's
postgres://postgres@127.0.0.1:5432 and redis://127.0.0.1:6379/9). It always uses its own database
on that server, `collabllm_bench` or the one --database names (created if missing, then migrated),
so the commit counters see nothing but the benchmark.

What it does: starts a fake model whose every token is the text `<t:{time.time_ns()}> ` (its
emission time), one web process (uvicorn, as in production; --web-processes N starts N, and the
clients are spread over them) and, per token gap (--delay-ms) and N (--clients), N participants
already at the chat step. Platform path: N websocket clients each send
--turns turns and time every token seen in a `delta` frame (or only in the final `complete` frame)
against its emission time. Direct path: N clients stream the same fake with httpx. The difference
is what the platform adds. Results: benchmarks/results/stream_overhead-<date>.json (raw) and
benchmarks/results/stream_overhead.md (tables); benchmarks/README.md explains every column.

This file is the command; the benchmark's parts are in benchmarks/stream/ (the harness, the
stamped fake model, the clients, the counters and the report; see its __init__.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.stream.config import BENCH_DB, DEFAULT_REDIS_URL, Config, say  # noqa: E402
from benchmarks.stream.counters import wait_until_quiet  # noqa: E402
from benchmarks.stream.database import DB_CONNECTIONS, bench_database_url  # noqa: E402
from benchmarks.stream.harness import benchmark  # noqa: E402
from benchmarks.stream.processes import Children  # noqa: E402
from benchmarks.stream.report import markdown, write_report  # noqa: E402
from benchmarks.stream.stamped_model import serve_fake  # noqa: E402


def _at_least_one(text: str) -> int:
    """A whole number of at least 1 (argparse says which option and why otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


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
    add("--web-processes", type=_at_least_one, default=1, help="web processes; clients spread")
    add("--database", default=BENCH_DB, help="the benchmark's own database on that server")
    add("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    add("--fake-port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    return Config(
        clients=args.clients, turns=args.turns, tokens=args.tokens, delays=args.delay_ms,
        warmup=args.warmup, ramp_s=args.ramp_s, think_ms=args.think_ms,
        turn_timeout=args.turn_timeout, phase_timeout=args.phase_timeout,
        frame_interval=args.frame_interval,
        database_url=bench_database_url(os.environ.get("DATABASE_URL"), args.database),
        redis_url=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        write=not args.no_write, db_connections=args.db_connections,
        web_processes=args.web_processes,
    )  # fmt: skip


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


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
    if any(level["platform"]["errors"] for level in report["results"]):
        say(f"some turns failed; the processes' logs are kept in {children.logs}")
    else:
        shutil.rmtree(children.logs, ignore_errors=True)
    print(markdown(report))
    if cfg.write:
        for path in write_report(report, args.tag):
            say(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
