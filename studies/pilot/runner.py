"""Pilot runs: N simulated participants at concurrency C against a running site, and their report.

The drivers only speak HTTP and the websocket, so a pilot is also the platform's load generator:
`pilot_run` touches no database; `pilot_plan`, `simulator_for` and `pilot_record` read and write
it before and after.
"""

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from django.conf import settings

from models_serving.client import close_clients
from studies.models import Condition, ModelEndpoint, Study
from studies.pilot.driver import STEPS, ParticipantRun, PilotPlan, TaskInfo, participant_run
from studies.pilot.simulator import UserSimulator
from studies.services.access import access_link
from studies.services.endpoints import endpoint_client_spec
from studies.services.events import event_record

MAX_MESSAGES_PER_STEP = 5


def pilot_plan(
    study: Study, *, base_url: str, seed: int = 0, frame_timeout: float = 180.0
) -> PilotPlan:
    """Everything the simulated participants need to know, read once from the database."""
    tasks = {
        str(t.pk): TaskInfo(t.get_document_type_display().lower(), t.topic, t.brief)
        for t in study.tasks.all()
    }
    return PilotPlan(
        base_url=base_url.rstrip("/"),
        slug=study.slug,
        entry_path=access_link(study, "pilot"),
        tasks=tasks,
        comprehension_answers=_answers(study.comprehension_questions),
        attention_answers=_answers(study.attention_checks),
        seed=seed,
        frame_timeout=frame_timeout,
    )


def _answers(questions: list) -> tuple[int, ...]:
    return tuple(int(q.get("answer", 0)) if isinstance(q, dict) else 0 for q in questions)


def simulator_for(study: Study, *, endpoint_name: str | None = None) -> tuple[str, UserSimulator]:
    """The simulator on the named endpoint, else on the endpoint of the study's first active arm."""
    if endpoint_name:
        endpoint = ModelEndpoint.objects.get(name=endpoint_name)
        model = endpoint.served_model
    else:
        arm = (
            Condition.objects.select_related("endpoint")
            .filter(study=study, is_active=True)
            .order_by("id")
            .first()
        )
        if arm is None:
            return "", UserSimulator(None)
        endpoint, model = arm.endpoint, arm.model_name or arm.endpoint.served_model
    spec = endpoint_client_spec(endpoint, model)
    simulator = UserSimulator(
        spec,
        min_chars=study.min_user_message_chars,
        max_chars=settings.CHAT_MAX_MESSAGE_CHARS,
        timeout=endpoint.read_timeout,
    )
    return endpoint.name, simulator


# Called as each simulated participant finishes; returns True to stop the pilot (cancelled).
Finished = Callable[[ParticipantRun], Awaitable[bool]]


async def pilot_run(
    plan: PilotPlan,
    simulator: UserSimulator,
    *,
    participants: int,
    concurrency: int,
    finished: Finished | None = None,
) -> dict:
    """Run the simulated participants, at most `concurrency` at once; return the report. Once
    `finished` asks to stop, participants not yet started are not started (those under way end)."""
    gate = asyncio.Semaphore(max(1, concurrency))
    started = time.monotonic()
    stop = asyncio.Event()

    async def one(index: int) -> ParticipantRun | None:
        async with gate:
            if stop.is_set():
                return None
            run = await participant_run(plan, index, simulator)
            if finished is not None and await finished(run):
                stop.set()
            return run

    try:
        runs = await asyncio.gather(*(one(i) for i in range(participants)))
    finally:
        await close_clients()
    ran = [run for run in runs if run is not None]
    report = pilot_report(ran, wall_seconds=time.monotonic() - started)
    return {"study": plan.slug, "base_url": plan.base_url, "concurrency": concurrency, **report}


