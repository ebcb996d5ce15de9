"""pilot_study <slug> --participants N [--concurrency C]: simulated participants, then a report."""

import json
from contextlib import nullcontext

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.models import Study
from studies.pilot.runner import pilot_study, report_table
from studies.pilot.server import served, site_answers


class Command(BaseCommand):
    help = (
        "Pilot a study with simulated participants (flagged is_pilot) through the real pages and "
        "chat socket; print completion, errors per step and time per turn."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--participants", type=int, default=5)
        parser.add_argument("--concurrency", type=int, default=2)
        parser.add_argument("--base-url", default=None, help="Default: settings.SITE_URL.")
        parser.add_argument(
            "--serve",
            action="store_true",
            help="Start a web server for the run (also done when nothing answers at the URL).",
        )
        parser.add_argument(
            "--simulator-endpoint",
            default=None,
            help="ModelEndpoint name for the user simulator; default: the first active arm's.",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args, **options) -> None:
        study = Study.objects.filter(slug=options["slug"]).first()
        if study is None:
            raise CommandError(f"no study {options['slug']!r}")
        if options["participants"] < 1 or options["concurrency"] < 1:
            raise CommandError("--participants and --concurrency must be at least 1")
        base_url = options["base_url"] or settings.SITE_URL
        serve = options["serve"] or not site_answers(base_url)
        with served() if serve else nullcontext(base_url) as url:
            if serve:
                self.stderr.write(f"started a web server at {url} for the pilot")
            report = pilot_study(
                study,
                participants=options["participants"],
                concurrency=options["concurrency"],
                base_url=url,
                simulator_endpoint=options["simulator_endpoint"],
                seed=options["seed"],
            )
        self.stdout.write(json.dumps(report, indent=2) if options["json"] else report_table(report))
        missing = report["participants"] - report["completed"]
        if missing:
            raise CommandError(
                f"{missing} of {report['participants']} participants did not complete"
            )
