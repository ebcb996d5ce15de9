#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    # While `make demo` runs, commands use its database, Redis, model and key (webapp/demoenv.py).
    demo_env = Path(__file__).resolve().parent / ".local" / "demo.env"
    os.environ.setdefault("DJANGO_DEMO_ENV_FILE", str(demo_env))
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
