"""manage.py train <run-id>: start a training run (what the admin's Start button does)."""

from django.core.management.base import BaseCommand, CommandError

from training.models import TrainingRun, TrainingStage
from training.services import runs


class Command(BaseCommand):
    help = "Start a training run on the Celery workers, or carry it out here with --inline."

    def add_arguments(self, parser) -> None:
        parser.add_argument("run_id", type=int)
        parser.add_argument(
            "--inline", action="store_true", help="Run every stage in this process, in order."
        )

    def handle(self, *args, run_id: int, inline: bool, **options) -> None:
        if not TrainingRun.objects.filter(pk=run_id).exists():
            raise CommandError(f"no training run {run_id}")
        if inline:
            self._inline(run_id)
            return
        try:
            run = runs.run_start(run_id=run_id, by="manage.py train")
        except runs.RunStateError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Queued {run}; follow it in the admin.")

    def _inline(self, run_id: int) -> None:
        from webapp.celery import app

        # Each queued stage runs here as soon as it is queued, in order, as a worker would run it.
        app.conf.task_always_eager = True
        try:
            runs.run_start(run_id=run_id, by="manage.py train --inline")
        except runs.RunStateError as exc:
            raise CommandError(str(exc)) from exc
        for stage in TrainingStage.objects.filter(run_id=run_id).order_by("position"):
            self.stdout.write(f"{stage.name}: {stage.status} {stage.error[-300:]}")
        status = TrainingRun.objects.get(pk=run_id).status
        if status != TrainingRun.Status.SUCCEEDED:
            raise CommandError(f"run {run_id} ended {status}")
