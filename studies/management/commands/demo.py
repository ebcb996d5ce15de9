"""`manage.py demo`: the same as `python -m webapp.devrunner demo` (and `make demo`)."""

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Start embedded services, seed the demo study and run web + worker + model server."

    def handle(self, *args: Any, **options: Any) -> None:
        # The runner is replaced in, not imported: studies never imports webapp (STYLE.md), and
        # the runner owns signals and child processes, which a clean process suits best.
        sys.stdout.flush()
        sys.stderr.flush()
        os.chdir(settings.BASE_DIR)
        os.execv(sys.executable, [sys.executable, "-m", "webapp.devrunner", "demo"])
