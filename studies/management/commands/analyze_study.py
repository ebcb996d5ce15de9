"""analyze_study <slug> --out OUT [--reference-arm ARM] [--include-pilot] [--format F] [--force]."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.models import Study
from studies.services.exports import FORMATS, ExportError
from studies.services.reports import analyze_study


class Command(BaseCommand):
    help = (
        "Export a study into OUT/export, then write the analysis report into OUT/report "
        "(report.html, summary.json, figures, notebook.ipynb)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--out", required=True, type=Path)
        parser.add_argument(
            "--reference-arm", default=None, help="Arm the others are compared with."
        )
        parser.add_argument("--include-pilot", action="store_true")
        parser.add_argument("--format", choices=FORMATS, default="parquet", dest="fmt")
        parser.add_argument("--force", action="store_true", help="Replace an earlier run in OUT.")

    def handle(self, *args, **options) -> None:
        study = Study.objects.filter(slug=options["slug"]).first()
        if study is None:
            raise CommandError(f"no study {options['slug']!r}")
        arms = set(study.conditions.values_list("key", flat=True))
        if options["reference_arm"] and options["reference_arm"] not in arms:
            raise CommandError(f"no arm {options['reference_arm']!r}; arms: {sorted(arms)}")
        shown = {"step": ""}

        def progress(fraction: float, step: str) -> None:
            kind = step.split(" ")[0]
            if kind != shown["step"]:
                shown["step"] = kind
                self.stderr.write(f"{fraction:4.0%} {step}")

        try:
            result = analyze_study(
                study,
                options["out"],
                reference_arm=options["reference_arm"],
                include_pilot=options["include_pilot"],
                fmt=options["fmt"],
                force=options["force"],
                progress=progress,
            )
        except ExportError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Export: {result.export.path}")
        self.stdout.write(f"Report: {result.report_dir / 'report.html'}")
