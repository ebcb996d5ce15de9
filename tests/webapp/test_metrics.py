"""/metrics is off without a token, guarded with one, and shows web and model-client figures."""

import json
import logging
import os
import subprocess
import sys

import pytest
from django.test import override_settings
from prometheus_client import REGISTRY

from models_serving import metrics as model_metrics
from tests.test_settings import ROOT
from webapp.jsonlog import JsonFormatter

TOKEN = "t" * 40


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@override_settings(METRICS_TOKEN="")
def test_metrics_are_off_without_a_token(client):
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


@override_settings(METRICS_TOKEN=TOKEN)
def test_a_wrong_token_is_refused(client):
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 403


@override_settings(METRICS_TOKEN=TOKEN)
def test_no_token_and_no_staff_session_is_refused(client):
    assert client.get("/metrics").status_code == 403


@override_settings(METRICS_TOKEN=TOKEN)
def test_the_bearer_token_reads_the_model_figures(client):
    model_metrics.observe_reply("test-model", "completed", ttft=0.3, itl=0.02, tokens=40)
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    body = response.content.decode()
    assert 'collabllm_model_requests_total{endpoint="test-model",outcome="completed"}' in body
    assert "collabllm_model_ttft_seconds_bucket" in body


@pytest.mark.django_db
@override_settings(METRICS_TOKEN=TOKEN, SECURE_SSL_REDIRECT=True)
def test_a_replica_is_scraped_by_its_own_address_with_the_token(client):
    # Prometheus reaches each web replica by IP over plain http: not an allowed host, not https.
    scrape = client.get("/metrics", HTTP_HOST="10.0.0.5:8000", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert scrape.status_code == 200 and b"collabllm_http_requests_total" in scrape.content
    # Anything else from that address still meets the host check and the redirect.
    assert client.get("/metrics", HTTP_HOST="10.0.0.5:8000").status_code == 400
    assert client.get("/healthz", HTTP_HOST="10.0.0.5:8000").status_code == 400


@override_settings(METRICS_TOKEN=TOKEN)
def test_a_staff_session_reads_the_metrics(admin_client):
    assert admin_client.get("/metrics").status_code == 200


def test_observe_reply_counts_the_turn_and_the_tokens():
    before_failed = sample("collabllm_chat_turns_total", outcome="failed")
    before_tokens = sample("collabllm_model_completion_tokens_total", endpoint="m-obs")
    model_metrics.observe_reply("m-obs", "timeout", ttft=None, itl=None, tokens=7)
    assert sample("collabllm_chat_turns_total", outcome="failed") == before_failed + 1
    assert sample("collabllm_model_completion_tokens_total", endpoint="m-obs") == before_tokens + 7
    assert sample("collabllm_model_requests_total", endpoint="m-obs", outcome="timeout") >= 1


def test_the_inter_token_time_is_the_mean_gap_after_the_first_token():
    assert model_metrics.inter_token_seconds(2.5, 0.5, 101) == pytest.approx(0.02)
    assert model_metrics.inter_token_seconds(2.5, None, 101) is None
    assert model_metrics.inter_token_seconds(2.5, 0.5, 1) is None


def test_a_stream_counts_as_in_flight_while_it_runs():
    with model_metrics.stream_in_flight("m-gauge"):
        assert sample("collabllm_model_streams_in_flight", endpoint="m-gauge") == 1
    assert sample("collabllm_model_streams_in_flight", endpoint="m-gauge") == 0


def test_the_middleware_counts_responses_by_view(client):
    labels = {"method": "GET", "view": "webapp.urls.healthz", "status": "2xx"}
    before = sample("collabllm_http_requests_total", **labels)
    assert client.get("/healthz").status_code == 200
    assert sample("collabllm_http_requests_total", **labels) == before + 1


async def test_the_middleware_counts_responses_on_the_async_path(async_client):
    labels = {"method": "GET", "view": "unmatched", "status": "4xx"}
    before = sample("collabllm_http_requests_total", **labels)
    assert (await async_client.get("/no-such-page-here")).status_code == 404
    assert sample("collabllm_http_requests_total", **labels) == before + 1


def record(**extra) -> logging.LogRecord:
    made = logging.getLogger("studies.test").makeRecord(
        "studies.test", logging.INFO, __file__, 1, "turn %s done", (4,), None, extra=extra
    )
    return made


def test_json_logs_carry_the_participant_and_turn():
    uuid = "0b5c3c0e-8a8e-4c53-9f57-5d0f1f2f4d10"
    entry = json.loads(JsonFormatter().format(record(participant=uuid, turn=4)))
    assert entry["message"] == "turn 4 done"
    assert (entry["participant"], entry["turn"], entry["level"]) == (uuid, 4, "INFO")


def test_json_logs_never_carry_a_recruiting_id():
    line = JsonFormatter().format(record(external_id="PROLIFIC-123"))
    assert "PROLIFIC-123" not in line
    assert json.loads(line)["external_id"] == "[redacted]"


def test_json_logs_include_the_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    assert "ValueError: boom" in json.loads(JsonFormatter().format(made))["exception"]


def test_with_a_multiprocess_folder_metrics_add_up_over_the_web_processes(tmp_path):
    """Several uvicorn workers behind one port: any one of them answers for all."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    env["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
    setup = "import django; django.setup(); from webapp import metrics; "
    count = "metrics.http_requests_total.labels('GET', 'probe', '2xx').inc()"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", setup + count], env=env, check=True, cwd=ROOT)
    scrape = "print(metrics.exposition().decode())"
    done = subprocess.run(
        [sys.executable, "-c", setup + scrape], env=env, check=True, cwd=ROOT, capture_output=True
    )
    line = 'collabllm_http_requests_total{method="GET",status="2xx",view="probe"} 2.0'
    assert line in done.stdout.decode()
