"""Settings read everything from the environment; .env.example documents each variable."""

import ast
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def settings_env_names() -> set[str]:
    """Names of the variables webapp/settings.py reads through `env(...)` or `env.<cast>(...)`."""
    tree = ast.parse((ROOT / "webapp" / "settings.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        reads_env = (isinstance(func, ast.Name) and func.id == "env") or (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "env"
        )
        first = node.args[0]
        if reads_env and isinstance(first, ast.Constant) and isinstance(first.value, str):
            names.add(first.value)
    return names


def example_names() -> set[str]:
    """Names assigned in .env.example, commented-out alternatives included."""
    pattern = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
    return set(pattern.findall((ROOT / ".env.example").read_text()))


def test_the_settings_scan_finds_the_variables():
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL"} <= settings_env_names()


def test_env_example_names_every_variable_settings_reads():
    missing = settings_env_names() - example_names()
    assert not missing, f".env.example does not name: {sorted(missing)}"


def production_env() -> dict[str, str]:
    """This environment with docker/production.env.example's values, secrets given inline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "UVICORN_"))}
    for line in (ROOT / "docker" / "production.env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            env[name.strip()] = value.strip()
    del env["DJANGO_SECRET_KEY_FILE"], env["METRICS_TOKEN_FILE"]
    env["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    env["METRICS_TOKEN"] = secrets.token_urlsafe(32)
    return env


def test_deploy_checks_pass_with_production_values():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_shipped_production_values_pool_and_health_check_database_connections():
    # The pool is built as the web process would build it (not opened: no server is needed).
    probe = (
        "import json, django; django.setup()\n"
        "from django.db import connection\n"
        "pool = connection.pool\n"
        "d = connection.settings_dict\n"
        "print(json.dumps([d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS'], pool.max_size,"
        " pool._check is not None]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=production_env() | {"DJANGO_SETTINGS_MODULE": "webapp.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    max_age, health_checks, max_size, checked = json.loads(result.stdout.splitlines()[-1])
    # Persistent connections leak under ASGI; the pool is how connections are kept and reused.
    assert (max_age, health_checks, checked) == (0, True, True) and max_size >= 2
