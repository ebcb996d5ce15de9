"""A pilot as a PilotRun row: queued, running with "x of N done, errors so far", then done,
failed, cancelled (participants not yet started are not started; those under way finish, and all
pilot participants and the report of the finished ones are kept) or interrupted (its worker died;
studies.services.jobs) with a retry."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from celery.utils import uuid
from channels.db import database_sync_to_async
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from studies.models import PilotRun, Study
from studies.services.jobs import JobStateError, job_finish

if TYPE_CHECKING:
    from studies.pilot.driver import ParticipantRun

logger = logging.getLogger(__name__)
P = PilotRun.Status


def pilot_run_create(
    *, study_id: int, participants: int, concurrency: int, by: str = "", task_id: str = ""
) -> PilotRun:
    """A queued pilot; `pilot_run_queue` sends its task once the transaction commits."""
    return PilotRun.objects.create(
        study_id=study_id,
        participants=participants,
        concurrency=concurrency,
        created_by=by,
        task_id=task_id,
    )


def pilot_run_queue(run: PilotRun) -> PilotRun:
    """Send the pilot's task on commit, under a task id kept on the row."""
    from studies.pilot import tasks  # tasks import this module

    run.task_id = uuid()
    PilotRun.objects.filter(pk=run.pk).update(task_id=run.task_id)
    kwargs = {
        "study_id": run.study_id,
        "participants": run.participants,
        "concurrency": run.concurrency,
        "run_id": run.pk,
    }
    transaction.on_commit(lambda: tasks.run_pilot.apply_async(kwargs=kwargs, task_id=run.task_id))
    return run


def pilot_run_retry(*, run_id: int) -> PilotRun:
    """Run an interrupted, cancelled or failed pilot again, from the start, with new counters."""
    with transaction.atomic():
        run = PilotRun.objects.select_for_update().get(pk=run_id)
        if run.status in (P.QUEUED, P.RUNNING, P.DONE):
            raise JobStateError(f"{run} is {run.status}: nothing to retry")
        run.status, run.cancel_requested, run.error, run.finished_at = P.QUEUED, False, "", None
        run.done = run.completed = run.errors = 0
        run.save()
        return pilot_run_queue(run)


def _count(run_id: int, participant: ParticipantRun) -> bool:
    """Add one finished participant to the counters; return whether the pilot should stop."""
    PilotRun.objects.filter(pk=run_id).update(
        done=F("done") + 1,
        completed=F("completed") + int(participant.completed),
        errors=F("errors") + len(participant.errors),
        heartbeat_at=timezone.now(),
    )
    return PilotRun.objects.filter(pk=run_id, cancel_requested=True).exists()


def pilot_run_execute(*, run_id: int, base_url: str | None = None) -> dict:
    """Run a queued pilot, counting participants as they finish; returns its report."""
    from studies.pilot.runner import pilot_study  # the worker side: httpx, the simulator

    run = PilotRun.objects.select_related("study").get(pk=run_id)
    if run.status not in (P.QUEUED, P.RUNNING):
        return run.report or {}  # finished, cancelled or interrupted: a late delivery
    now = timezone.now()
    PilotRun.objects.filter(pk=run.pk).update(
        status=P.RUNNING, started_at=now, heartbeat_at=now, done=0, completed=0, errors=0
    )
    # channels' wrapper closes the connection after each call: the thread it runs on outlives
    # the pilot, and a connection kept there would never go back to the pool.
    counted = database_sync_to_async(_count)

    async def finished(participant: ParticipantRun) -> bool:
        return await counted(run.pk, participant)

    try:
        report = pilot_study(
            run.study,
            participants=run.participants,
            concurrency=run.concurrency,
            base_url=base_url,
            finished=finished,
        )
    except Exception as exc:
        logger.exception("pilot run %s of %s failed", run.pk, run.study.slug)
        job_finish(
            PilotRun, run.pk, run.task_id,
            status=P.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now(),
        )  # fmt: skip
        raise
    cancelled = PilotRun.objects.filter(pk=run.pk, cancel_requested=True).exists()
    job_finish(
        PilotRun, run.pk, run.task_id,
        status=P.CANCELLED if cancelled else P.DONE, report=report, finished_at=timezone.now(),
    )  # fmt: skip
    return report


def latest_pilot_run(study: Study) -> PilotRun | None:
    return PilotRun.objects.filter(study=study).order_by("-created_at", "-id").first()
