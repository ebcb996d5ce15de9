"""An endpoint's API key comes only from variables the deployment allows, never a site secret."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from studies.models import ModelEndpoint
from studies.services.endpoints import endpoint_client_spec, endpoint_health_check
from tests.factories import ModelEndpointFactory

pytestmark = pytest.mark.django_db
SECRET = "the-site-secret-key-0123456789"


class _Recorder(BaseHTTPRequestHandler):
    """Answers GET /v1/models and remembers the Authorization header of each request."""

    seen: list[str | None] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"data": [{"id": "fake"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str | None]]]:
    """A local server standing in for an attacker's: its URL and the headers it received."""
    handler = type("Handler", (_Recorder,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler.seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def researcher() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("researcher", "r@example.org", "pw-r-1"))
    return client


def _endpoint_form(api_key_env: str) -> dict[str, str]:
    return {
        "name": "mine", "base_url": "http://127.0.0.1:9/v1", "served_model": "fake",
        "api_key_env": api_key_env, "server": "external", "launch": "{}", "replica_urls": "[]",
        "max_concurrent_streams": "4", "connect_timeout": "5", "read_timeout": "60",
    }  # fmt: skip


def test_the_admin_refuses_an_endpoint_that_names_the_secret_key(researcher):
    response = researcher.post(
        reverse("admin:studies_modelendpoint_add"), _endpoint_form("DJANGO_SECRET_KEY")
    )
    assert response.status_code == 200
    assert "may not be sent to a model endpoint" in response.content.decode()
    assert not ModelEndpoint.objects.exists()


def test_the_admin_saves_an_endpoint_that_names_an_allowed_variable(researcher):
    response = researcher.post(
        reverse("admin:studies_modelendpoint_add"), _endpoint_form("MODEL_API_KEY_OPENAI")
    )
    assert response.status_code == 302
    assert ModelEndpoint.objects.get().api_key_env == "MODEL_API_KEY_OPENAI"


@pytest.mark.parametrize("name", ["DJANGO_SECRET_KEY", "DATABASE_URL", "HOME", "PATH"])
def test_validation_refuses_variables_outside_the_allow_list(name):
    with pytest.raises(ValidationError):
        ModelEndpointFactory.build(api_key_env=name).full_clean()


def test_the_allow_list_setting_admits_a_listed_name_but_never_the_secret_key(settings):
    settings.MODEL_API_KEY_ENV_ALLOWED = ["OPENAI_API_KEY", "DJANGO_SECRET_KEY"]
    ModelEndpointFactory.build(api_key_env="OPENAI_API_KEY").full_clean()
    with pytest.raises(ValidationError):
        ModelEndpointFactory.build(api_key_env="DJANGO_SECRET_KEY").full_clean()


def test_a_row_saved_before_the_rule_sends_no_authorization_header(recorder, monkeypatch):
    url, seen = recorder
    monkeypatch.setenv("DJANGO_SECRET_KEY", SECRET)
    endpoint = ModelEndpointFactory(base_url=url)
    ModelEndpoint.objects.filter(pk=endpoint.pk).update(api_key_env="DJANGO_SECRET_KEY")
    endpoint.refresh_from_db()
    health, _ = endpoint_health_check(endpoint)
    assert health == "up" and seen == [None]
    assert SECRET not in endpoint_client_spec(endpoint).api_key


def test_an_allowed_variable_is_sent_as_the_bearer_token(recorder, monkeypatch):
    url, seen = recorder
    monkeypatch.setenv("MODEL_API_KEY_TEST", "provider-key-1")
    endpoint = ModelEndpointFactory(base_url=url, api_key_env="MODEL_API_KEY_TEST")
    endpoint_health_check(endpoint)
    assert seen == ["Bearer provider-key-1"]
    assert endpoint_client_spec(endpoint).api_key == "provider-key-1"
