"""A training run's lifecycle: start, take a stage under a lease, record progress, advance, retry.

Stages run one after another, each as its own Celery task taking the stage id. A stage is claimed
under a row lock. A run can be cancelled: a queued stage at once (its task revoked), a running one
at its next progress write (a safe point between items or training steps); what the stages wrote
to disk is kept, so a retry resumes from it. A stage whose worker is gone (no heartbeat for
JOB_STALE_MINUTES, or a task id no worker holds) is marked interrupted by `stages_recover_stale`,
and a retry queues it again; the stage's own work skips what it already wrote to disk.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from celery import current_app
from celery.utils import uuid
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from studies.services.jobs import JobCancelled, job_check_cancel, stale_filter
from training.models import STAGE_ORDER, TrainingRun, TrainingStage
from training.pipeline.curves import curve_add, curve_point

S = TrainingStage.Status
LOG_LINES = 200
_TRAINING_STAGES = ("sft", "dpo", "online_dpo")


class RunStateError(Exception):
    """The run or stage is not in a state that allows this action."""


def run_dir(run: TrainingRun) -> Path:
    """Where a run's conversations, datasets, checkpoints and benchmark live."""
    if run.output_dir:
        return Path(run.output_dir)
    return Path(settings.REPORTS_DIR) / "training" / f"run-{run.pk}"


def _enabled(run: TrainingRun, name: str) -> bool:
    if name in _TRAINING_STAGES:
        return bool(run.stages.get(name, {}).get("enabled"))
    if name == "evaluate":
        return run.eval_tasks > 0  # 0 held-out tasks: no benchmark, so no vLLM server needed
    return True


@transaction.atomic
def run_start(*, run_id: int, by: str = "") -> TrainingRun:
    """Create the run's stages (disabled ones skipped) and queue the first."""
    run = TrainingRun.objects.select_for_update().get(pk=run_id)
    if run.status == TrainingRun.Status.RUNNING:
        raise RunStateError(f"{run} is already running")
    if not any(_enabled(run, name) for name in _TRAINING_STAGES):
        raise RunStateError(f"{run}: enable at least one of SFT, DPO and online DPO")
    run.stage_rows.all().delete()
    for position, name in enumerate(STAGE_ORDER):
        status = S.PENDING if _enabled(run, name) else S.SKIPPED
        TrainingStage.objects.create(run=run, name=name, position=position, status=status)
    run.status, run.finished_at = TrainingRun.Status.RUNNING, None
    run.created_by = run.created_by or by
    run.save(update_fields=["status", "finished_at", "created_by"])
    _queue_next(run)
    return run


def _queue(stage: TrainingStage) -> None:
    from training import tasks  # tasks import this module

    queue = stage_queue(stage.name)
    task_id = uuid()
    TrainingStage.objects.filter(pk=stage.pk).update(
        status=S.QUEUED, task_id=task_id, queued_at=timezone.now()
    )
    transaction.on_commit(
        lambda: tasks.run_training_stage.apply_async((stage.pk,), queue=queue, task_id=task_id)
    )


def stage_queue(name: str) -> str:
    """The GPU stages go to TRAINING_GPU_QUEUE on a GPU host; the rest to TRAINING_QUEUE."""
    if settings.TRAINING_GPU and name in _TRAINING_STAGES:
        return settings.TRAINING_GPU_QUEUE
    return settings.TRAINING_QUEUE


def _queue_next(run: TrainingRun) -> None:
    """Queue the first pending stage, or finish the run when none is left."""
    stage = run.stage_rows.filter(status=S.PENDING).order_by("position").first()
    if run.cancel_requested:
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.CANCELLED, finished_at=timezone.now()
        )
        return
    if stage is not None:
        _queue(stage)
        return
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.SUCCEEDED, finished_at=timezone.now()
    )


@transaction.atomic
def _claim(stage_id: int) -> TrainingStage | None:
    stage = TrainingStage.objects.select_for_update().select_related("run").get(pk=stage_id)
    if stage.status != S.QUEUED or stage.run.cancel_requested:
        return None  # done, stopped, held by a worker, or not handed out (a late delivery)
    now = timezone.now()
    stage.status, stage.heartbeat_at, stage.error = S.RUNNING, now, ""
    stage.attempts += 1
    stage.started_at = stage.started_at or now
    stage.save(update_fields=["status", "heartbeat_at", "error", "attempts", "started_at"])
    return stage


class Reporter:
    """Progress and log lines from a running stage, written at most once a second."""

    def __init__(self, stage: TrainingStage, interval: float = 1.0) -> None:
        self.stage, self.interval, self._last = stage, interval, 0.0
        self.run_id = stage.run_id
        self._lines = stage.log.splitlines()[-LOG_LINES:]

    def trained(self, step: int, total: int, logs: dict[str, Any] | None = None) -> None:
        """A training step's progress, and its loss (and rewards) on the stage's curve."""
        point = curve_point(step, logs or {})
        if point is not None:
            self.stage.curve = curve_add(self.stage.curve, point)
        self.progress(step, max(total, step))

    def progress(self, done: int, total: int) -> None:
        self.stage.done, self.stage.total = min(done, total), total
        if time.monotonic() - self._last >= self.interval or done >= total:
            self.flush()

    def log(self, line: str, *, check_cancel: bool = True) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        self._lines = [*self._lines, f"{stamp} {line}"][-LOG_LINES:]
        self.flush(check_cancel=check_cancel)

    def flush(self, *, check_cancel: bool = True) -> None:
        self._last = time.monotonic()
        TrainingStage.objects.filter(pk=self.stage.pk).update(
            done=self.stage.done,
            total=self.stage.total,
            heartbeat_at=timezone.now(),
            log="\n".join(self._lines),
            curve=self.stage.curve,
        )
        if check_cancel:
            job_check_cancel(TrainingRun, self.run_id)


