"""The live monitor: its numbers, a fixed query count, staff-only access and its actions."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from studies.models import Event, FinalSurvey, Message, Participant, PilotRun, Study, TurnRating
from studies.monitor import monitor_snapshot
from tests.factories import ParticipantFactory, TaskFactory

pytestmark = pytest.mark.django_db
P = Participant.Status


def monitor_url(study, **query):
    url = reverse("admin:studies_study_monitor", args=[study.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def make(study, arm=None, status=P.CHATTING, *, stratum="all", wall=None, active=0.0, **extra):
    """A participant at `status` in arm `arm` (None: not yet assigned), with plausible times."""
    now = timezone.now()
    fields = {"status": status, "active_seconds": active, "last_active_at": now, **extra}
    if arm is not None:
        condition = study.conditions.get(key=arm)
        prefix = "pilot/" if extra.get("is_pilot") else ""
        fields |= {
            "condition": condition,
            "task": study.tasks.first(),
            "document_type": study.tasks.first().document_type,
            "allocation": {"arm": {"choice": arm, "stratum": prefix + stratum}},
            "consented_at": now - timedelta(seconds=wall or 600),
        }
    if status == P.COMPLETED:
        fields["completed_at"] = now
    return ParticipantFactory(study=study, **fields)


def reply(participant, *, status=Message.Status.COMPLETE, ttft=0.5, turn=None):
    turn = turn or participant.messages.count() + 1
    return Message.objects.create(
        participant=participant, turn_index=turn, role="assistant", status=status,
        time_to_first_token=ttft,
    )  # fmt: skip


def populate(study, n):
    """`n` participants spread over arms and steps, with replies and ratings."""
    arms = ["base", "proactive", "collabllm"]
    steps = [P.ENTERED, P.CHATTING, P.COMPLETED, P.ABANDONED, P.RATING_DUE]
    for i in range(n):
        step = steps[i % len(steps)]
        p = make(study, None if step == P.ENTERED else arms[i % 3], step, stratum=f"s{i % 2}")
        if step != P.ENTERED:
            reply(p)
            TurnRating.objects.create(participant=p, after_turn=1, score=1 + i % 10)


def test_it_counts_participants_per_arm_against_targets(study):
    study.target_per_arm = 4
    study.save()
    make(study, "base", P.COMPLETED)
    make(study, "base", P.COMPLETED)
    make(study, "base", P.CHATTING)
    make(study, "base", P.ABANDONED)
    make(study, "proactive", P.COMPLETED, excluded_at=timezone.now(), exclusion_reason="bot")
    make(study, None, P.ENTERED)
    arms = {a.key: a for a in monitor_snapshot(study).arms}
    base = arms["base"].counts
    assert (base.entered, base.consented, base.in_progress) == (4, 4, 1)
    assert (base.completed, base.dropped) == (2, 1)
    assert arms["base"].target == 4 and arms["base"].target_text == "50%"
    assert (arms["proactive"].counts.completed, arms["proactive"].counts.dropped) == (0, 1)
    assert arms["collabllm"].counts.entered == 0


def test_it_counts_each_stratum_by_arm(study):
    make(study, "base", P.COMPLETED, stratum="blog_post")
    make(study, "base", P.CHATTING, stratum="blog_post")
    make(study, "collabllm", P.CHATTING, stratum="personal_statement")
    snap = monitor_snapshot(study)
    keys = [a.key for a in snap.arms]
    strata = {row.stratum: dict(zip(keys, row.cells, strict=True)) for row in snap.strata}
    assert strata["blog_post"]["base"] == {"assigned": 2, "in_progress": 1, "completed": 1}
    assert strata["blog_post"]["collabllm"]["assigned"] == 0
    assert strata["personal_statement"]["collabllm"]["in_progress"] == 1


def test_it_reports_completion_and_dropout_rates_and_median_times(study):
    make(study, "base", P.COMPLETED, wall=600, active=300)
    make(study, "base", P.COMPLETED, wall=1200, active=500)
    make(study, "base", P.COMPLETED, wall=1800, active=900)
    make(study, "base", P.TIMED_OUT)
    totals = monitor_snapshot(study).totals
    assert totals.completion_rate == 0.75 and totals.dropout_rate == 0.25
    assert totals.median_wall == pytest.approx(1200, abs=2)
    assert totals.median_active == 500
    assert totals.median_active_text == "8 min 20 s"


def test_pilots_and_previews_are_counted_apart_from_real_participants(study):
    make(study, "base", P.CHATTING)
    for _ in range(3):
        make(study, "proactive", P.CHATTING, is_pilot=True)
    make(study, "base", P.CHATTING, is_preview=True)
    real = monitor_snapshot(study)
    assert real.totals.in_progress == 1 and len(real.in_progress) == 1
    assert real.populations["pilot_in_progress"] == 3 and real.populations["preview"] == 1
    pilot = monitor_snapshot(study, population="pilot")
    assert pilot.totals.in_progress == 3 and len(pilot.in_progress) == 3
    assert {row.stratum for row in pilot.strata} == {"all"}


def test_the_in_progress_list_shows_step_arm_and_turns_newest_activity_first(study):
    old = make(study, "base", P.RATING_DUE, last_active_at=timezone.now() - timedelta(minutes=9))
    reply(old)
    reply(old)
    reply(old, status=Message.Status.FAILED, turn=3)
    new = make(study, "collabllm", P.CHATTING)
    reply(new, status=Message.Status.STREAMING)
    make(study, "base", P.COMPLETED)
    rows = monitor_snapshot(study).in_progress
    assert [r.pk for r in rows] == [new.pk, old.pk]
    assert (rows[1].turns, rows[1].status, rows[1].condition.key) == (2, P.RATING_DUE, "base")
    assert (rows[0].turns, rows[0].streaming) == (0, 1)


def test_rating_means_are_given_per_arm_with_their_n(study):
    a, b = make(study, "base", P.COMPLETED), make(study, "base", P.COMPLETED)
    TurnRating.objects.create(participant=a, after_turn=2, score=6)
    TurnRating.objects.create(participant=a, after_turn=4, score=8)
    TurnRating.objects.create(participant=b, after_turn=2, score=4)
    for p, quality in [(a, 9), (b, 6)]:
        FinalSurvey.objects.create(
            participant=p, document_text="d", document_quality=quality, overall_interaction=7,
            strengths="s", weaknesses="w",
        )  # fmt: skip
    base = next(a for a in monitor_snapshot(study).arms if a.key == "base")
    assert (base.rating_mean, base.rating_n, base.rating_people) == (6.0, 3, 2)
    assert (base.quality_mean, base.overall_mean, base.final_n) == (7.5, 7.0, 2)


def test_endpoints_show_health_error_share_and_median_ttft(study):
    p = make(study, "base", P.CHATTING)
    for ttft in (0.2, 0.4, 0.6):
        reply(p, ttft=ttft)
    reply(p, status=Message.Status.FAILED, ttft=None, turn=9)
    old = reply(p, status=Message.Status.INTERRUPTED, turn=10)
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=1))
    (endpoint,) = monitor_snapshot(study).endpoints
    assert (endpoint.replies, endpoint.failed, endpoint.interrupted) == (4, 1, 0)
    assert endpoint.error_text == "25%" and endpoint.median_ttft == pytest.approx(0.4)
    assert endpoint.health == "unknown"


def test_the_snapshot_costs_the_same_queries_for_2_and_40_participants(
    study, django_assert_num_queries
):
    populate(study, 2)
    with django_assert_num_queries(10):
        monitor_snapshot(study)
    populate(study, 38)
    with django_assert_num_queries(10):
        snap = monitor_snapshot(study)
    assert snap.totals.entered == 40


def test_the_polled_partial_costs_the_same_queries_for_2_and_40_participants(
    researcher, study, django_assert_num_queries
):
    populate(study, 2)
    headers = {"HX-Request": "true"}
    with django_assert_num_queries(13) as small:
        researcher.get(monitor_url(study), headers=headers)
    populate(study, 38)
    with django_assert_num_queries(len(small.captured_queries)):
        response = researcher.get(monitor_url(study), headers=headers)
    assert response.status_code == 200


def test_the_page_polls_its_partial_every_five_seconds(researcher, study):
    make(study, "base", P.CHATTING, external_id="link:watched")
    page = researcher.get(monitor_url(study)).content.decode()
    assert 'id="monitor-live"' in page and 'hx-trigger="every 5s' in page
    assert "vendor/htmx.min.js" in page and "X-CSRFToken" in page
    assert "link:watched" in page and "<caption>Arms against targets</caption>" in page
    assert 'scope="col"' in page and 'scope="row"' in page


def test_an_htmx_poll_gets_only_the_live_partial(researcher, study):
    response = researcher.get(monitor_url(study), headers={"HX-Request": "true"})
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="monitor-live"')
    assert "<html" not in body and "Run pilot" not in body


def test_the_page_offers_preview_and_pilot_links(researcher, study):
    page = researcher.get(monitor_url(study)).content.decode()
    assert f"/s/{study.slug}/?preview=" in page and f"/s/{study.slug}/?pilot=" in page


def test_the_study_change_page_links_to_the_monitor(researcher, study):
    page = researcher.get(reverse("admin:studies_study_change", args=[study.pk])).content.decode()
    assert monitor_url(study) in page


@pytest.mark.parametrize("who", ["participant", "stranger", "non-staff user"])
def test_only_staff_reach_the_monitor(study, who):
    client = Client()
    if who == "participant":
        participant = make(study, "base", P.CHATTING)
        session = client.session
        session[f"participant:{study.slug}"] = participant.pk
        session.save()
    elif who == "non-staff user":
        client.force_login(User.objects.create_user("someone", password="pw-someone-123"))
    for url in [monitor_url(study), reverse("admin:studies_study_monitor_status", args=[study.pk])]:
        response = client.post(url, {"status": "closed"}) if "status" in url else client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response.url
    study.refresh_from_db()
    assert study.status == Study.Status.LIVE


def test_a_researcher_pauses_resumes_and_closes_the_study(researcher, study):
    url = reverse("admin:studies_study_monitor_status", args=[study.pk])
    for status in ["paused", "live", "closed"]:
        response = researcher.post(url, {"status": status})
        assert response.status_code == 302 and response.url == monitor_url(study)
        study.refresh_from_db()
        assert study.status == status
    page = researcher.post(url, {"status": "live"}, follow=True).content.decode()
    assert "A closed study cannot become live." in page
    assert Event.objects.filter(study=study, kind="study.status.changed").count() == 3


def test_status_actions_need_the_csrf_token(study):
    user = User.objects.create_superuser("admin2", "a@example.org", "pw-admin-2")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    url = reverse("admin:studies_study_monitor_status", args=[study.pk])
    assert client.post(url, {"status": "paused"}).status_code == 403
    assert client.get(url).status_code == 405


def test_run_pilot_queues_a_pilot_run_and_its_task_on_commit(
    researcher, study, django_capture_on_commit_callbacks
):
    url = reverse("admin:studies_study_monitor_pilot", args=[study.pk])
    with django_capture_on_commit_callbacks() as sent:
        response = researcher.post(url, {"participants": 12, "concurrency": 10})
    assert response.status_code == 302 and response.url == monitor_url(study, who="pilot")
    run = PilotRun.objects.get(study=study)
    assert (run.status, run.participants, run.concurrency) == ("queued", 12, 10)
    assert run.task_id and run.created_by == "researcher" and len(sent) == 1
    researcher.post(url, {"participants": 0, "concurrency": 10})
    assert PilotRun.objects.count() == 1


def test_a_running_pilot_shows_x_of_n_done_and_polls(researcher, study):
    run = PilotRun.objects.create(
        study=study, participants=4, status="running", done=1, completed=1, errors=2, task_id="t"
    )
    html = researcher.get(monitor_url(study)).content.decode()
    assert "1 of 4 done, 1 completed, 2 errors so far" in html
    status = reverse("admin:studies_study_pilot_status", args=[study.pk])
    assert f'hx-get="{status}"' in html
    assert reverse("admin:studies_study_pilot_cancel", args=[study.pk, run.pk]) in html
    partial = researcher.get(status, headers={"HX-Request": "true"}).content.decode()
    assert partial.strip().startswith('<section id="pilot-run"') and "1 of 4 done" in partial


def test_the_latest_pilot_report_is_shown_as_tables(researcher, study):
    report = {
        "participants": 3, "started": 3, "completed": 2, "completion_rate": 0.667,
        "turns": 6, "ratings": 4, "wall_seconds": 132.66186600000003,
        "errors": {"entry": 0, "chat": 1}, "error_messages": {"chat": ["1x reply failed"]},
        "turn_seconds": {"p50": 1.5, "p95": 3.25}, "ttft_seconds": {"p50": None, "p95": None},
        "simulator_messages": 6, "simulator_fallbacks": 1,
        "simulator_fallback_reasons": {"invalid json": 1},
    }  # fmt: skip
    PilotRun.objects.create(study=study, participants=3, status="done", done=3, report=report)
    html = researcher.get(monitor_url(study)).content.decode()
    for caption in ("Completion", "Errors per step", "Time per turn", "fallbacks"):
        assert caption in html
    assert "67%" in html and "132.7 s" in html and "132.66" not in html
    assert "1x reply failed" in html and "1 of 6" in html and "n/a" in html


def test_a_pilot_shows_in_the_monitor_while_it_runs(researcher, study):
    TaskFactory(study=study)
    for i in range(10):
        make(study, "base", P.CHATTING, is_pilot=True, external_id=f"pilot:{i}")
    page = researcher.get(monitor_url(study, who="pilot")).content.decode()
    assert all(f"pilot:{i}" in page for i in range(10))
    assert "pilot:0" not in researcher.get(monitor_url(study)).content.decode()
