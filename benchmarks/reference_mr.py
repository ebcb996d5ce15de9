"""Reference MR throughput: the PyPI `collabllm` 0.0.8 package computing Multiturn-aware Rewards
against a local OpenAI-compatible server, for a side-by-side run with training/pipeline/mr.py.

    scripts/reference_env.sh      # builds .venv-ref once
    .venv-ref/bin/python benchmarks/reference_mr.py --base-url http://127.0.0.1:8811/v1 \
        --model smollm2 --w 1 --samples 3 --candidates 2 --max-tokens 128 --count 4 \
        --concurrency 1 --out benchmarks/results/reference_mr-c1.json

What it does, in order:
1. Sets the environment the reference needs offline, then imports it (collabllm creates
   RUN_USER_DIR at import, litellm fetches a cost map at import unless told not to, and the token
   metric's tiktoken encoding is read from .local/tiktoken-cache, filled by the env script).
2. Registers two metrics of our own with the reference's registry
   (`SingleTurnOrChatMetric.register_metric`): `bleu` (used as "document->bleu", so the reference
   first asks the extractor LLM for the final document) and `token_amount` (assistant tokens in
   thousands, cl100k_base, unclamped: the reference's convention; weight --token-weight).
3. Builds (history, candidate) pairs from the document tasks (the project's taskset file when it
   exists, else three inline tasks): per history the reference's own simulator writes the first
   user message and --candidates assistant replies (ChatSessionSimulator.run_chat_simulation, as
   its generate_multiturn_dataset does). This preparation is timed and counted separately.
   With --pairs FILE it is skipped: the histories and candidates are read from FILE (a JSON list
   of {"task": {id, description, goal, reference, ...}, "history": [...], "candidates": [...]},
   as benchmarks/mr_throughput.py writes it), so another driver can score exactly the same pairs.
4. Times --count calls of collabllm.reward.multiturn_aware_reward, --concurrency of them at once
   from an outer thread pool (1 = one MR at a time, as the reference's own scripts use it). A
   crashed MR is retried up to --attempts times in all; every failed attempt is reported.

Every litellm.completion call is counted (per role, per MR attempt) by a wrapper around
litellm.completion; the role and attempt ride along as two private kwargs that the wrapper strips
before litellm sees them. The user simulator and extractor are constrained with response_format
(json_schema for vLLM, json_object + schema for the llama.cpp server) and a maxLength on every
string; the assistant is never constrained. Server-side token and request counters come from
vLLM's /metrics when it has one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TASKSET = ROOT / "training" / "pipeline" / "tasksets" / "document.jsonl"
TIKTOKEN_CACHE = ROOT / ".local" / "tiktoken-cache"
ROLE_KEY = "_refbench_role"  # private kwargs: stripped by the counting wrapper
TAG_KEY = "_refbench_tag"
SIGNAL = "[[TERMINATE CHAT]]"

# Used until training/pipeline/tasksets/document.jsonl exists: short goal documents.
INLINE_TASKS = [
    {
        "id": "inline-doc-1",
        "description": "a short blog post about starting a balcony vegetable garden",
        "goal": "A blog post for beginners on growing vegetables on a small balcony.",
        "reference": (
            "Growing food on a balcony is easier than it looks. Start with three containers, a "
            "bag of potting mix and plants that forgive mistakes: cherry tomatoes, lettuce and "
            "basil. Put the pots where they get at least six hours of sun, water in the morning, "
            "and feed them every two weeks. Within a month you will pick your first salad."
        ),
    },
    {
        "id": "inline-doc-2",
        "description": "a personal statement for a master's programme in data science",
        "goal": "A personal statement that links a career in logistics to data science study.",
        "reference": (
            "Five years of planning delivery routes taught me that every late truck hides a "
            "pattern. I began writing small scripts to find those patterns and cut our empty "
            "miles by twelve percent. I now want the statistics and machine learning that turn "
            "such scripts into reliable tools, and your programme's focus on applied projects is "
            "the place to learn them."
        ),
    },
    {
        "id": "inline-doc-3",
        "description": "a short story about a lighthouse keeper's last night on duty",
        "goal": "A quiet short story, under 120 words, ending with the light being automated.",
        "reference": (
            "Mara climbed the hundred and twelve steps one last time. She polished the lens as "
            "she had every evening for thirty years, though tomorrow a machine would do it. At "
            "midnight a ship passed and flashed its lamp twice, a thank you from someone she would "
            "never meet. At dawn she switched the light to automatic, wrote 'all well' in the log, "
            "and walked down to the boat without looking back."
        ),
    },
]


# --------------------------------------------------------------------------- environment
def prepare_environment(scratch: Path) -> None:
    """What the reference needs before its import: quiet, offline, a scratch run folder."""
    os.environ["ENABLE_COLLABLLM_LOGGING"] = "0"
    os.environ["RUN_USER_DIR"] = str(scratch / "run")
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LITELLM_OFFLINE_MODE"] = "true"
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


# --------------------------------------------------------------------------- tasks and schemas
def load_tasks(limit_kind: str = "document") -> tuple[list[dict[str, str]], str]:
    """Document tasks from the project's taskset when present, else the inline ones."""
    if TASKSET.is_file():
        tasks = []
        for line in TASKSET.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("kind", limit_kind) == limit_kind:
                    tasks.append(row)
        if tasks:
            return tasks, str(TASKSET.relative_to(ROOT))
    return INLINE_TASKS, "inline"


