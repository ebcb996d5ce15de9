"""A training run's lifecycle: start, take a stage under a lease, record progress, advance, retry.

Stages run one after another, each as its own Celery task taking the stage id. A stage is claimed
under a row lock; a claimed stage whose heartbeat went quiet (its worker was killed) is handed out
again by `stages_resume_stale`, and the stage's own work skips what it already wrote to disk.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from training.models import STAGE_ORDER, TrainingRun, TrainingStage
from training.pipeline.curves import curve_add, curve_point

S = TrainingStage.Status
STALE_AFTER = timedelta(minutes=10)
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

    TrainingStage.objects.filter(pk=stage.pk).update(status=S.QUEUED)
    transaction.on_commit(
        lambda: tasks.run_training_stage.apply_async((stage.pk,), queue=settings.TRAINING_QUEUE)
    )


def _queue_next(run: TrainingRun) -> None:
    """Queue the first pending stage, or finish the run when none is left."""
    stage = run.stage_rows.filter(status=S.PENDING).order_by("position").first()
    if stage is not None:
        _queue(stage)
        return
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.SUCCEEDED, finished_at=timezone.now()
    )


@transaction.atomic
def _claim(stage_id: int) -> TrainingStage | None:
    stage = TrainingStage.objects.select_for_update().select_related("run").get(pk=stage_id)
    if stage.status in (S.SUCCEEDED, S.SKIPPED, S.FAILED, S.PENDING):
        return None  # done, or not handed out (a duplicate or late delivery)
    now = timezone.now()
    if stage.status == S.RUNNING and stage.heartbeat_at and now - stage.heartbeat_at < STALE_AFTER:
        return None  # another worker holds it
    stage.status, stage.heartbeat_at, stage.error = S.RUNNING, now, ""
    stage.attempts += 1
    stage.started_at = stage.started_at or now
    stage.save(update_fields=["status", "heartbeat_at", "error", "attempts", "started_at"])
    return stage


class Reporter:
    """Progress and log lines from a running stage, written at most once a second."""

    def __init__(self, stage: TrainingStage, interval: float = 1.0) -> None:
        self.stage, self.interval, self._last = stage, interval, 0.0
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

    def log(self, line: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        self._lines = [*self._lines, f"{stamp} {line}"][-LOG_LINES:]
        self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        TrainingStage.objects.filter(pk=self.stage.pk).update(
            done=self.stage.done,
            total=self.stage.total,
            heartbeat_at=timezone.now(),
            log="\n".join(self._lines),
            curve=self.stage.curve,
        )


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
    except Exception as exc:
        reporter.log(f"failed: {exc!r}")
        _fail(stage, exc)
        return S.FAILED
    reporter.log("finished")
    with transaction.atomic():
        TrainingStage.objects.filter(pk=stage.pk).update(
            status=S.SUCCEEDED, finished_at=timezone.now(), result=result
        )
        _queue_next(TrainingRun.objects.select_for_update().get(pk=stage.run_id))
    return S.SUCCEEDED


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
    """Queue a failed stage again; its work resumes from what it had written."""
    stage = TrainingStage.objects.select_for_update().select_related("run").get(pk=stage_id)
    if stage.status != S.FAILED:
        raise RunStateError(f"only a failed stage can be retried ({stage} is {stage.status})")
    TrainingRun.objects.filter(pk=stage.run_id).update(
        status=TrainingRun.Status.RUNNING, finished_at=None
    )
    stage.finished_at = None
    stage.save(update_fields=["finished_at"])
    _queue(stage)
    return stage


def stages_resume_stale() -> list[int]:
    """Hand out again the stages whose worker stopped sending heartbeats (beat, every minute)."""
    cutoff = timezone.now() - STALE_AFTER
    resumed = []
    with transaction.atomic():
        stale = TrainingStage.objects.select_for_update(skip_locked=True).filter(
            status=S.RUNNING, heartbeat_at__lt=cutoff
        )
        for stage in stale:
            _queue(stage)
            resumed.append(stage.pk)
    return resumed


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
