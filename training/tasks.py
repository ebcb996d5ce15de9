"""Celery tasks for training runs: thin wrappers taking ids; the services own the logic."""

from celery import shared_task

from studies.services import jobs
from training.services import runs


# acks_late: a stage's message is acknowledged when it ends. A stage whose worker is killed is
# marked interrupted (recover_stale_stages) and waits for a retry from the admin; a redelivered
# message finds it no longer queued and does nothing (runs._claim).
@shared_task(acks_late=True)
def run_training_stage(stage_id: int) -> str:
    """Carry out one stage of a training run; returns the stage's status."""
    return runs.stage_execute(stage_id=stage_id)


@shared_task
def recover_stale_stages() -> list[int]:
    """Mark as interrupted the stages whose worker is gone (beat: every 60 s; at worker start)."""
    return runs.stages_recover_stale(workers=jobs.worker_task_ids(), broker=jobs.broker_task_ids())
