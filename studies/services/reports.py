"""Analysis reports: export a study, then build `analysis.report` from the export; runs that the
admin starts are tracked as ReportRun rows (progress, step, result) and executed by a Celery task.
"""

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from celery.utils import uuid
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from studies.models import ReportRun, Study
from studies.services.exports import ExportError, ExportResult, Progress, export_study, zip_folder
from studies.services.jobs import JobCancelled, JobStateError, job_check_cancel, job_finish

logger = logging.getLogger(__name__)

EXPORT_SHARE = 0.3  # of the progress bar; the statistics take the rest
PROGRESS_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class AnalysisResult:
    path: Path
    export: ExportResult
    report_dir: Path
    summary: dict[str, Any]


def _build_report() -> Callable[..., dict[str, Any]]:
    # Imported when used: pandas, statsmodels and matplotlib stay out of the web processes.
    from analysis.report import build_report

    return build_report


def _part(progress: Progress | None, start: float, share: float) -> Progress:
    def report(fraction: float, step: str) -> None:
        if progress:
            progress(start + share * min(max(fraction, 0.0), 1.0), step)

    return report


def analyze_study(
    study: Study,
    out: Path,
    *,
    reference_arm: str | None = None,
    include_pilot: bool = False,
    fmt: str = "parquet",
    force: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
) -> AnalysisResult:
    """Export the study into out/export, then write the report into out/report.

    `workers=1` computes in this process; None lets the report fork workers, which only the
    command line should do (a Celery worker may be multi-threaded, and fork after threads can
    deadlock).
    """
    out = Path(out).absolute()
    report_dir = out / "report"
    if report_dir.is_dir() and any(report_dir.iterdir()):
        if not force:
            raise ExportError(f"{report_dir} is not empty (use --force to replace it).")
        shutil.rmtree(report_dir)
    export = export_study(
        study,
        out / "export",
        fmt=fmt,
        include_pilot=include_pilot,
        force=force,
        progress=_part(progress, 0.0, EXPORT_SHARE),
    )
    statistics = _part(progress, EXPORT_SHARE, 1.0 - EXPORT_SHARE)
    summary = _build_report()(
        export.path,
        report_dir,
        reference_arm=reference_arm or None,
        seed=0,
        include_pilot=include_pilot,
        progress=lambda step, fraction: statistics(fraction, step),
        workers=workers,
    )
    return AnalysisResult(path=out, export=export, report_dir=report_dir, summary=summary)


def report_run_create(
    *, study_id: int, by: str = "", include_pilot: bool = False, reference_arm: str = ""
) -> ReportRun:
    """A queued run; the caller enqueues `build_study_report` once this is committed."""
    return ReportRun.objects.create(
        study_id=study_id, created_by=by, include_pilot=include_pilot, reference_arm=reference_arm
    )


def report_run_dir(run: ReportRun) -> Path:
    return Path(settings.REPORTS_DIR) / run.study.slug / f"run-{run.pk}"


def latest_report_run(study: Study) -> ReportRun | None:
    runs = ReportRun.objects.filter(study=study, kind=ReportRun.Kind.REPORT)
    return runs.order_by("-created_at", "-id").first()


def export_runs_shown(study: Study) -> list[ReportRun]:
    """Background exports under way or stopped (with Cancel or Retry); finished ones are zips."""
    shown = ReportRun.objects.filter(study=study, kind=ReportRun.Kind.EXPORT).exclude(
        status=ReportRun.Status.DONE
    )
    return list(shown.order_by("-created_at", "-id")[:10])


def export_run_create(
    *, study_id: int, fmt: str = "parquet", include_pilot: bool = False, by: str = ""
) -> ReportRun:
    """A queued background export; `report_run_queue` sends its task once committed."""
    return ReportRun.objects.create(
        study_id=study_id,
        kind=ReportRun.Kind.EXPORT,
        export_format=fmt,
        include_pilot=include_pilot,
        created_by=by,
    )


