"""Celery tasks: thin, idempotent wrappers around services."""

from celery import shared_task

from studies.services import turns


@shared_task
def reap_stale_replies() -> int:
    """Mark replies whose web process died mid-stream as interrupted (they can be retried)."""
    return len(turns.turn_reap_stale(participant_id=None, running=set()))
