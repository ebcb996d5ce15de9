"""Celery tasks for training runs: thin wrappers taking ids; the services own the logic."""

from celery import shared_task

from training.services import runs


# acks_late + reject_on_worker_lost: a stage whose worker is killed goes back to the broker, and
# the stage's lease (runs._claim) lets exactly one worker take it up again.
@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_training_stage(stage_id: int) -> str:
    """Carry out one stage of a training run; returns the stage's status."""
    return runs.stage_execute(stage_id=stage_id)


@shared_task
def resume_stale_stages() -> list[int]:
    """Queue again the stages whose worker stopped sending heartbeats (beat: every 60 s)."""
    return runs.stages_resume_stale()
