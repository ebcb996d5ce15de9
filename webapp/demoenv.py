"""The running demo's environment, left in a file so `manage.py` in another terminal can use it.

`make demo` (webapp/devrunner.py) writes .local/demo.env while it runs and removes it on exit:
the database, Redis, model endpoint, secret key file and local-http settings its own processes
got. manage.py names the file in DJANGO_DEMO_ENV_FILE and webapp/settings.py reads it beneath the
process environment. Plain Python, no Django: the dev runner imports it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PID_NAME = "DEMO_PID"
HEADER = (
    "# Written by `make demo` while it runs (pid {pid}); removed when it stops. manage.py\n"
    "# reads it (webapp/settings.py) beneath the process environment. Do not edit or copy it.\n"
)


class DemoEnvError(Exception):
    """The file exists but must not be used (someone else's, or readable by others)."""


def write_demo_env(path: Path, values: Mapping[str, str], *, pid: int) -> None:
    """Write values to path, readable by this user only (DATABASE_URL may hold a password)."""
    for name, value in values.items():
        if "\n" in value or "\r" in value or "=" in name:
            raise ValueError(f"{name} cannot be written to an environment file")
    text = HEADER.format(pid=pid) + f"{PID_NAME}={pid}\n"
    text += "".join(f"{name}={value}\n" for name, value in sorted(values.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # An older file may have been created with other permissions: O_CREAT keeps those.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def remove_demo_env(path: Path, *, pid: int) -> None:
    """Remove path if the demo with pid wrote it (a later demo may have written its own since)."""
    try:
        if parse(path.read_text()).get(PID_NAME) == str(pid):
            path.unlink()
    except FileNotFoundError:
        pass


def parse(text: str) -> dict[str, str]:
    """NAME=value lines; blank lines and # comments skipped; values taken as they are."""
    values = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value
    return values


def read_demo_env(path: Path) -> dict[str, str]:
    """The running demo's variables; {} when there is no file or its demo is no longer running."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    if stat.st_uid != os.getuid() or stat.st_mode & 0o077:
        raise DemoEnvError(
            f"{path} must belong to this user and be readable by no one else (chmod 600 it, or "
            "delete it: `make demo` writes it again)"
        )
    values = parse(path.read_text())
    pid = values.pop(PID_NAME, "")
    return values if pid.isdigit() and _alive(int(pid)) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
