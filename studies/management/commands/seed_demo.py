from django.core.management.base import BaseCommand

from studies.demo import seed_demo


class Command(BaseCommand):
    help = "Create or update the demo study (three arms, three document types); idempotent."

    def add_arguments(self, parser):
        parser.add_argument("--slug", default="demo")
        parser.add_argument("--min-turns", type=int, default=8)
        parser.add_argument("--rating-every", type=int, default=3)

    def handle(self, *args, **options):
        study = seed_demo(
            slug=options["slug"],
            min_turns=options["min_turns"],
            rating_every=options["rating_every"],
        )
        arms = ", ".join(study.conditions.values_list("key", flat=True))
        self.stdout.write(f"Study '{study.slug}' ready: arms {arms}; {study.tasks.count()} topics.")