def export_run_execute(*, run_id: int) -> ReportRun:
    """Export into REPORTS_DIR/<slug>/exports/ as a zip, reading the cancel flag between tables;
    a cancelled export leaves no folder and no zip behind."""
    run = ReportRun.objects.select_related("study").get(pk=run_id)
    if run.status not in (ReportRun.Status.QUEUED, ReportRun.Status.RUNNING):
        return run
    ReportRun.objects.filter(pk=run.pk).update(
        status=ReportRun.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now(),
        progress=0.0, step="exporting", error="",
    )  # fmt: skip
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S")
    # The run's id keeps two exports of one second (a double click, two workers) apart: each
    # cleans only its own folder and zip.
    folder = export_dir(run.study) / f"{stamp}-{run.export_format}-{run.pk}"
    status, extra = ReportRun.Status.DONE, {"progress": 1.0, "step": "done"}
    try:
        export_study(
            run.study, folder, fmt=run.export_format, include_pilot=run.include_pilot,
            progress=_progress_writer(run.pk),
        )  # fmt: skip
        zip_path = zip_folder(folder, folder.with_suffix(".zip"))
        extra["out_dir"] = str(zip_path)
    except JobCancelled:
        status, extra = ReportRun.Status.CANCELLED, {}
        folder.with_suffix(".zip").unlink(missing_ok=True)
    except Exception as exc:
        logger.exception("export run %s of %s failed", run.pk, run.study.slug)
        status, extra = ReportRun.Status.FAILED, {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    job_finish(ReportRun, run.pk, run.task_id, status=status, finished_at=timezone.now(), **extra)
    run.refresh_from_db()
    return run


def export_dir(study: Study) -> Path:
    return Path(settings.REPORTS_DIR) / study.slug / "exports"


def report_run_queue(run: ReportRun) -> ReportRun:
    """Send the run's task (report or export) on commit, under a task id kept on the row."""
    from studies import tasks  # tasks import this module

    task_id = uuid()
    ReportRun.objects.filter(pk=run.pk).update(task_id=task_id)
    run.task_id = task_id
    task = tasks.export_run if run.kind == ReportRun.Kind.EXPORT else tasks.build_study_report
    transaction.on_commit(lambda: task.apply_async((run.pk,), task_id=task_id))
    return run


def report_run_retry(*, run_id: int) -> ReportRun:
    """Queue an interrupted, cancelled or failed run again; it starts over in its folder."""
    with transaction.atomic():
        run = ReportRun.objects.select_for_update().get(pk=run_id)
        if run.status in (ReportRun.Status.QUEUED, ReportRun.Status.RUNNING, ReportRun.Status.DONE):
            raise JobStateError(f"{run} is {run.status}: nothing to retry")
        run.status, run.cancel_requested, run.progress, run.step = "queued", False, 0.0, ""
        run.error, run.finished_at = "", None
        run.save()
        return report_run_queue(run)


def _progress_writer(run_id: int) -> Progress:
    """Progress saved on the run at most once a second, and whenever the step changes; between
    writes the run's cancel flag is read (a safe point: the export and the statistics stop)."""
    last_at, last_step = 0.0, ""

    def write(fraction: float, step: str) -> None:
        nonlocal last_at, last_step
        now, kind = time.monotonic(), step.split(" ")[0]
        if now - last_at < PROGRESS_EVERY_SECONDS and kind == last_step:
            return
        last_at, last_step = now, kind
        ReportRun.objects.filter(pk=run_id).update(
            progress=round(fraction, 4), step=step[:200], heartbeat_at=timezone.now()
        )
        job_check_cancel(ReportRun, run_id)

    return write


def report_run_execute(*, run_id: int) -> ReportRun:
    """Export and analyse for a queued run; a finished run is left as it is (idempotent)."""
    run = ReportRun.objects.select_related("study").get(pk=run_id)
    if run.status not in (ReportRun.Status.QUEUED, ReportRun.Status.RUNNING):
        return run  # finished, cancelled or interrupted: a late or repeated delivery
    out = report_run_dir(run)
    ReportRun.objects.filter(pk=run.pk).update(
        status=ReportRun.Status.RUNNING, started_at=timezone.now(), out_dir=str(out),
        progress=0.0, step="exporting", error="", heartbeat_at=timezone.now(),
    )  # fmt: skip
    try:
        result = analyze_study(
            run.study,
            out,
            reference_arm=run.reference_arm or None,
            include_pilot=run.include_pilot,
            force=True,  # a redelivered task starts over in the same folder
            progress=_progress_writer(run.pk),
            workers=1,  # inside a worker: no forking
        )
        zip_folder(result.export.path, out / "export.zip")
    except JobCancelled:
        # A half-built report is of no use: its folder goes, the row says it was cancelled.
        shutil.rmtree(out, ignore_errors=True)
        job_finish(
            ReportRun, run.pk, run.task_id,
            status=ReportRun.Status.CANCELLED, finished_at=timezone.now(), out_dir="",
        )  # fmt: skip
    except Exception as exc:
        logger.exception("report run %s of %s failed", run.pk, run.study.slug)
        job_finish(
            ReportRun, run.pk, run.task_id,
            status=ReportRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}",
            finished_at=timezone.now(),
        )  # fmt: skip
    else:
        job_finish(
            ReportRun, run.pk, run.task_id,
            status=ReportRun.Status.DONE, progress=1.0, step="done", summary=result.summary,
            finished_at=timezone.now(),
        )  # fmt: skip
    run.refresh_from_db()
    return run


def export_to_temporary_zip(
    study: Study, *, fmt: str = "parquet", include_pilot: bool = False, raw_ids: bool = False
) -> IO[bytes]:
    """The export as an anonymous temporary zip (gone once closed) for a direct download."""
    spool = tempfile.TemporaryFile()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / f"{study.slug}-export"
            export_study(study, folder, fmt=fmt, include_pilot=include_pilot, raw_ids=raw_ids)
            zip_folder(folder, spool)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def export_zips(study: Study) -> list[Path]:
    """Zipped exports of the study under REPORTS_DIR, newest first."""
    folder = export_dir(study)
    return sorted(folder.glob("*.zip"), reverse=True) if folder.is_dir() else []
