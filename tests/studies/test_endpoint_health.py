"""Endpoint health checks, the beat task, the traffic summary and their admin pages."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from studies.models import Condition, Message, ModelEndpoint, Study
from studies.services.endpoints import (
    endpoint_health_check,
    endpoint_traffic,
    endpoints_with_traffic,
)
from studies.tasks import check_endpoint_health
from tests.factories import ConditionFactory, ModelEndpointFactory, ParticipantFactory
from tests.fakes.openai_server import MODELS, FakeOpenAIServer
from tests.ports import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def fake_url():
    base_url, stop = FakeOpenAIServer().run_in_thread()
    yield base_url
    stop()


@pytest.fixture
def dead_url():
    return f"http://127.0.0.1:{free_port()}/v1"


def test_a_serving_endpoint_is_up_and_lists_its_models(fake_url):
    endpoint = ModelEndpointFactory(base_url=fake_url, served_model="fake")
    health, detail = endpoint_health_check(endpoint)
    assert health == "up"
    assert detail.splitlines() == ["1/1 up", f"{fake_url}: up, serves " + ", ".join(MODELS)]


def test_a_dead_port_is_down_with_the_connection_error(dead_url):
    endpoint = ModelEndpointFactory(base_url=dead_url, connect_timeout=1)
    health, detail = endpoint_health_check(endpoint)
    assert health == "down" and f"{dead_url}: down (ConnectError" in detail


def test_an_endpoint_with_one_live_replica_is_up_and_names_the_dead_one(fake_url, dead_url):
    endpoint = ModelEndpointFactory(base_url=dead_url, replica_urls=[fake_url], connect_timeout=1)
    health, detail = endpoint_health_check(endpoint)
    assert health == "up" and detail.startswith("1/2 up") and f"{dead_url}: down" in detail


def test_an_adapter_a_condition_asks_for_but_the_server_lacks_is_named(fake_url):
    endpoint = ModelEndpointFactory(base_url=fake_url, served_model="fake")
    ConditionFactory(endpoint=endpoint, model_name="collabllm")
    _, detail = endpoint_health_check(endpoint)
    assert detail.endswith("; missing collabllm")


def test_the_task_records_the_health_of_endpoints_of_live_studies_only(fake_url, dead_url):
    live = ModelEndpointFactory(name="live", base_url=fake_url)
    draft = ModelEndpointFactory(name="draft", base_url=dead_url)
    ConditionFactory(endpoint=live, study__status=Study.Status.LIVE)
    ConditionFactory(endpoint=draft, study__status=Study.Status.DRAFT)
    assert check_endpoint_health() == {"live": "up"}
    live.refresh_from_db()
    draft.refresh_from_db()
    assert live.health == "up" and live.health_checked_at and "1/1 up" in live.health_detail
    assert draft.health == "unknown" and draft.health_checked_at is None


def test_the_beat_schedule_checks_endpoint_health_every_minute(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["check-endpoint-health"]
    assert entry == {"task": "studies.tasks.check_endpoint_health", "schedule": 60.0}


def _reply(condition: Condition, turn: int, **fields) -> Message:
    participant = ParticipantFactory(study=condition.study, condition=condition)
    return Message.objects.create(
        participant=participant, turn_index=turn, role="assistant", **fields
    )


@pytest.fixture
def traffic():
    """One endpoint with three complete replies this hour, a failed one and an old one."""
    condition = ConditionFactory(endpoint=ModelEndpointFactory(name="gpu"))
    for i, (ttft, itl, tokens, duration) in enumerate(
        [(0.2, 0.01, 100, 2.2), (0.4, 0.02, 50, 1.4), (0.6, 0.03, 30, 3.6)]
    ):
        _reply(
            condition, i + 1, status="complete", time_to_first_token=ttft,
            inter_token_latency=itl, completion_tokens=tokens, duration=duration,
        )  # fmt: skip
    _reply(condition, 4, status="failed")
    _reply(condition, 5, status="streaming")
    old = _reply(condition, 6, status="interrupted", time_to_first_token=5.0)
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=2))
    return condition.endpoint


def test_the_summary_gives_replies_failures_and_medians_per_window(
    traffic, django_assert_num_queries
):
    ModelEndpointFactory(name="idle")
    with django_assert_num_queries(1):
        gpu, idle = endpoints_with_traffic(ModelEndpoint.objects.order_by("name"))
    hour, total = endpoint_traffic(gpu, "hour"), endpoint_traffic(idle, "all")
    assert hour is not None and total is not None and endpoint_traffic(gpu, "all") is not None
    assert (hour.replies, hour.failed, hour.interrupted) == (4, 1, 0)
    assert hour.failed_share == pytest.approx(0.25)
    assert hour.median_ttft == pytest.approx(0.4) and hour.median_itl == pytest.approx(0.02)
    # tokens / (duration - ttft): 100/2.0, 50/1.0, 30/3.0
    assert hour.tokens_per_second == pytest.approx(50.0)
    everything = endpoint_traffic(gpu, "all")
    assert everything.replies == 5 and everything.failed_share == pytest.approx(0.4)
    assert (total.replies, total.median_ttft, total.failed_share) == (0, None, None)


def test_the_endpoint_list_shows_health_and_the_last_hour(
    researcher, traffic, django_assert_max_num_queries
):
    ModelEndpoint.objects.filter(pk=traffic.pk).update(health="down")
    with django_assert_max_num_queries(8) as first:
        page = researcher.get(reverse("admin:studies_modelendpoint_changelist"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "down" in html and "4 · 25% · 0.40 s · 0.02 s · 50.0" in html
    for i in range(3):
        ConditionFactory(endpoint=ModelEndpointFactory(name=f"more-{i}"))
    with django_assert_max_num_queries(len(first.captured_queries)):
        researcher.get(reverse("admin:studies_modelendpoint_changelist"))


def test_the_endpoint_page_shows_health_detail_and_both_windows(researcher, traffic):
    ModelEndpoint.objects.filter(pk=traffic.pk).update(
        health="up", health_detail="1/1 up\nhttp://gpu:8000/v1: up, serves base, collabllm"
    )
    url = reverse("admin:studies_modelendpoint_change", args=[traffic.pk])
    html = researcher.get(url).content.decode()
    assert "serves base, collabllm" in html and 'class="endpoint-traffic"' in html
    assert "<td>last hour</td><td>4</td><td>25%</td>" in html
    assert "<td>all time</td><td>5</td><td>40%</td>" in html
