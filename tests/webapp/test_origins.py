"""The chat socket admits only the site's own origins: scheme, host and port all compared."""

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.test import override_settings

from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@sync_to_async
def chatting_cookie() -> tuple[str, bytes]:
    """A participant at the chat step and their session cookie."""
    participant = advance_to_chat(ParticipantFactory(study=three_arm_study()))
    session = SessionStore()
    session[f"participant:{participant.study.slug}"] = participant.pk
    session.create()
    cookie = f"{settings.SESSION_COOKIE_NAME}={session.session_key}".encode()
    return participant.study.slug, cookie


async def opens(origin: bytes | None, host: bytes = b"localhost:8000", **scope) -> bool:
    """Whether the real ASGI application accepts the chat socket with these headers."""
    from webapp.asgi import application

    slug, cookie = await chatting_cookie()
    headers = [(b"host", host), (b"cookie", cookie)]
    headers += [(b"origin", origin)] if origin is not None else []
    headers += scope.pop("extra_headers", [])
    comm = WebsocketCommunicator(application, f"/ws/s/{slug}/chat/", headers=headers)
    comm.scope.update(scope)
    connected, _ = await comm.connect(timeout=10)
    if connected:
        await comm.disconnect()
    return connected


async def test_the_exact_own_origin_is_accepted():
    assert await opens(b"http://localhost:8000")


async def test_the_same_host_on_another_port_is_refused():
    assert not await opens(b"http://localhost:8001")


async def test_the_same_host_and_port_with_another_scheme_is_refused():
    assert not await opens(b"https://localhost:8000")


async def test_a_default_port_equals_no_port():
    assert await opens(b"http://localhost:80", host=b"localhost")
    assert not await opens(b"http://localhost", host=b"localhost:8080")


async def test_a_missing_origin_is_refused_as_channels_does():
    assert not await opens(None)


@pytest.mark.parametrize("origin", [b"null", b"localhost:8000", b"ws://localhost:8000", b"\xff"])
async def test_an_unreadable_origin_is_refused(origin):
    assert not await opens(origin)


async def test_a_host_that_is_not_allowed_is_refused_even_when_it_matches_the_origin():
    # DNS rebinding: the attacker's name points at us, so Host and Origin agree.
    assert not await opens(b"http://evil.example:8000", host=b"evil.example:8000")


async def test_https_behind_the_proxy_is_the_own_origin():
    proxied = [(b"x-forwarded-proto", b"https")]
    assert await opens(b"https://localhost", host=b"localhost", extra_headers=proxied)
    assert not await opens(b"http://localhost", host=b"localhost", extra_headers=proxied)
    assert await opens(b"https://localhost", host=b"localhost", scheme="wss")


@override_settings(
    CSRF_TRUSTED_ORIGINS=["https://study.example.org", "https://*.partner.example"],
    SITE_URL="https://public.example.net",
)
async def test_trusted_origins_and_the_site_url_are_accepted_exactly():
    assert await opens(b"https://study.example.org")
    assert await opens(b"https://public.example.net:443")
    assert await opens(b"https://a.partner.example")
    assert not await opens(b"https://study.example.org:8443")
    assert not await opens(b"http://study.example.org")
    assert not await opens(b"https://a.partner.example:8443")
    assert not await opens(b"https://public.example.net.evil.example")


def test_the_websocket_route_uses_the_site_origin_validator():
    from webapp.asgi import application
    from webapp.origins import SiteOriginValidator

    assert isinstance(application.application_mapping["websocket"], SiteOriginValidator)


@pytest.mark.parametrize(
    "value,expected",
    [
        ("https://Study.Example.org", ("https", "study.example.org", 443)),
        ("http://h:8000/", ("http", "h", 8000)),
        ("http://h:99999", None),
        ("ftp://h", None),
        ("https://h/path", None),
    ],
)
def test_origins_are_parsed_to_scheme_host_and_port(value, expected):
    from webapp.origins import parse_origin

    assert parse_origin(value) == expected
