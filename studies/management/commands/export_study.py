"""export_study <slug> --out DIR [--format csv|parquet] [--include-pilot] [--raw-ids] [--force]."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.models import Study
from studies.services.exports import FORMATS, ExportError, export_study


class Command(BaseCommand):
    help = (
        "Export a study's tables (participants, messages, turn_ratings, final_surveys, events, "
        "intent_answers, document_versions) with data_dictionary.md and manifest.json. Previews "
        "are never exported; recruiting ids are pseudonymised unless --raw-ids is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--out", required=True, type=Path, help="Folder to create.")
        parser.add_argument("--format", choices=FORMATS, default="parquet", dest="fmt")
        parser.add_argument(
            "--include-pilot", action="store_true", help="Also export pilot participants."
        )
        parser.add_argument(
            "--raw-ids",
            action="store_true",
            help="Export the raw recruiting ids (personal data) instead of keyed hashes.",
        )
        parser.add_argument(
            "--force", action="store_true", help="Replace --out if it is not empty."
        )

    def handle(self, *args, **options) -> None:
        study = Study.objects.filter(slug=options["slug"]).first()
        if study is None:
            raise CommandError(f"no study {options['slug']!r}")
        if options["raw_ids"]:
            self.stderr.write("Exporting RAW recruiting ids: treat the files as personal data.")
        try:
            result = export_study(
                study,
                options["out"],
                fmt=options["fmt"],
                include_pilot=options["include_pilot"],
                raw_ids=options["raw_ids"],
                force=options["force"],
            )
        except ExportError as exc:
            raise CommandError(str(exc)) from exc
        counts = ", ".join(f"{name} {n}" for name, n in result.row_counts.items())
        self.stdout.write(f"Wrote {result.path} ({counts}).")