def string_schema(fields: dict[str, int]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {k: {"type": "string", "maxLength": n} for k, n in fields.items()},
        "required": list(fields),
        "additionalProperties": False,
    }


def response_format(mode: str, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    if mode == "json_schema":  # vLLM (guided_json is silently ignored by vLLM 0.32)
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    return {"type": "json_object", "schema": schema}  # the llama.cpp server


def default_lengths(max_tokens: int) -> dict[str, dict[str, int]]:
    """maxLength per string field, sized so a constrained reply fits in max_tokens.

    2.5 characters a token: the grammar lets the model pad the JSON with whitespace and SmolLM2's
    free text tokenizes poorly, so at 3 a 128-token reply was sometimes cut (finish "length").
    """
    budget = max(60, 5 * max_tokens // 2)
    return {
        "user": {
            "current_answer": budget * 15 // 100,
            "thought": budget * 25 // 100,
            "response": budget * 50 // 100,
        },
        "extractor": {"thought": budget * 20 // 100, "final_completion": budget * 70 // 100},
    }


def load_pairs(path: Path) -> list[dict[str, Any]]:
    """Histories with their candidates, as written by benchmarks/mr_throughput.py."""
    entries = json.loads(path.read_text(encoding="utf-8"))
    for i, entry in enumerate(entries):
        task, history, candidates = entry.get("task"), entry.get("history"), entry.get("candidates")
        if not (isinstance(task, dict) and {"description", "goal", "reference"} <= task.keys()):
            raise ValueError(f"{path}: entry {i} has no task with description, goal, reference")
        if not (isinstance(history, list) and history and history[-1].get("role") == "user"):
            raise ValueError(f"{path}: entry {i}: history must end with a user message")
        if not (isinstance(candidates, list) and all(isinstance(c, str) for c in candidates)):
            raise ValueError(f"{path}: entry {i}: candidates must be a list of strings")
    return entries


# --------------------------------------------------------------------------- call counting
class CallLog:
    """Counts every litellm.completion call by role and by MR attempt (thread-safe)."""

    def __init__(self, extract_json: Any) -> None:
        self.lock = threading.Lock()
        self.extract_json = extract_json
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.bad_json: Counter[str] = Counter()
        self.truncated: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.prompt_tokens: Counter[str] = Counter()
        self.completion_tokens: Counter[str] = Counter()
        self.by_tag: Counter[str] = Counter()
        self.error_samples: list[str] = []

    def wrap(self, completion: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            role = kwargs.pop(ROLE_KEY, "untagged")
            tag = kwargs.pop(TAG_KEY, None)
            start = time.perf_counter()
            try:
                response = completion(*args, **kwargs)
            except Exception as error:
                with self.lock:
                    self.calls[role] += 1
                    self.errors[role] += 1
                    if tag:
                        self.by_tag[tag] += 1
                    if len(self.error_samples) < 20:
                        self.error_samples.append(f"{role}: {type(error).__name__}: {error}"[:300])
                raise
            self.record(role, tag, response, time.perf_counter() - start)
            return response

        return counted

    def record(self, role: str, tag: str | None, response: Any, seconds: float) -> None:
        choice = response.choices[0]
        text = choice.message.content
        bad = False
        if role in ("user", "extractor"):
            keys = {
                "user": {"current_answer", "thought", "response"},
                "extractor": {"thought", "final_completion"},
            }[role]
            try:
                payload = self.extract_json(text) if isinstance(text, str) else text
                bad = not (isinstance(payload, dict) and keys <= payload.keys())
            except Exception:
                bad = True
        usage = getattr(response, "usage", None)
        with self.lock:
            self.calls[role] += 1
            if tag:
                self.by_tag[tag] += 1
            self.latency[role].append(seconds)
            self.bad_json[role] += bad
            self.truncated[role] += choice.finish_reason == "length"
            if usage is not None:
                self.prompt_tokens[role] += usage.prompt_tokens or 0
                self.completion_tokens[role] += usage.completion_tokens or 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            roles = sorted(self.calls)
            return {
                "calls": sum(self.calls.values()),
                "by_role": {
                    r: {
                        "calls": self.calls[r],
                        "errors": self.errors[r],
                        "unparsable_json": self.bad_json[r],
                        "truncated": self.truncated[r],
                        "mean_latency_s": _round(_mean(self.latency[r])),
                        "prompt_tokens": self.prompt_tokens[r],
                        "completion_tokens": self.completion_tokens[r],
                    }
                    for r in roles
                },
                "prompt_tokens": sum(self.prompt_tokens.values()),
                "completion_tokens": sum(self.completion_tokens.values()),
                "error_samples": list(self.error_samples),
            }


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------- our metrics
def register_metrics(registry: Any, base_metric: Any) -> None:
    """A document BLEU (scored on the extractor's output) and an assistant-token amount."""
    import tiktoken
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    words = re.compile(r"\w+|[^\w\s]")
    smoothing = SmoothingFunction().method1

    @registry.register_metric("bleu")
    class DocumentBleu(base_metric):
        """Sentence BLEU (nltk, smoothed) of the extracted document against the goal document."""

        def __init__(self, **_llm_kwargs: Any) -> None:  # the registry passes the LLM kwargs
            pass

        def score(self, prompt, groundtruth, completion, messages=None, metadata=None) -> float:
            hypothesis = words.findall((completion or "").lower())
            reference = words.findall((groundtruth or "").lower())
            if not hypothesis or not reference:
                return 0.0
            return float(sentence_bleu([reference], hypothesis, smoothing_function=smoothing))

    encoding = tiktoken.get_encoding("cl100k_base")  # from TIKTOKEN_CACHE_DIR, never downloaded

    @registry.register_metric("token_amount")
    class AssistantTokens(base_metric):
        """Thousands of cl100k_base tokens the user reads (assistant messages), unclamped."""

        def __init__(self, **_llm_kwargs: Any) -> None:
            pass

        def score(self, prompt, groundtruth, completion, messages=None, metadata=None) -> float:
            text = " ".join(m["content"] for m in messages or [] if m["role"] == "assistant")
            return len(encoding.encode(text, disallowed_special=())) / 1000.0


# --------------------------------------------------------------------------- server counters
VLLM_COUNTERS = (
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:prefix_cache_queries_total",  # prompt tokens looked up in the prefix cache
    "vllm:prefix_cache_hits_total",  # of which found there (not recomputed)
)


def server_counters(base_url: str) -> dict[str, float] | None:
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(root + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except Exception:
        return None
    totals: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in VLLM_COUNTERS:
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals or None


# --------------------------------------------------------------------------- the run
class PreparationError(RuntimeError):
    """The reference's simulator could not write a history's first message or candidates."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="OpenAI-compatible root, ending in /v1")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--w", type=int, default=1, help="future turns per rollout (user + assistant)")
    p.add_argument("--samples", type=int, default=3, help="S, rollouts per MR")
    p.add_argument("--candidates", type=int, default=2, help="candidate replies per history")
    p.add_argument("--max-tokens", type=int, default=128, help="per call, every role")
    p.add_argument("--count", type=int, default=4, help="MR computations to time")
    p.add_argument("--concurrency", type=int, default=1, help="MR computations in flight")
    p.add_argument("--attempts", type=int, default=3, help="tries per MR (a crash loses it all)")
    p.add_argument(
        "--json-mode",
        choices=("json_schema", "json_object"),
        default="json_schema",
        help="json_schema for vLLM, json_object (+schema) for the llama.cpp server",
    )
    p.add_argument(
        "--token-weight",
        type=float,
        default=-0.1,
        help="weight of token_amount (k-tokens): -0.1 = lambda 1e-4 per token",
    )
    p.add_argument("--user-temperature", type=float, default=1.0)  # reference's defaults
    p.add_argument("--assistant-temperature", type=float, default=0.8)
    p.add_argument(
        "--extractor-temperature",
        type=float,
        default=None,
        help="unset: the server's default, as the reference leaves it",
    )
    p.add_argument("--max-workers", type=int, default=8, help="reference's simulation threads")
    p.add_argument("--max-metric-workers", type=int, default=16, help="reference's metric threads")
    p.add_argument("--timeout", type=float, default=600.0, help="per model call, seconds")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--pairs",
        type=Path,
        default=None,
        help="score the (task, history, candidates) entries of this JSON file; no preparation",
    )
    args = p.parse_args(argv)
    for name in ("w", "samples", "candidates", "max_tokens", "count", "concurrency", "attempts"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="reference-mr-"))
    prepare_environment(scratch)
    try:
        report = run(args)
    except PreparationError as error:
        print(f"reference MR: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    r = report["results"]
    print(
        f"reference MR: {r['mr_ok']}/{args.count} ok, {r['failed_attempts']} failed attempts, "
        f"{r['mr_per_min']} MR/min, {r['seconds_per_mr']} s/MR, "
        f"{r['calls_per_mr']} calls/MR, wall {r['wall_s']} s -> {args.out}"
    )
    return 0 if r["mr_ok"] == args.count else 1


def run(args: argparse.Namespace) -> dict[str, Any]:
    # Imported only now: the environment above must be in place first.
    import collabllm.metric as ref_metric
    import litellm
    from collabllm.reward import multiturn_aware_reward
    from collabllm.simulation import ChatSessionSimulator
    from collabllm.utils.extract_json_reliable import extract_json

    log = CallLog(extract_json)
    litellm.completion = log.wrap(litellm.completion)  # the reference calls litellm.completion
    register_metrics(ref_metric.SingleTurnOrChatMetric, ref_metric.BaseMetric)

    lengths = default_lengths(args.max_tokens)
    endpoint = {
        "model": f"openai/{args.model}",
        "api_base": args.base_url,
        "api_key": "none",
        "max_tokens": args.max_tokens,
        "timeout": args.timeout,
    }
    user_format = response_format(args.json_mode, "user_simulator", string_schema(lengths["user"]))
    extractor_format = response_format(
        args.json_mode, "extractor", string_schema(lengths["extractor"])
    )

    def kwargs_for(tag: str) -> dict[str, dict[str, Any]]:
        extractor = {
            **endpoint,
            "response_format": extractor_format,
            ROLE_KEY: "extractor",
            TAG_KEY: tag,
        }
        if args.extractor_temperature is not None:
            extractor["temperature"] = args.extractor_temperature
        return {
            "user": {
                **endpoint,
                "temperature": args.user_temperature,
                "response_format": user_format,
                ROLE_KEY: "user",
                TAG_KEY: tag,
            },
            "assistant": {
                **endpoint,
                "temperature": args.assistant_temperature,
                ROLE_KEY: "assistant",
                TAG_KEY: tag,
            },
            "extractor": extractor,
        }

    if args.pairs is not None:
        histories = load_pairs(args.pairs)
        tasks = [h["task"] for h in histories]
        task_source = str(args.pairs)
        n_histories = len(histories)
        prep: dict[str, Any] = {"histories": n_histories, "seconds": 0.0, "calls": 0}
        prep["source"] = f"--pairs {args.pairs}"
    else:
        tasks, task_source = load_tasks()
        n_histories = math.ceil(args.count / args.candidates)

    # --- preparation: first user message and candidate replies, by the reference's simulator
    def prepare(j: int) -> dict[str, Any]:
        task = tasks[j % len(tasks)]
        kw = kwargs_for(f"prep-{j}")
        common = {
            "task_desc": task["description"],
            "single_turn_prompt": task["goal"],
            "assistant_generation_kwargs": kw["assistant"],
            "user_generation_kwargs": kw["user"],
            "verbose": False,
        }
        last: Exception | None = None
        for _ in range(args.attempts):
            try:
                sim = ChatSessionSimulator()
                first = sim.run_chat_simulation(
                    **common, chat_history=[], num_samples=1, max_new_turns=1, max_workers=1
                )[0][-1]
                history = [{"role": "user", "content": first["content"]}]
                replies = sim.run_chat_simulation(
                    **common,
                    chat_history=history,
                    num_samples=args.candidates,
                    max_new_turns=1,
                    max_workers=args.max_workers,
                )
                return {
                    "task": task,
                    "history": history,
                    "candidates": [r[-1]["content"] for r in replies],
                }
            except Exception as error:  # the reference's simulator can crash; try again
                last = error
        raise PreparationError(f"could not prepare history {j} in {args.attempts} tries: {last!r}")

    server_before = server_counters(args.base_url)
    if args.pairs is None:
        prep_start = time.perf_counter()
        prep_calls_before = log.snapshot()["calls"]
        with ThreadPoolExecutor(max_workers=max(args.concurrency, 1)) as pool:
            histories = list(pool.map(prepare, range(n_histories)))
        prep = {
            "histories": n_histories,
            "seconds": round(time.perf_counter() - prep_start, 3),
            "calls": log.snapshot()["calls"] - prep_calls_before,
        }
    pairs = [(h, c) for h in histories for c in h["candidates"]][: args.count]

    # --- the timed part: count MR computations, concurrency at once
    metric_names = ["document->bleu", "token_amount"]
    metric_weights = [1.0, args.token_weight]
    attempts_log: list[dict[str, Any]] = []
    attempts_lock = threading.Lock()

    def one_mr(slot: int) -> dict[str, Any]:
        pair, candidate = pairs[slot]
        task = pair["task"]
        for attempt in range(1, args.attempts + 1):
            tag = f"mr-{slot}-{attempt}"
            kw = kwargs_for(tag)
            start = time.perf_counter()
            record: dict[str, Any] = {"slot": slot, "attempt": attempt, "task": task.get("id")}
            try:
                rewards, sessions = multiturn_aware_reward(
                    task_desc=task["description"],
                    single_turn_prompt=task["goal"],
                    single_turn_completion=task["reference"],
                    metric_names=metric_names,
                    reward_generation_kwargs=kw["extractor"],
                    metadata={},  # None crashes "x->metric" signatures in 0.0.8
                    metric_weights=metric_weights,
                    max_metric_workers=args.max_metric_workers,
                    return_details=True,
                    chat_history=[*pair["history"], {"role": "assistant", "content": candidate}],
                    assistant_generation_kwargs=kw["assistant"],
                    user_generation_kwargs=kw["user"],
                    num_samples=args.samples,
                    max_new_turns=2 * args.w,  # counts messages: 2 = one user + one assistant
                    max_workers=args.max_workers,
                    verbose=False,
                )
                record.update(
                    ok=True,
                    mr=statistics.fmean(rewards["MR"]),
                    bleu=statistics.fmean(rewards["document->bleu"]),
                    token_amount_k=statistics.fmean(rewards["token_amount"]),
                    future_messages=[len(s) - len(pair["history"]) - 1 for s in sessions],
                    terminated=sum(
                        SIGNAL in s[-1]["content"] for s in sessions if s[-1]["role"] == "user"
                    ),
                )
            except Exception as error:  # the reference loses every rollout of this MR
                record.update(
                    ok=False,
                    error=f"{type(error).__name__}: {error}"[:300],
                    where=traceback.extract_tb(error.__traceback__)[-1].name,
                )
            record["seconds"] = round(time.perf_counter() - start, 3)
            record["calls"] = log.by_tag[tag]
            with attempts_lock:
                attempts_log.append(record)
            if record["ok"]:
                return record
        return record

    calls_before = log.snapshot()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        finals = list(pool.map(one_mr, range(len(pairs))))
    wall = time.perf_counter() - start
    calls_after = log.snapshot()
    server_after = server_counters(args.base_url)

    ok = [r for r in finals if r["ok"]]
    failed = [r for r in attempts_log if not r["ok"]]
    timed_calls = calls_after["calls"] - calls_before["calls"]
    prompt_tokens = calls_after["prompt_tokens"] - calls_before["prompt_tokens"]
    completion_tokens = calls_after["completion_tokens"] - calls_before["completion_tokens"]
    server = None
    if server_before and server_after:
        delta = {k: server_after.get(k, 0.0) - server_before.get(k, 0.0) for k in VLLM_COUNTERS}
        server = {
            "note": "vLLM /metrics deltas over preparation and timed part together",
            **{k.removeprefix("vllm:"): v for k, v in delta.items()},
        }

    return {
        "implementation": "reference: PyPI collabllm 0.0.8, multiturn_aware_reward",
        "parameters": {
            "base_url": args.base_url,
            "model": args.model,
            "w": args.w,
            "max_new_turns": 2 * args.w,
            "samples": args.samples,
            "candidates": args.candidates,
            "max_tokens": args.max_tokens,
            "count": args.count,
            "pairs": len(pairs),
            "concurrency": args.concurrency,
            "attempts_per_mr": args.attempts,
            "metrics": dict(zip(metric_names, metric_weights, strict=True)),
            "token_amount": "assistant tokens / 1000 (cl100k_base), unclamped",
            "json_mode": args.json_mode,
            "max_length": lengths,
            "temperatures": {
                "user": args.user_temperature,
                "assistant": args.assistant_temperature,
                "extractor": args.extractor_temperature,
            },
            "reference_max_workers": args.max_workers,
            "reference_max_metric_workers": args.max_metric_workers,
            "timeout_s": args.timeout,
            "tasks": task_source,
            "n_tasks": len(tasks),
        },
        "versions": versions(),
        "preparation": prep,
        "results": {
            "mr_ok": len(ok),
            "mr_lost": len(finals) - len(ok),
            "attempts": len(attempts_log),
            "failed_attempts": len(failed),
            "wall_s": round(wall, 3),
            "mr_per_min": round(len(ok) / wall * 60, 3) if ok else 0.0,
            "seconds_per_mr": round(wall / len(ok), 3) if ok else None,
            "mean_mr_latency_s": _round(_mean([r["seconds"] for r in ok])),
            "max_mr_latency_s": _round(max((r["seconds"] for r in ok), default=None)),
            "calls_per_mr": _round(_mean([r["calls"] for r in ok]), 2),
            "timed_calls": timed_calls,
            "timed_calls_per_ok_mr": round(timed_calls / len(ok), 2) if ok else None,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_per_s": round(prompt_tokens / wall, 1),
            "completion_tokens_per_s": round(completion_tokens / wall, 1),
            "mean_mr": _round(_mean([r["mr"] for r in ok]), 4),
            "mean_bleu": _round(_mean([r["bleu"] for r in ok]), 4),
        },
        "calls": calls_after,
        "server": server,
        "failures": failed,
        "mr": sorted(attempts_log, key=lambda r: (r["slot"], r["attempt"])),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("collabllm", "litellm", "transformers", "torch", "nltk", "tiktoken"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


if __name__ == "__main__":
    sys.exit(main())
