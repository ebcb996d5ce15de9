"""Prometheus figures of the model client (plain Python; the web process serves them at /metrics).

Label values stay few: `endpoint` is the endpoint's name, `outcome` a fixed word (`completed`,
`interrupted`, or a ModelCallError kind).
"""

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

# Time to first token runs from tenths of a second (warm GPU) to tens (queued CPU server).
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
# Inter-token gaps: ~5-50 ms on a GPU, up to a few hundred ms on CPU or under load.
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1)

model_requests_total = Counter(
    "collabllm_model_requests_total",
    "Model replies by endpoint and outcome.",
    ["endpoint", "outcome"],
)
model_ttft_seconds = Histogram(
    "collabllm_model_ttft_seconds",
    "Seconds from sending a request to the first streamed token.",
    ["endpoint"],
    buckets=TTFT_BUCKETS,
)
model_inter_token_seconds = Histogram(
    "collabllm_model_inter_token_seconds",
    "Mean seconds between streamed tokens after the first, one observation per reply.",
    ["endpoint"],
    buckets=ITL_BUCKETS,
)
model_completion_tokens_total = Counter(
    "collabllm_model_completion_tokens_total",
    "Completion tokens the model servers reported.",
    ["endpoint"],
)
model_streams_in_flight = Gauge(
    "collabllm_model_streams_in_flight",
    "Replies streaming now (summed over the live processes in multiprocess mode).",
    ["endpoint"],
    multiprocess_mode="livesum",
)
chat_turns_total = Counter(
    "collabllm_chat_turns_total",
    "Assistant turns ended, by outcome (completed, failed, interrupted).",
    ["outcome"],
)

# A reply's relay keeps going through Redis and PostgreSQL blips; these count what it rode out.
relay_errors_total = Counter(
    "collabllm_relay_errors_total",
    "Failed steps of a running reply's relay, retried with backoff, by step "
    "(publish, checkpoint, liveness, final_write, hold; final_write_gave_up: a finished "
    "reply no longer retried after CHAT_HOLD_SECONDS).",
    ["step"],
)
relay_restarts_total = Counter(
    "collabllm_relay_restarts_total",
    "Relay loops of a running reply that crashed and were restarted, by loop.",
    ["loop"],
)
replies_held_total = Counter(
    "collabllm_replies_held_total",
    "Finished replies held in Redis because the database refused the final write.",
)


def observe_reply(
    endpoint: str,
    outcome: str,
    ttft: float | None = None,
    itl: float | None = None,
    tokens: int | None = None,
) -> None:
    """Record one finished model reply: its outcome, first-token and inter-token times, tokens."""
    model_requests_total.labels(endpoint, outcome).inc()
    turn = outcome if outcome in ("completed", "interrupted") else "failed"
    chat_turns_total.labels(turn).inc()
    if ttft is not None:
        model_ttft_seconds.labels(endpoint).observe(ttft)
    if itl is not None:
        model_inter_token_seconds.labels(endpoint).observe(itl)
    if tokens:
        model_completion_tokens_total.labels(endpoint).inc(tokens)


def inter_token_seconds(duration: float, ttft: float | None, tokens: int | None) -> float | None:
    """Mean gap between tokens after the first, from a reply's totals; None when unknowable."""
    if ttft is None or not tokens or tokens < 2:
        return None
    return max(duration - ttft, 0.0) / (tokens - 1)


@contextmanager
def stream_in_flight(endpoint: str) -> Iterator[None]:
    """Count a reply as in flight for the duration of the block."""
    gauge = model_streams_in_flight.labels(endpoint)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()
