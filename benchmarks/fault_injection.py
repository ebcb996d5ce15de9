"""Fault injection, long form: simulated participants chat through hundreds of injected faults.

Run from the repository root (about 10-15 minutes for 300 faults on a 2-core machine):

    .venv/bin/python benchmarks/fault_injection.py --faults 300
    .venv/bin/python benchmarks/fault_injection.py --faults 40 --participants 3 --tag quick

It starts everything it needs itself (tests/faults/harness.py): a PostgreSQL cluster of its own in
a temporary directory (never the machine's server), a Redis, the fault-injecting fake model and
two web processes, takes the participants to the chat with the pilot driver, injects faults (kill
-9 a web process, restart Redis, restart PostgreSQL, drop sockets, stall/drop/500/malformed model
streams, duplicate sends, retries and ratings) while they chat, then audits what every participant
sent and saw against the database. Results: benchmarks/results/fault_injection[-TAG].json (every
count and finding) and .md (the table); benchmarks/README.md explains the columns. Exits 1 when
anything was silently lost, truncated or duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.benchdb import git_commit  # noqa: E402
from tests.faults.harness import FaultConfig, fault_run, report_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=300)
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--tag", default="")
    parser.add_argument("--keep-dir", action="store_true", help="keep logs and the database")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

    config = FaultConfig(
        faults=args.faults,
        participants=args.participants,
        interval=args.interval,
        seed=args.seed,
        max_seconds=args.max_seconds,
        keep_dir=args.keep_dir,
    )
    report = asyncio.run(fault_run(config))
    report["run"] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "python": platform.python_version(),
    }
    table = report_table(report)
    print(table)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = "fault_injection" + (f"-{args.tag}" if args.tag else "")
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        run = report["run"]
        header = (
            f"# Fault injection ({run['date']}, commit {run['commit']}, {run['machine']})\n\n"
            f"`{' '.join(['benchmarks/fault_injection.py', *sys.argv[1:]])}`\n\n"
        )
        (RESULTS / f"{name}.md").write_text(header + "```\n" + table + "\n```\n")
    audit = report["audit"]
    if audit["silently_lost"] or audit["truncated"] or audit["duplicated"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
