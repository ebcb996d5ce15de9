"""Browser tests: the web app as a real uvicorn process on the test database, driven by Chromium.

The browser is the system Chromium (`apt-get install chromium`), driven by Playwright's sync API;
Playwright's own browser download is not used.
"""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.conf import settings
from django.db import connection, connections
from playwright.sync_api import Page, sync_playwright

from tests.e2e.pages import scripted_model  # noqa: F401 (a fixture of the CSP and XSS tests)
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SERVER_START_TIMEOUT = 30.0
LOG_TAIL_LINES = 150

# What to attach to a failed test's report: (title, function that reads it now).
DIAGNOSTICS = pytest.StashKey[list[tuple[str, Callable[[], str]]]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    """On failure, append the web server's log tail and the browser console to the report."""
    report = yield
    if report.failed:
        for title, read in item.stash.get(DIAGNOSTICS, []):
            report.sections.append((title, read()))
    return report


def _diagnose(request: pytest.FixtureRequest, title: str, read: Callable[[], str]) -> None:
    request.node.stash.setdefault(DIAGNOSTICS, []).append((title, read))


@pytest.fixture(autouse=True)
def _close_model_clients() -> None:
    """Replace the suite's async autouse fixture of this name with nothing.

    This process makes no model clients (the server subprocess does), and a pytest-asyncio loop
    around the test would only sit beside the loop that Playwright's sync API runs for itself.
    """


@pytest.fixture(autouse=True)
def _allow_django_orm_beside_playwright(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the test body use the ORM while Playwright's sync API is active.

    Playwright's sync API runs an asyncio loop in this thread (switching to it with greenlets), so
    Django sees a running loop and refuses ORM calls with SynchronousOnlyOperation. The ORM is
    still used from this one thread only, never from Playwright's callbacks (`browsing` closes the
    connection it gets). Only for these tests: the web server subprocess keeps Django's check
    (`_server_env` removes the variable).
    """
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def database_url(db: Mapping[str, Any]) -> str:
    """A DATABASE_URL that webapp/settings.py (django-environ) turns back into `db`'s connection."""
    auth = quote(str(db.get("USER") or ""), safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(str(db["PASSWORD"]), safe="")
    host, port = str(db.get("HOST") or ""), db.get("PORT")
    query = {key: str(value) for key, value in (db.get("OPTIONS") or {}).items()}
    if host.startswith("/"):
        # A unix-socket directory (embedded Postgres): django-environ keeps a percent-encoded
        # netloc host as it is, so it goes, percent-encoded, in libpq's `host` parameter.
        query["host"], host = host, ""
    netloc = f"{auth}@{host}" + (f":{port}" if port else "")
    url = f"postgres://{netloc}/{quote(str(db['NAME']), safe='')}"
    return url + ("?" + urlencode(query) if query else "")


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    env.update(
        {
            "DATABASE_URL": database_url(settings.DATABASES["default"]),
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            "DJANGO_DEBUG": "false",
            "DJANGO_SECURE_COOKIES": "false",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_HSTS_SECONDS": "0",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "WHITENOISE_USE_FINDERS": "true",
            "WHITENOISE_AUTOREFRESH": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _wait_until_healthy(base_url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the web server exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(
        f"the web server did not answer /healthz in {SERVER_START_TIMEOUT}s:\n{_tail(log_path)}"
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_for_server_sessions_to_end(timeout: float = 10.0) -> None:
    """Wait until the stopped server's database sessions are gone.

    Postgres ends a backend a moment after its client process exits; pytest-django's DROP
    DATABASE fails ("being accessed by other users") if it comes first, as it does when this is
    the session's last test.
    """
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while True:
            cursor.execute(query)
            if cursor.fetchone()[0] == 0 or time.monotonic() > deadline:
                return
            time.sleep(0.1)


@pytest.fixture
def web_server(
    request: pytest.FixtureRequest, transactional_db: None, tmp_path: Path
) -> Iterator[str]:
    """The ASGI app under uvicorn on a free port, on this test's (committed) database.

    Needs `django_db(transaction=True)`: the server is another process and only sees committed
    rows. Yields the base URL; the server's output goes to a log whose tail a failure report shows.
    """
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "web-server.log"
    command = [sys.executable, "-m", "uvicorn", "webapp.asgi:application"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=_server_env(), stdout=log, stderr=subprocess.STDOUT
        )
    _diagnose(request, f"web server log (last {LOG_TAIL_LINES} lines)", lambda: _tail(log_path))
    try:
        _wait_until_healthy(base_url, proc, log_path)
        yield base_url
    finally:
        _stop(proc)
        _wait_for_server_sessions_to_end()


@dataclass
class Browsing:
    """One Chromium page on the web server, and the uncaught script errors it has raised."""

    page: Page
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def browsing(request: pytest.FixtureRequest, web_server: str) -> Iterator[Browsing]:
    """A Chromium page whose relative URLs go to `web_server`; it closes before the server stops."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    console: list[str] = []
    _diagnose(request, "browser console", lambda: "\n".join(console) or "(empty)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            context = browser.new_context(
                base_url=web_server, viewport={"width": 1000, "height": 900}
            )
            browsing = Browsing(context.new_page())
            browsing.page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            browsing.page.on("pageerror", lambda e: browsing.errors.append(str(e)))
            yield browsing
            context.close()
        finally:
            browser.close()
            # While Playwright's loop runs, asgiref keys Django's connections by context instead of
            # by thread, so ORM calls made in the test got a connection of their own: close it
            # here, still inside that context, or it outlives the test and blocks DROP DATABASE.
            connections.close_all()
