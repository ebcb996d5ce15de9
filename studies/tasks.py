"""Celery tasks: thin, idempotent wrappers around services."""

from celery import shared_task

from studies.services import housekeeping, turns


@shared_task
def reap_stale_replies() -> int:
    """Mark replies whose web process died mid-stream as interrupted (they can be retried)."""
    return len(turns.turn_reap_stale(participant_id=None, running=set()))


@shared_task
def time_out_participants() -> int:
    """End participations past their study's time limit (plus grace) as timed out."""
    return len(housekeeping.participants_time_out())


@shared_task
def abandon_stale_participants() -> int:
    """End participations inactive past their study's abandon_after_minutes as abandoned."""
    return len(housekeeping.participants_abandon_stale())
