"""`manage.py ensure_admin`: create the superuser, or reset its password, and print the password."""

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction


class Command(BaseCommand):
    help = "Create or reset a superuser with a freshly generated password, and print it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="admin@example.org")

    def handle(self, *args: Any, username: str, email: str, **options: Any) -> None:
        password = secrets.token_urlsafe(12)
        with transaction.atomic():
            user, created = get_user_model().objects.get_or_create(
                username=username, defaults={"email": email}
            )
            user.is_staff = True
            user.is_superuser = True
            user.is_active = True
            user.set_password(password)
            user.save()
        self.stdout.write(f"Superuser {username!r} {'created' if created else 'reset'}.")
        # webapp.devrunner reads these two lines.
        self.stdout.write(f"username: {username}")
        self.stdout.write(f"password: {password}")
