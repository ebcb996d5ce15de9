"""Celery tasks: thin, idempotent wrappers around services."""

from celery import shared_task

from studies.services import endpoints, housekeeping, jobs, reports, turns


@shared_task
def reap_stale_replies() -> int:
    """Store replies held in Redis, then mark those whose web process died as interrupted."""
    return len(turns.turn_reap_stale(participant_id=None, running=set()))


@shared_task
def time_out_participants() -> int:
    """End participations past their study's time limit (plus grace) as timed out."""
    return len(housekeeping.participants_time_out())


@shared_task
def abandon_stale_participants() -> int:
    """End participations inactive past their study's abandon_after_minutes as abandoned."""
    return len(housekeeping.participants_abandon_stale())


@shared_task
def build_study_report(run_id: int) -> str:
    """Export a study and build its analysis report for a queued ReportRun; returns its status."""
    return reports.report_run_execute(run_id=run_id).status


@shared_task
def export_run(run_id: int) -> str:
    """Export a study into REPORTS_DIR as a zip for a queued ReportRun of kind export."""
    return reports.export_run_execute(run_id=run_id).status


@shared_task
def check_endpoint_health() -> dict[str, str]:
    """Check the model endpoints of live studies and record their health (beat: every 60 s)."""
    return endpoints.endpoints_check_live()


@shared_task
def recover_interrupted_jobs() -> dict[str, list[int]]:
    """Mark report and pilot runs whose worker is gone as interrupted (beat; at worker start)."""
    return jobs.recover_interrupted(workers=jobs.worker_task_ids(), broker=jobs.broker_task_ids())