def pilot_report(runs: list[ParticipantRun], *, wall_seconds: float) -> dict:
    """Completion, errors per step, time per turn and simulator fallbacks of a run."""
    completed = sum(r.completed for r in runs)
    errors = Counter(step for r in runs for step, _ in r.errors)
    messages: dict[str, Counter] = {step: Counter() for step in STEPS}
    for r in runs:
        for step, message in r.errors:
            messages.setdefault(step, Counter())[message] += 1
    turns = [t for r in runs for t in r.chat.turns]
    fallbacks = Counter(reason for r in runs for reason in r.chat.fallbacks)
    return {
        "participants": len(runs),
        "started": sum(r.step != "entry" for r in runs),
        "completed": completed,
        "completion_rate": round(completed / len(runs), 3) if runs else 0.0,
        "errors": {step: errors.get(step, 0) for step in STEPS},
        "error_messages": {
            step: [f"{n}x {m}" for m, n in found.most_common(MAX_MESSAGES_PER_STEP)]
            for step, found in messages.items()
            if found
        },
        "turns": len(turns),
        "ratings": sum(r.chat.ratings for r in runs),
        "turn_seconds": _percentiles([t.seconds for t in turns]),
        "ttft_seconds": _percentiles([t.ttft for t in turns]),
        "wall_seconds": round(wall_seconds, 2),
        "simulator_messages": sum(r.chat.messages for r in runs),
        "simulator_fallbacks": sum(fallbacks.values()),
        "simulator_fallback_reasons": dict(fallbacks),
        "runs": [
            {
                "index": r.index,
                "completed": r.completed,
                "step": r.step,
                "turns": len(r.chat.turns),
                "errors": len(r.errors),
                "seconds": round(r.seconds, 2),
            }
            for r in runs
        ],
    }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def rank(q: float) -> float | None:  # nearest rank: an observed value, no interpolation
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3) if ordered else None

    return {"p50": rank(0.5), "p95": rank(0.95)}


def pilot_study(
    study: Study,
    *,
    participants: int,
    concurrency: int = 2,
    base_url: str | None = None,
    simulator_endpoint: str | None = None,
    seed: int = 0,
    finished: Finished | None = None,
) -> dict:
    """Run a whole pilot from synchronous code and record its report as an event."""
    # httpx logs every request at INFO: thousands of lines in a pilot's log, none of them news.
    for name in ("httpx", "httpx2"):  # the openai client logs through httpx2
        logging.getLogger(name).setLevel(logging.WARNING)
    plan = pilot_plan(study, base_url=base_url or settings.SITE_URL, seed=seed)
    name, simulator = simulator_for(study, endpoint_name=simulator_endpoint)
    event_record(
        study_id=study.pk,
        kind="study.pilot.started",
        payload={
            "participants": participants,
            "concurrency": concurrency,
            "base_url": plan.base_url,
        },
    )
    report = asyncio.run(
        pilot_run(
            plan, simulator, participants=participants, concurrency=concurrency, finished=finished
        )
    )
    report["simulator_endpoint"] = name
    pilot_record(study, report)
    return report


def pilot_record(study: Study, report: dict) -> None:
    """Store a run's report as the study's `study.pilot.finished` event (the admin shows it)."""
    event_record(study_id=study.pk, kind="study.pilot.finished", payload=report)


def report_table(report: dict) -> str:
    """The report as a few aligned lines for a terminal."""
    turn, ttft = report["turn_seconds"], report["ttft_seconds"]
    simulator = report.get("simulator_endpoint") or "-"
    lines = [
        f"pilot of {report['study']} at {report['base_url']} "
        f"(concurrency {report['concurrency']}, simulator {simulator})",
        f"  participants  {report['participants']:>6}   started {report['started']}"
        f"   completed {report['completed']}   rate {report['completion_rate']:.0%}",
        f"  turns         {report['turns']:>6}   ratings {report['ratings']}",
        f"  turn seconds  p50 {_num(turn['p50'])}   p95 {_num(turn['p95'])}",
        f"  ttft seconds  p50 {_num(ttft['p50'])}   p95 {_num(ttft['p95'])}",
        f"  wall seconds  {report['wall_seconds']:>6}",
        f"  simulator     {report['simulator_fallbacks']} fallbacks "
        f"of {report['simulator_messages']} messages {report['simulator_fallback_reasons'] or ''}",
        "  errors per step:",
    ]
    for step, count in report["errors"].items():
        lines.append(f"    {step:<8} {count:>4}")
        lines += [f"             {m}" for m in report["error_messages"].get(step, [])]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
