"""The report: the design targets with their measured values, and the markdown tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.stream.config import RESULTS
from benchmarks.stream.stats import BASELINE_MAX_LAG_MS, BASELINE_MAX_P99_MS

# Targets (DESIGN.md budget for the relay); compared against the newest-token-per-frame latency.
TARGET_ADDED_P99_MS = {50: 5.0, 200: 20.0}
TARGET_ADDED_TTFT_P50_MS = 10.0
TARGET_WRITE_COMMITS_PER_TURN = 4.0


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


def _webs(cfg: dict[str, Any]) -> str:
    n = cfg.get("web_processes", 1)
    return "web process" if n == 1 else f"{n} web processes (the clients spread over them)"


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
        f"{_webs(cfg)}, PostgreSQL, Redis and the clients all share these CPUs.",
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
