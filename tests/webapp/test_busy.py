"""Bursts queue, never fail: a real uvicorn process with a tiny pool on the test database.

A request waits for a pooled connection; one that gets none in time, or that PostgreSQL refuses
("too many clients"), gets the 503 busy page (webapp/busy.py), never a 500, and nothing of it is
stored. Threads stand in for browsers; each has its own cookies.
"""

import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from html import unescape
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection, transaction

from studies.models import Event, Participant, Study
from tests.e2e import conftest as e2e
from tests.factories import three_arm_study
from tests.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

APP_NAME = "busy-test-web"
Serve = Callable[..., str]


@pytest.fixture
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Serve]:
    """Start uvicorn on the test database with extra environment values; stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(database_url: str | None = None, **env: str) -> str:
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        log_path = tmp_path / f"web-{port}.log"
        server_env = e2e._server_env() | env
        if database_url is not None:
            server_env["DATABASE_URL"] = database_url
        command = [sys.executable, "-m", "uvicorn", "webapp.asgi:application"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command, cwd=e2e.ROOT, env=server_env, stdout=log, stderr=subprocess.STDOUT
            )
        started.append(proc)
        e2e._diagnose(request, f"web server log {port}", lambda: e2e._tail(log_path))
        e2e._wait_until_healthy(base_url, proc, log_path)
        return base_url

    yield start
    for proc in started:
        e2e._stop(proc)
    e2e._wait_for_server_sessions_to_end()


def app_database_url(**options: str) -> str:
    db = settings.DATABASES["default"]
    plain = {k: v for k, v in db.items() if k != "OPTIONS"}
    extra = {k: v for k, v in (db.get("OPTIONS") or {}).items() if k != "pool"}
    return e2e.database_url({**plain, "OPTIONS": {**extra, **options}})


def pooled(max_size: int, timeout: float) -> dict[str, str]:
    return {
        "DATABASE_POOL": "true",
        "DATABASE_POOL_MIN_SIZE": "1",
        "DATABASE_POOL_MAX_SIZE": str(max_size),
        "DATABASE_POOL_TIMEOUT": str(timeout),
    }


def prolific_study() -> Study:
    return three_arm_study(recruiting_source=Study.Source.PROLIFIC, block_size=3)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert found, html[:2000]
    return found[1]


def hidden_fields(html: str) -> dict[str, str]:
    pairs = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html)
    return {name: unescape(value) for name, value in pairs}


def browser(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=120, follow_redirects=False)


@pytest.fixture
def browsers() -> Iterator[Callable[[str], httpx.Client]]:
    """Browsers (cookie jars) that are closed after the test."""
    made: list[httpx.Client] = []

    def make(base_url: str) -> httpx.Client:
        made.append(browser(base_url))
        return made[-1]

    yield make
    for client in made:
        client.close()


def entry(client: httpx.Client, study: Study, pid: str) -> httpx.Response:
    params = {"PROLIFIC_PID": pid, "STUDY_ID": "s1", "SESSION_ID": f"sess-{pid}"}
    return client.get(f"/s/{study.slug}/", params=params)


def consent(client: httpx.Client, study: Study, token: str, **fields: str) -> httpx.Response:
    data = {"csrfmiddlewaretoken": token, "choice": "agree", **fields}
    return client.post(f"/s/{study.slug}/consent/", data=data)


def consent_page(client: httpx.Client, study: Study, pid: str) -> str:
    """Arrive and open the consent page; return its CSRF token."""
    arrived = entry(client, study, pid)
    assert arrived.status_code == 302, arrived.text[:2000]
    page = client.get(arrived.headers["location"])
    assert page.status_code == 200
    return csrf_token(page.text)


def lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_no_connection_in_time_gives_the_busy_page_and_stores_nothing(serve: Serve, browsers):
    study = prolific_study()
    base_url = serve(**pooled(max_size=1, timeout=1))
    holder, late_reader, late_consenter = browsers(base_url), browsers(base_url), browsers(base_url)
    holder_token = consent_page(holder, study, "holder")
    late_token = consent_page(late_consenter, study, "consenter")
    held: list[httpx.Response] = []
    with transaction.atomic():
        # The holder's consent waits on its own row, keeping the server's only connection.
        Participant.objects.select_for_update().get(external_id="prolific:holder")
        thread = threading.Thread(target=lambda: held.append(consent(holder, study, holder_token)))
        thread.start()
        wait_for(lambda: lock_waiters() >= 1)

        arrival = entry(late_reader, study, "newcomer")
        assert arrival.status_code == 503
        assert arrival.headers["Retry-After"].isdigit()
        assert 'data-reload="1"' in arrival.text and "js/busy.js" in arrival.text
        assert not Participant.objects.filter(external_id="prolific:newcomer").exists()

        refused = consent(late_consenter, study, late_token)
        assert refused.status_code == 503
        assert "data-reload" not in refused.text
        again = hidden_fields(refused.text)
        assert again["choice"] == "agree"
        late = Participant.objects.get(external_id="prolific:consenter")
        assert late.status == Participant.Status.ENTERED and late.condition_id is None
        assert not Event.objects.filter(
            participant=late, kind="study.participant.consented"
        ).exists()
    thread.join(timeout=60)
    assert [r.status_code for r in held] == [302]

    token = csrf_token(refused.text)
    resent = late_consenter.post(
        f"/s/{study.slug}/consent/", data={**again, "csrfmiddlewaretoken": token}
    )
    assert resent.status_code == 302 and resent.headers["location"].endswith("/brief/")
    late.refresh_from_db()
    assert late.status == Participant.Status.CONSENTED


def test_postgresql_refusing_the_connection_gives_the_busy_page(serve: Serve, browsers):
    study = prolific_study()
    role = f"busy_{uuid.uuid4().hex[:12]}"
    with connection.cursor() as cursor:
        # A role allowed no connection: PostgreSQL answers as when max_connections is reached
        # (SQLSTATE 53300, too_many_connections).
        cursor.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        url = app_database_url()
        url = re.sub(r"^postgres://[^@]*@", f"postgres://{role}@", url)
        base_url = serve(database_url=url, DATABASE_POOL="false")
        response = entry(browsers(base_url), study, "refused")
        assert response.status_code == 503, response.text[:2000]
        assert response.headers["Retry-After"].isdigit()
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP ROLE IF EXISTS {role}")
    assert not Participant.objects.filter(study=study).exists()


def server_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            [APP_NAME],
        )
        return cursor.fetchone()[0]


def test_a_burst_larger_than_the_pool_queues_and_every_arrival_is_assigned_once(serve: Serve):
    study = prolific_study()
    base_url = serve(
        database_url=app_database_url(application_name=APP_NAME), **pooled(max_size=2, timeout=60)
    )
    distinct = [f"burst{i:02d}" for i in range(27)]
    ids = [*distinct, *distinct[::9]]  # 30 arrivals, 3 of them a second browser with a known id
    codes: list[int] = []
    start = threading.Barrier(len(ids))

    def arrive(pid: str) -> None:
        with browser(base_url) as client:
            start.wait()
            arrived = entry(client, study, pid)
            codes.append(arrived.status_code)
            if arrived.status_code != 302 or "/consent/" not in arrived.headers["location"]:
                return
            page = client.get(arrived.headers["location"])
            codes.append(page.status_code)
            codes.append(consent(client, study, csrf_token(page.text)).status_code)

    peak = 0
    threads = [threading.Thread(target=arrive, args=(pid,)) for pid in ids]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, server_connections())
        time.sleep(0.02)
    counts = Counter(codes)
    assert not [code for code in counts if code >= 500], counts
    assert counts[302] >= 2 * len(distinct)
    people = list(Participant.objects.filter(study=study))
    assert sorted(p.external_id for p in people) == sorted(f"prolific:{x}" for x in distinct)
    assert all(p.status == Participant.Status.CONSENTED for p in people)
    positions = Counter(
        (p.allocation["arm"]["stratum"], p.allocation["arm"]["position"]) for p in people
    )
    assert max(positions.values()) == 1
    assert 1 <= peak <= 2
