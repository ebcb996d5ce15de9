"""Celery entry points for pilot runs (the monitor's button queues `run_pilot` for a PilotRun)."""

from celery import shared_task

from studies.pilot.runs import pilot_run_create, pilot_run_execute


@shared_task(bind=True)
def run_pilot(
    self,
    study_id: int,
    participants: int = 5,
    concurrency: int = 2,
    base_url: str | None = None,
    run_id: int | None = None,
) -> dict:
    """Run a pilot of simulated participants against the site (settings.SITE_URL by default),
    as the PilotRun `run_id` (a new one when called without)."""
    if run_id is None:
        run_id = pilot_run_create(
            study_id=study_id,
            participants=participants,
            concurrency=concurrency,
            task_id=self.request.id or "",
        ).pk
    return pilot_run_execute(run_id=run_id, base_url=base_url)
