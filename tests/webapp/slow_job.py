"""A test-only Celery task that keeps a worker busy (imported by the beat-lag test's workers)."""

import time

from celery import shared_task


@shared_task(name="tests.webapp.slow_job.hold")
def hold(seconds: float) -> float:
    """Occupy this worker process for `seconds`, like a long pilot, report or training stage."""
    time.sleep(seconds)
    return seconds
