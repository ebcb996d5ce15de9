"""Celery entry points for pilot runs (the monitor's button enqueues `run_pilot`)."""

from celery import shared_task

from studies.models import Study
from studies.pilot.runner import pilot_study


@shared_task
def run_pilot(
    study_id: int, participants: int = 5, concurrency: int = 2, base_url: str | None = None
) -> dict:
    """Run a pilot of simulated participants against the site (settings.SITE_URL by default)."""
    study = Study.objects.get(pk=study_id)
    return pilot_study(study, participants=participants, concurrency=concurrency, base_url=base_url)
