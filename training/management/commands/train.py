"""manage.py train <run-id>: start a training run (what the admin's Start button does).

`manage.py train --preset cpu-tiny` first makes a new run from a preset (training/services/
presets.py) on the base-model folder `make base-model` writes and the demo's `default` endpoint.
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from models_serving.convert import DEFAULT_OUT
from training.models import TrainingRun, TrainingStage
from training.services import runs
from training.services.presets import PRESETS, PresetError, run_from_preset


class Command(BaseCommand):
    help = "Start a training run on the Celery workers, or carry it out here with --inline."

    def add_arguments(self, parser) -> None:
        parser.add_argument("run_id", type=int, nargs="?")
        parser.add_argument(
            "--inline", action="store_true", help="Run every stage in this process, in order."
        )
        parser.add_argument(
            "--preset", choices=sorted(PRESETS), help="Make a run from this preset, then start it."
        )
        parser.add_argument(
            "--base-model", type=Path, default=DEFAULT_OUT, help="With --preset (make base-model)."
        )
        parser.add_argument(
            "--endpoint", default="default", help="With --preset: the endpoint for every role."
        )

    def handle(self, *args, run_id: int | None, inline: bool, preset: str | None, **options):
        if (run_id is None) == (preset is None):
            raise CommandError("give a run id or --preset, not both")
        if preset:
            run_id = self._from_preset(preset, options["base_model"], options["endpoint"])
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

    def _from_preset(self, preset: str, base_model: Path, endpoint: str) -> int:
        try:
            run = run_from_preset(
                preset=preset, base_model=base_model, endpoint=endpoint, by="manage.py train"
            )
        except PresetError as exc:
            raise CommandError(str(exc)) from exc
        progress = reverse("admin:training_trainingrun_progress", args=[run.pk])
        self.stdout.write(f"Made run {run.pk} ({run}); its progress page is {progress}")
        return run.pk

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
