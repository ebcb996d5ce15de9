"""Statistics over the turns: nearest-rank percentiles, a phase's summary, platform minus direct."""

from __future__ import annotations

from typing import Any

from benchmarks.stream.clients import Turn
from benchmarks.stream.config import Config

# The direct path counts as a sound baseline only while it keeps up (see baseline_ok).
BASELINE_MAX_P99_MS = 10.0
BASELINE_MAX_LAG_MS = 25.0


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