Work = Callable[[TrainingRun, TrainingStage, Reporter], dict[str, Any]]


def stage_execute(*, stage_id: int) -> str:
    """Run one claimed stage to its end; record success or the failure, then advance the run."""
    from training.services.work import STAGE_WORK

    stage = _claim(stage_id)
    if stage is None:
        return TrainingStage.objects.values_list("status", flat=True).get(pk=stage_id)
    reporter = Reporter(stage)
    reporter.log(f"attempt {stage.attempts} started")
    try:
        result = STAGE_WORK[stage.name](stage.run, stage, reporter)
    except JobCancelled:
        _stop(stage, S.CANCELLED)
        return S.CANCELLED
    except Exception as exc:
        reporter.log(f"failed: {exc!r}", check_cancel=False)  # the work is over: record it
        _fail(stage, exc)
        return S.FAILED
    reporter.log("finished", check_cancel=False)
    with transaction.atomic():
        TrainingStage.objects.filter(pk=stage.pk).update(
            status=S.SUCCEEDED, finished_at=timezone.now(), result=result
        )
        _queue_next(TrainingRun.objects.select_for_update().get(pk=stage.run_id))
    return S.SUCCEEDED


def _stop(stage: TrainingStage, status: str) -> None:
    """End a stage and its run as cancelled or interrupted (what it wrote to disk is kept)."""
    now = timezone.now()
    with transaction.atomic():
        TrainingStage.objects.filter(pk=stage.pk).update(status=status, finished_at=now)
        TrainingRun.objects.filter(pk=stage.run_id).update(status=status, finished_at=now)


@transaction.atomic
def run_cancel(*, run_id: int) -> TrainingRun:
    """Stop a running run: a queued stage at once, a running one at its next progress write."""
    run = TrainingRun.objects.select_for_update().get(pk=run_id)
    if run.status != TrainingRun.Status.RUNNING:
        raise RunStateError(f"only a running run can be cancelled ({run} is {run.status})")
    run.cancel_requested = True
    run.save(update_fields=["cancel_requested"])
    for stage in run.stage_rows.filter(status=S.QUEUED):
        _stop(stage, S.CANCELLED)
        if stage.task_id:
            transaction.on_commit(partial(current_app.control.revoke, stage.task_id))
    run.refresh_from_db()
    return run


def _fail(stage: TrainingStage, exc: Exception) -> None:
    detail = "".join(traceback.format_exception(exc))[-4000:]
    with transaction.atomic():
        TrainingStage.objects.filter(pk=stage.pk).update(
            status=S.FAILED, finished_at=timezone.now(), error=detail
        )
        TrainingRun.objects.filter(pk=stage.run_id).update(
            status=TrainingRun.Status.FAILED, finished_at=timezone.now()
        )


@transaction.atomic
def stage_retry(*, stage_id: int) -> TrainingStage:
    """Queue a failed, cancelled or interrupted stage again; it resumes from what it wrote."""
    stage = TrainingStage.objects.select_for_update().select_related("run").get(pk=stage_id)
    if stage.status not in (S.FAILED, S.CANCELLED, S.INTERRUPTED):
        raise RunStateError(
            f"only a failed, cancelled or interrupted stage can be retried ({stage.status})"
        )
    TrainingRun.objects.filter(pk=stage.run_id).update(
        status=TrainingRun.Status.RUNNING, finished_at=None, cancel_requested=False
    )
    stage.finished_at = None
    stage.save(update_fields=["finished_at"])
    _queue(stage)
    return stage


def stages_recover_stale(
    *, workers: set[str] | None = None, broker: set[str] | None = None
) -> list[int]:
    """Mark as interrupted (with their runs) the stages whose worker is gone (beat: each minute)."""
    stale = stale_filter(
        now=timezone.now(), workers=workers, broker=broker or set(), queued_since="queued_at"
    )
    interrupted = []
    with transaction.atomic():
        for stage in TrainingStage.objects.select_for_update(skip_locked=True).filter(stale):
            _stop(stage, S.INTERRUPTED)
            interrupted.append(stage.pk)
    return interrupted


def stage_rate(stage: TrainingStage) -> tuple[float | None, float | None]:
    """Items per minute from the stage's start to its end (or now), and seconds left."""
    if not stage.started_at or not stage.done:
        return None, None
    elapsed = ((stage.finished_at or timezone.now()) - stage.started_at).total_seconds()
    if elapsed <= 0:
        return None, None
    per_second = stage.done / elapsed
    left = (stage.total - stage.done) / per_second if stage.total else None
    return per_second * 60, left
