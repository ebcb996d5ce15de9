"""Background jobs that can be cancelled and that never stay `running` after their worker died.

A job row (ReportRun, PilotRun, training's TrainingStage) records the Celery task id it was sent
with. Cancelling a queued job revokes its task; cancelling a running one sets `cancel_requested`,
which the job reads at its next safe point (between steps, participants or batches) and stops
there by raising `JobCancelled`. `recover_interrupted` (a housekeeping beat task, also sent when a
worker starts) marks as interrupted the rows whose worker is gone: running with no heartbeat for
JOB_STALE_MINUTES, or running or queued with a task id that no worker and no queue holds.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Model, Q, QuerySet
from django.utils import timezone

from studies.models import PilotRun, ReportRun

# The queues the jobs go to (settings.CELERY_TASK_ROUTES) and kombu's Redis key for delivered but
# unacknowledged messages (acks_late: a running task's message stays there until it ends).
JOB_QUEUES = ("reports", "pilots", "training", "gpu")
UNACKED_KEY = "unacked"
# A queued row's message is published on commit: give it this long before looking for it.
QUEUED_GRACE = timedelta(seconds=60)
ACTIVE = ("queued", "running")


class JobCancelled(Exception):
    """The job's row asks it to stop: raised at a safe point, caught by the job's runner."""


class JobStateError(Exception):
    """The job is not in a state that allows this action."""


def job_check_cancel(model: type[Model], pk: int) -> None:
    """Raise JobCancelled when the job's row asks it to stop (call between units of work)."""
    if model._default_manager.filter(pk=pk, cancel_requested=True).exists():
        raise JobCancelled


def job_finish(model: type[Model], pk: int, task_id: str, **fields: Any) -> bool:
    """Write a job's ending, unless a Retry has handed the row to another task since it started.

    The row must still carry the task id this execution started under, and be running or
    interrupted (a worker that was only slow to answer finishes what recovery marked; a Retry
    queues the row under a new task id, which this write then leaves alone). Returns whether the
    row was written.
    """
    rows = model._default_manager.filter(
        pk=pk, task_id=task_id, status__in=("running", "interrupted")
    )
    return bool(rows.update(**fields))


def job_cancel(model: type[Model], pk: int) -> str:
    """Cancel a queued job at once (revoking its task) or ask a running one to stop."""
    with transaction.atomic():
        row = model._default_manager.select_for_update().get(pk=pk)
        if row.status not in ACTIVE:
            raise JobStateError(f"{row} is {row.status}: only a queued or running job can stop")
        if row.status == "queued":
            row.status, row.finished_at = "cancelled", timezone.now()
        row.cancel_requested = True
        row.save(update_fields=["status", "finished_at", "cancel_requested"])
    if row.task_id:
        current_app.control.revoke(row.task_id)
    return row.status


def worker_task_ids() -> set[str] | None:
    """Ids of the tasks the workers are running; None when no worker answers. (Tasks a worker
    has prefetched are still in the broker's unacked set: `broker_task_ids` has them.)"""
    reply = current_app.control.inspect(timeout=1.0).active()
    if reply is None:
        return None
    return {task["id"] for tasks in reply.values() for task in tasks}


def broker_task_ids() -> set[str]:
    """Ids of the task messages waiting in the job queues or delivered and not yet acknowledged."""
    ids: set[str] = set()
    with current_app.connection_for_read() as connection:
        client = connection.default_channel.client
        raw = [m for queue in JOB_QUEUES for m in client.lrange(queue, 0, -1)]
        raw += [json.loads(v)[0] for v in client.hvals(UNACKED_KEY)]
    for message in raw:
        payload = json.loads(message) if isinstance(message, (bytes, str)) else message
        task_id = payload.get("headers", {}).get("id")
        if task_id:
            ids.add(task_id)
    return ids


def stale_filter(
    *, now, workers: set[str] | None, broker: set[str], queued_since: str = "created_at"
) -> Q:
    """Rows whose worker is gone: no heartbeat for JOB_STALE_MINUTES, or a task nobody holds."""
    cutoff = now - timedelta(minutes=settings.JOB_STALE_MINUTES)
    stale = Q(status="running") & (Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True))
    queued_long = Q(status="queued") & Q(**{f"{queued_since}__lt": now - QUEUED_GRACE})
    # A row run inline (a command, a test: no task id) has only its heartbeat to go by.
    sent = ~Q(task_id="")
    held = broker | (workers or set())
    if workers is not None:
        # A worker running the task outweighs an old heartbeat (one long step: an analysis, a
        # pilot participant, a training step on a CPU); the heartbeat is the fallback.
        stale &= ~(sent & Q(task_id__in=workers))
        # A busy worker may miss inspect's window, so its running task counts as gone only when
        # its message is not in the broker either (acks_late: unacknowledged until it ends).
        stale |= Q(status="running") & sent & ~Q(task_id__in=held)
    return stale | (queued_long & sent & ~Q(task_id__in=held))


def _interrupt(rows: QuerySet, now) -> list[int]:
    ids = list(rows.values_list("pk", flat=True))
    rows.model._default_manager.filter(pk__in=ids, status__in=ACTIVE).update(
        status="interrupted", finished_at=now
    )
    return ids


def recover_interrupted(
    *, workers: set[str] | None = None, broker: set[str] | None = None
) -> dict[str, list[int]]:
    """Mark the report and pilot runs whose worker is gone as interrupted; return their ids."""
    now = timezone.now()
    stale = stale_filter(now=now, workers=workers, broker=broker or set())
    return {
        "reports": _interrupt(ReportRun.objects.filter(stale), now),
        "pilots": _interrupt(PilotRun.objects.filter(stale), now),
    }
