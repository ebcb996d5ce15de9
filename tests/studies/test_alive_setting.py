"""CHAT_ALIVE_SECONDS must be a positive TTL: at 0 the liveness loop (which renews four
times per TTL) would spin, and Redis refuses a key with a TTL of 0 ms.

`manage.py check` (run by migrate and the deploy check too) refuses such a value with a clear
error; a process started without the checks (uvicorn) still renews at a sane pace.
"""

import uuid

import pytest
from django.core.checks import Error, run_checks

from studies.services import inflight
from studies.services.inflight import MIN_ALIVE_SECONDS


@pytest.fixture(autouse=True)
def _own_keys(monkeypatch) -> None:
    monkeypatch.setattr(inflight, "KEY_PREFIX", f"test-replies-{uuid.uuid4().hex}")


def alive_errors() -> list:
    return [m for m in run_checks() if m.id == "collabllm.E001"]


@pytest.mark.parametrize("value", [0, 0.0, -3.0, 0.0004])
def test_the_system_check_refuses_a_liveness_ttl_that_is_not_positive(settings, value):
    settings.CHAT_ALIVE_SECONDS = value
    (error,) = alive_errors()
    assert isinstance(error, Error) and "CHAT_ALIVE_SECONDS" in error.msg
    assert str(value) in error.msg


def test_the_system_check_accepts_the_shipped_liveness_ttl(settings):
    settings.CHAT_ALIVE_SECONDS = 3.0
    assert alive_errors() == []
    settings.CHAT_ALIVE_SECONDS = MIN_ALIVE_SECONDS
    assert alive_errors() == []


@pytest.mark.parametrize("value", [0, -1.0])
def test_a_process_started_without_the_checks_still_marks_replies_alive(settings, value):
    settings.CHAT_ALIVE_SECONDS = value
    assert inflight.alive_ttl() >= MIN_ALIVE_SECONDS  # renewed four times per TTL: never a spin
    inflight.alive_mark(7)  # Redis refuses a TTL of 0 ms
    assert inflight.alive_among([7]) == {7}
    inflight.alive_clear(7)
