"""A benchmark's own PostgreSQL database: (re)create it on the server DATABASE_URL names, migrate
it, drop it; the production-like environment of its web processes; the commit it measured.
Shared by the benchmarks that need a throwaway database."""

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


def database_url(server_url: str, name: str) -> str:
    """`server_url` pointing at database `name` instead."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def _maintenance(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql", path="/postgres"))


def database_prepare(url: str, env: dict[str, str], *, fresh: bool = False) -> None:
    """Create the database `url` names if missing (drop it first when `fresh`), then migrate it
    with `manage.py migrate` under `env`."""
    import psycopg
    from psycopg import sql

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(_maintenance(url), autocommit=True) as conn:
        if fresh:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not found:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    command = [sys.executable, "manage.py", "migrate", "--noinput"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def database_drop(url: str) -> None:
    import psycopg
    from psycopg import sql

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(_maintenance(url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def production_env(database: str, **extra: str) -> dict[str, str]:
    """This process's environment with production settings (except plain-http cookies) on the
    database URL `database`, then `extra`; no secret-key file, quiet logs."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="bench-" + "x" * 50,
        DJANGO_SECURE_COOKIES="false",
        DJANGO_SECURE_SSL_REDIRECT="false",
        DJANGO_HSTS_SECONDS="0",
        DJANGO_ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
        DATABASE_URL=database,
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    env.pop("DJANGO_SECRET_KEY_FILE", None)
    return env


def git_commit() -> str:
    """The checkout's short commit id, for the results ("unknown" outside git)."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"
