"""export_study <slug> --out DIR [--format csv|parquet] [--include-pilot] [--raw-ids] [--force]
export_study <slug> --out DIR --release [--include-pilot] [--force]."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.models import Study
from studies.services.exports import FORMATS, ExportError, export_study
from studies.services.release import release_export


class Command(BaseCommand):
    help = (
        "Export a study's tables (participants, messages, turn_ratings, final_surveys, events, "
        "intent_answers, document_versions) with data_dictionary.md and manifest.json. Previews "
        "are never exported; recruiting ids are pseudonymised unless --raw-ids is given. With "
        "--release: a public release of those who agreed to sharing (conversations.jsonl, "
        "pii_review.csv, README.md)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--out", required=True, type=Path, help="Folder to create.")
        parser.add_argument("--format", choices=FORMATS, default=None, dest="fmt")
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
        parser.add_argument(
            "--release",
            action="store_true",
            help="Public release in chat format: only participants who agreed to sharing, fresh "
            "ids, likely personal data flagged in pii_review.csv for review before publishing.",
        )

    def handle(self, *args, **options) -> None:
        study = Study.objects.filter(slug=options["slug"]).first()
        if study is None:
            raise CommandError(f"no study {options['slug']!r}")
        if options["release"]:
            self._release(study, options)
            return
        if options["raw_ids"]:
            self.stderr.write("Exporting RAW recruiting ids: treat the files as personal data.")
        try:
            result = export_study(
                study,
                options["out"],
                fmt=options["fmt"] or "parquet",
                include_pilot=options["include_pilot"],
                raw_ids=options["raw_ids"],
                force=options["force"],
            )
        except ExportError as exc:
            raise CommandError(str(exc)) from exc
        counts = ", ".join(f"{name} {n}" for name, n in result.row_counts.items())
        self.stdout.write(f"Wrote {result.path} ({counts}).")

    def _release(self, study: Study, options: dict) -> None:
        if options["raw_ids"] or options["fmt"]:
            raise CommandError(
                "--release has its own format and never carries recruiting ids: "
                "drop --format and --raw-ids."
            )
        try:
            result = release_export(
                study,
                options["out"],
                include_pilot=options["include_pilot"],
                force=options["force"],
            )
        except ExportError as exc:
            raise CommandError(str(exc)) from exc
        arms = ", ".join(f"{arm} {n}" for arm, n in result.per_arm.items()) or "none"
        self.stdout.write(
            f"Wrote {result.path}: {result.conversations} conversations ({arms}); "
            f"{result.flagged} spans of likely personal data flagged in pii_review.csv. "
            "Review them before publishing."
        )
