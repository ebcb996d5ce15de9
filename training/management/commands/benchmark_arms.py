"""manage.py benchmark_arms <study-slug> --out DIR: the simulated benchmark (paper Table 1's shape)
for a study's arms on the offline held-out tasks."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from studies.models import ModelEndpoint, Study
from training.pipeline.tasks import TASK_KINDS
from training.services.benchmarks import study_benchmark


class Command(BaseCommand):
    help = "Run each active arm of a study against the simulated user on held-out tasks."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument(
            "--kinds",
            default=",".join(TASK_KINDS),
            help="Comma-separated task kinds (document, code, math).",
        )
        parser.add_argument("--limit", type=int, default=4, help="Held-out tasks per kind.")
        parser.add_argument("--max-turns", type=int, default=4)
        parser.add_argument(
            "--max-tokens",
            type=int,
            default=256,
            help="Per reply of the simulator, judge and extractor.",
        )
        parser.add_argument(
            "--simulator",
            default="",
            help="Endpoint name for simulator, judge and extractor "
            "(default: the first arm's endpoint).",
        )

    def handle(
        self,
        *args,
        slug: str,
        out: Path,
        kinds: str,
        limit: int,
        max_turns: int,
        max_tokens: int,
        simulator: str,
        **options,
    ) -> None:
        study = Study.objects.filter(slug=slug).first()
        if study is None:
            raise CommandError(f"no study {slug!r}")
        wanted = [k.strip() for k in kinds.split(",") if k.strip()]
        unknown = sorted(set(wanted) - set(TASK_KINDS))
        if unknown:
            raise CommandError(f"unknown task kind(s) {', '.join(unknown)}; known: {TASK_KINDS}")
        endpoint = None
        if simulator:
            endpoint = ModelEndpoint.objects.filter(name=simulator).first()
            if endpoint is None:
                raise CommandError(f"no endpoint named {simulator!r}")
        try:
            _, table = study_benchmark(
                study,
                out=out,
                kinds=wanted,
                limit=limit,  # type: ignore[arg-type]
                max_turns=max_turns,
                simulator=endpoint,
                max_tokens=max_tokens,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(table.read_text())
        self.stdout.write(f"Written to {out}/ (table.md, table.csv, conversations.jsonl)")
