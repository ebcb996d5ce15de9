"""The project's deploy checks (webapp/checks.py) warn where each is meant to, and only there."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
from channels.routing import ProtocolTypeRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.core.checks import run_checks
from django.test import override_settings

from tests.test_settings import ROOT, production_env
from webapp import checks

# Settings under which none of the project's checks has anything to say.
GOOD = {
    "ALLOWED_HOSTS": ["study.example.org"],
    "CSRF_TRUSTED_ORIGINS": ["https://study.example.org"],
    "SECURE_SSL_REDIRECT": True,
    "REDIS_URL": "redis://redis:6379/0",
    "CELERY_BROKER_URL": "redis://redis:6379/0",
    "UVICORN_WS_MAX_SIZE": 65536,
    "CHAT_MAX_MESSAGE_CHARS": 4000,
    "METRICS_TOKEN": "x" * 32,
    "CELERY_TASK_ALWAYS_EAGER": False,
}

bare_websocket_app = ProtocolTypeRouter({"websocket": SimpleNamespace()})


@pytest.fixture(autouse=True)
def _pooled_database(monkeypatch):
    """The shipped connection settings, whatever this test run uses; no test here opens a
    connection, so no pool is ever made."""
    default = settings.DATABASES["default"]
    monkeypatch.setitem(default, "OPTIONS", {**default.get("OPTIONS", {}), "pool": True})
    monkeypatch.setitem(default, "CONN_MAX_AGE", 0)
    monkeypatch.setitem(default, "CONN_HEALTH_CHECKS", True)
    return default


def ids(**overrides) -> set[str]:
    with override_settings(**(GOOD | overrides)):
        found = run_checks(include_deployment_checks=True, tags=["collabllm"])
    return {m.id for m in found}


def test_no_project_check_warns_under_good_settings():
    assert ids() == set()


def test_it_warns_when_websockets_skip_the_origin_check():
    path = f"{__name__}.bare_websocket_app"
    assert "collabllm.W001" in ids(ASGI_APPLICATION=path)


def test_it_warns_about_a_wildcard_allowed_host():
    assert "collabllm.W002" in ids(ALLOWED_HOSTS=["*"])


def test_it_warns_about_a_plain_http_trusted_origin():
    assert "collabllm.W003" in ids(CSRF_TRUSTED_ORIGINS=["http://study.example.org"])


def test_it_warns_about_a_trusted_origin_that_is_not_an_allowed_host():
    assert "collabllm.W003" in ids(CSRF_TRUSTED_ORIGINS=["https://elsewhere.example.org"])


def test_it_warns_about_the_in_memory_channel_layer():
    layers = {"default": {"BACKEND": checks.IN_MEMORY_LAYER}}
    assert "collabllm.W004" in ids(CHANNEL_LAYERS=layers)


def test_it_warns_about_a_pubsub_layer_whose_sockets_time_out():
    layer = {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": "redis://redis:6379/0"}]},
    }
    assert "collabllm.W005" in ids(CHANNEL_LAYERS={"default": layer})


def test_it_warns_about_a_list_layer_with_a_tiny_capacity():
    layer = {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": ["redis://redis:6379/0"], "capacity": 10},
    }
    assert "collabllm.W005" in ids(CHANNEL_LAYERS={"default": layer})


def test_it_warns_about_redis_on_localhost():
    assert "collabllm.W006" in ids(REDIS_URL="redis://127.0.0.1:6379/0")


def test_it_warns_about_a_unix_socket_broker():
    assert "collabllm.W006" in ids(CELERY_BROKER_URL="unix:///tmp/redis.sock")


def test_it_warns_when_no_tested_asgi_server_is_installed(monkeypatch):
    monkeypatch.setattr(checks, "_installed", lambda package: (0, 1, 0))
    assert "collabllm.W007" in ids()


def test_it_warns_when_the_websocket_size_limit_is_unset():
    assert "collabllm.W008" in ids(UVICORN_WS_MAX_SIZE=0)


def test_it_warns_when_the_websocket_size_limit_is_below_a_chat_frame():
    assert "collabllm.W008" in ids(UVICORN_WS_MAX_SIZE=8000)


def test_it_warns_when_the_websocket_size_limit_is_far_above_a_chat_frame():
    assert "collabllm.W008" in ids(UVICORN_WS_MAX_SIZE=16 * 1024 * 1024)


def test_it_warns_about_ssl_redirects_without_the_proxy_header():
    assert "collabllm.W009" in ids(SECURE_PROXY_SSL_HEADER=None)


def test_it_warns_about_a_short_metrics_token():
    assert "collabllm.W010" in ids(METRICS_TOKEN="short")


def test_it_warns_about_eager_celery_tasks():
    assert "collabllm.W011" in ids(CELERY_TASK_ALWAYS_EAGER=True)


def test_it_warns_about_unpooled_database_connections(_pooled_database):
    del _pooled_database["OPTIONS"]["pool"]
    assert "collabllm.W020" in ids()


def test_it_warns_about_persistent_database_connections(_pooled_database):
    _pooled_database["CONN_MAX_AGE"] = 60
    assert "collabllm.W020" in ids()


def test_it_warns_when_database_connections_are_not_health_checked(_pooled_database):
    _pooled_database["CONN_HEALTH_CHECKS"] = False
    assert ids() == {"collabllm.W021"}


BUDGET = {"WEB_REPLICAS": 2, "WEB_PROCESSES": 2, "DATABASE_OTHER_CONNECTIONS": 10}


def test_it_warns_when_the_pools_together_exceed_max_connections(_pooled_database):
    _pooled_database["OPTIONS"]["pool"] = {"min_size": 2, "max_size": 25}
    # 2 x 2 x 25 + 10 = 110 connections against 100 - 3 reserved.
    assert ids(DATABASE_MAX_CONNECTIONS=100, **BUDGET) == {"collabllm.W022"}


def test_pools_that_fit_max_connections_or_an_unknown_limit_pass(_pooled_database):
    _pooled_database["OPTIONS"]["pool"] = {"min_size": 2, "max_size": 10}
    assert ids(DATABASE_MAX_CONNECTIONS=100, **BUDGET) == set()
    _pooled_database["OPTIONS"]["pool"] = {"min_size": 2, "max_size": 25}
    assert ids(DATABASE_MAX_CONNECTIONS=0, **BUDGET) == set()


def test_the_checks_run_only_with_deploy():
    with override_settings(**(GOOD | {"ALLOWED_HOSTS": ["*"]})):
        assert run_checks(include_deployment_checks=False, tags=["collabllm"]) == []


def test_the_checks_run_under_check_deploy_and_fail_it():
    env = production_env() | {"DJANGO_ALLOWED_HOSTS": "*", "UVICORN_WS_MAX_SIZE": "100"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "collabllm.W002" in result.stderr and "collabllm.W008" in result.stderr


hosts_only_websocket_app = ProtocolTypeRouter(
    {"websocket": AllowedHostsOriginValidator(SimpleNamespace())}
)


def test_it_warns_when_websockets_check_only_the_host_name():
    # channels' validator ignores scheme and port: another app on the same host would pass.
    assert "collabllm.W001" in ids(ASGI_APPLICATION=f"{__name__}.hosts_only_websocket_app")
