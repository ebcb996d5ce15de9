"""Report at scale: `build_report` on a synthetic study of 10 000 participants, 1 000 000 messages.

Run from the repository root (about a minute on a 2-core machine; no database needed):

    .venv/bin/python benchmarks/analysis_report.py
    .venv/bin/python benchmarks/analysis_report.py --participants 10000 --messages 1000000 \\
        --repeats 3 --checkpoints 3 6 9

What it does: `analysis.synthetic.synthetic_study(messages=True)` with three arms, as many turns
per participant as make --messages messages (user + assistant rows), and a blocking rating every
3 turns; `analysis.io.write_export` writes every table as Parquet into a temporary directory
(the export half of the issue's benchmark, with synthetic rather than database rows). Then, per
repeat, a fresh `python -c "build_report(...)"` process reports on it with the defaults (2 000
bootstrap resamples, seed 0) while this process waits: wall time of the whole child (interpreter
start and imports included), the time inside `build_report` and per step (from its progress
callback), and the child's peak RSS (`getrusage(RUSAGE_CHILDREN).ru_maxrss`, children only, so
the generator's memory does not count). Targets: <= 30 s and <= 4 GB.
Results: benchmarks/results/analysis_report.{json,md}.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGET_SECONDS, TARGET_BYTES = 30.0, 4 * 1024**3
RATING_EVERY = 3
PAGE = os.sysconf("SC_PAGE_SIZE")
CHILD = """
import json, sys, time
start = time.perf_counter()
from analysis.report import build_report
imported = time.perf_counter()
steps = []
build_report(sys.argv[1], sys.argv[2], workers=json.loads(sys.argv[3]),
             progress=lambda s, f: steps.append((s, time.perf_counter())))
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "build_s": done - imported,
                  "steps": [[s, t - imported] for s, t in steps]}))
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def generate(
    directory: Path, participants: int, messages: int, checkpoints: list[int] | None, seed: int
) -> dict[str, Any]:
    """Write the synthetic export; return its row counts, sizes and the time it took."""
    # Imported here: this runs in its own process (--generate-into), so the measuring process
    # stays small (a child's ru_maxrss starts from its parent's size at fork).
    sys.path.insert(0, str(ROOT))
    from analysis.io import write_export
    from analysis.synthetic import synthetic_study

    # n_user_turns = turns + Poisson(1) and every turn has two messages.
    turns = max(RATING_EVERY, round(messages / participants / 2) - 1)
    if checkpoints is None:
        checkpoints = list(range(RATING_EVERY, turns + 1, RATING_EVERY))
    start = time.perf_counter()
    study = synthetic_study(
        n_per_arm={"base": participants - 2 * (participants // 3), "proactive": participants // 3,
                   "collabllm": participants // 3},
        seed=seed,
        messages=True,
        turns=turns,
        checkpoints=checkpoints,
    )  # fmt: skip
    generated = time.perf_counter()
    write_export(study, directory)
    written = time.perf_counter()
    return {
        "turns_min": turns,
        "checkpoints": checkpoints,
        "rows": {name: len(frame) for name, frame in study.items()},
        "bytes": {p.name: p.stat().st_size for p in sorted(directory.iterdir())},
        "generate_s": generated - start,
        "write_s": written - generated,
    }


def tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants (shared pages counted in each)."""
    parents: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
        rss[int(entry.name)] = int(fields[21]) * PAGE
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += parents.get(pid, [])
    return total


def run_report(export: Path, out: Path, workers: int | None) -> dict[str, Any]:
    """One report in a fresh interpreter: wall time, internal timings and peak memory."""
    stdout, stderr = out.with_suffix(".out"), out.with_suffix(".err")
    start = time.perf_counter()
    with stdout.open("w") as out_file, stderr.open("w") as err_file:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(export), str(out), json.dumps(workers)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out_file,
            stderr=err_file,
        )
    tree_peak, status, usage = 0, 0, None
    while usage is None:
        # wait4 gives this child's own rusage (its ru_maxrss covers the workers it reaped too).
        pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            usage = rusage
        else:
            tree_peak = max(tree_peak, tree_rss(child.pid))
            time.sleep(0.05)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"report failed:\n{stderr.read_text()}")
    inner = json.loads(stdout.read_text().strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_s": wall,
        "tree_rss_peak_bytes": tree_peak,
        "max_rss_bytes": usage.ru_maxrss * 1024,  # kB on Linux
        **inner,
        "n_analysed": summary["sample"]["n_analysed"],
        "n_turn_ratings": summary["sample"]["n_turn_ratings"],
        "outcomes": len(summary["outcomes"]),
        "output_bytes": {
            p.relative_to(out).as_posix(): p.stat().st_size
            for p in sorted(out.rglob("*"))
            if p.is_file()
        },
    }


def markdown(result: dict[str, Any]) -> str:
    runs, machine, export = result["runs"], result["machine"], result["export"]
    best = min(runs, key=lambda r: r["wall_s"])
    mib = 1024**2
    lines = [
        "# analysis_report" + (f" ({result['config']['tag']})" if result["config"]["tag"] else ""),
        "",
        f"{result['date']}, {machine['cpus']} CPUs {machine['cpu']}, Python {machine['python']}, "
        f"load average before {machine['loadavg_before'][0]:.2f}; "
        f"workers: {result['config']['workers'] or 'default'}.",
        "",
        f"Export: {export['rows']['participants']:,} participants, "
        f"{export['rows']['messages']:,} messages, {export['rows']['turn_ratings']:,} turn "
        f"ratings at checkpoints {export['checkpoints']}, {export['rows']['events']:,} events "
        f"(Parquet, {sum(export['bytes'].values()) / mib:.0f} MiB; generated in "
        f"{export['generate_s']:.1f} s, written in {export['write_s']:.1f} s).",
        "",
        "| run | wall s (child) | imports s | build_report s | process tree peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {i + 1} | {r['wall_s']:.1f} | {r['import_s']:.1f} | {r['build_s']:.1f} | "
        f"{r['tree_rss_peak_bytes'] / mib:.0f} |"
        for i, r in enumerate(runs)
    ]
    worst = max(result["peak_rss_bytes"], result["tree_rss_peak_bytes"]) / mib
    lines += [
        "",
        f"Largest single process (ru_maxrss of the report process from wait4, which covers its "
        f"workers): {result['peak_rss_bytes'] / mib:.0f} MiB. Process tree: the report process "
        "plus its workers, RSS summed, sampled every 50 ms (pages shared after fork counted once "
        "per process: an upper bound).",
        "",
        f"Targets: ≤ {TARGET_SECONDS:.0f} s: **{'met' if result['time_met'] else 'missed'}** "
        f"(slowest {max(r['wall_s'] for r in runs):.1f} s); ≤ 4 GB: "
        f"**{'met' if result['memory_met'] else 'missed'}** ({worst:.0f} MiB).",
        "",
        f"Steps of the fastest run (seconds since imports, cumulative, in completion order; "
        f"{best['outcomes']} outcomes, {best['n_analysed']:,} participants analysed):",
        "",
        "| step | s |",
        "|---|---|",
    ]
    lines += [f"| {step} | {t:.2f} |" for step, t in best["steps"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoints", type=int, nargs="+", help="rating checkpoints (default: every 3 turns)"
    )
    parser.add_argument("--workers", type=int, help="build_report's workers (default: its own)")
    parser.add_argument("--tag", help="suffix for the results files")
    parser.add_argument("--no-write", action="store_true", help="print, do not save results")
    parser.add_argument("--generate-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_into:
        meta = generate(
            args.generate_into, args.participants, args.messages, args.checkpoints, args.seed
        )
        print(json.dumps(meta))
        return
    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="analysis_report-") as tmp:
        generator = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--generate-into", str(Path(tmp) / "export")],
            capture_output=True,
            text=True,
            check=True,
        )
        export = json.loads(generator.stdout.strip().splitlines()[-1])
        runs = [
            run_report(Path(tmp) / "export", Path(tmp) / f"report-{i}", args.workers)
            for i in range(args.repeats)
        ]
    peak = max(r["max_rss_bytes"] for r in runs)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "loadavg_before": loadavg,
        },
        "config": {k: v for k, v in vars(args).items() if k != "generate_into"},
        "export": export,
        "runs": runs,
        "peak_rss_bytes": peak,
        "time_met": max(r["wall_s"] for r in runs) <= TARGET_SECONDS,
        "tree_rss_peak_bytes": max(r["tree_rss_peak_bytes"] for r in runs),
        "memory_met": max(peak, *(r["tree_rss_peak_bytes"] for r in runs)) <= TARGET_BYTES,
    }
    text = markdown(result)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        name = "analysis_report" + (f"-{args.tag}" if args.tag else "")
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(text)


if __name__ == "__main__":
    main()
