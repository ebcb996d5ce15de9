"""Pilot runs: simulated participants through a live web server on the test database."""

import asyncio
import io
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connections
from django.db.models import F

from studies.models import Condition, Event, Message, Participant, PilotRun, Study
from studies.pilot import chat as pilot_chat
from studies.pilot.driver import STEPS
from studies.pilot.page import page_parse
from studies.pilot.runs import pilot_run_create, pilot_run_execute
from studies.pilot.tasks import run_pilot
from studies.services import jobs
from tests.e2e import conftest as e2e
from tests.factories import ModelEndpointFactory, three_arm_study

web_server = e2e.web_server  # a live uvicorn on the test database

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def in_thread(function, *args, **kwargs):
    """Run blocking code (its own loop and DB connection) beside the fake model's loop."""

    def call():
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return asyncio.to_thread(call)


@sync_to_async
def pilot_ready_study(
    base_url: str, model: str = "fake", read_timeout: float = 5.0, **kwargs
) -> Study:
    endpoint = ModelEndpointFactory(
        base_url=base_url, served_model=model, connect_timeout=2.0, read_timeout=read_timeout
    )
    study = three_arm_study(
        endpoint=endpoint, status=Study.Status.DRAFT, min_turns=2, rating_every=1, **kwargs
    )
    Condition.objects.filter(study=study).update(
        generation_params={"max_tokens": 40, "temperature": 0.7}
    )
    return study


@sync_to_async
def participants_of(study: Study) -> list[Participant]:
    return list(
        Participant.objects.filter(study=study)
        .select_related("final_survey")
        .prefetch_related("ratings")
    )


def shortest_user_message(study: Study) -> int:
    texts = Message.objects.filter(participant__study=study, role=Message.Role.USER)
    return min(len(text) for text in texts.values_list("content", flat=True))


@sync_to_async
def finished_report(study: Study) -> dict:
    return Event.objects.get(study=study, kind="study.pilot.finished").payload


async def test_a_pilot_takes_every_simulated_participant_to_the_completion_code(
    web_server, fake_model
):
    question = {"question": "Which one?", "choices": ["a", "b", "c"]}
    study = await pilot_ready_study(
        fake_model.base_url,
        comprehension_questions=[question | {"answer": 1}, question | {"answer": 2}],
        attention_checks=[question | {"answer": 2}],
        min_user_message_chars=120,
    )

    report = await in_thread(
        run_pilot, study.pk, participants=3, concurrency=2, base_url=web_server
    )

    assert report["completed"] == report["participants"] == report["started"] == 3
    assert report["completion_rate"] == 1.0
    assert report["errors"] == dict.fromkeys(STEPS, 0)
    assert report["turns"] == report["ratings"] == 6
    assert report["simulator_messages"] == 6
    assert all(run["completed"] and run["step"] == "done" for run in report["runs"])
    assert report["turn_seconds"]["p50"] <= report["turn_seconds"]["p95"]
    people = await participants_of(study)
    assert len(people) == 3
    assert all(p.is_pilot and p.status == Participant.Status.COMPLETED for p in people)
    assert all(len(p.ratings.all()) == 2 and p.final_survey.document_text for p in people)
    assert [(p.comprehension_failures, p.attention_failures) for p in people] == [(0, 0)] * 3
    assert await sync_to_async(shortest_user_message)(study) >= 120
    assert await sync_to_async(Participant.objects.real().filter(study=study).count)() == 0
    assert (await finished_report(study))["completed"] == 3
    run = await sync_to_async(PilotRun.objects.get)(study=study)
    assert (run.status, run.done, run.completed, run.errors) == ("done", 3, 3, 0)
    assert run.report["completed"] == 3


async def test_a_pilot_cancelled_while_running_starts_no_new_participant(web_server, fake_model):
    study = await pilot_ready_study(fake_model.base_url)
    # Cancel is pressed once the pilot has started (a worker took it): the participant under way
    # finishes, the others never start, and what was done is kept.
    run = await sync_to_async(pilot_run_create)(study_id=study.pk, participants=3, concurrency=1)
    await sync_to_async(PilotRun.objects.filter(pk=run.pk).update)(status="running")
    assert await sync_to_async(jobs.job_cancel)(PilotRun, run.pk) == "running"

    report = await in_thread(pilot_run_execute, run_id=run.pk, base_url=web_server)

    run = await sync_to_async(PilotRun.objects.get)(pk=run.pk)
    assert (run.status, run.done, run.participants) == ("cancelled", 1, 3)
    assert report["participants"] == 1 and run.report == report
    assert len(await participants_of(study)) == 1


@pytest.fixture
def one_turn_a_minute(monkeypatch):
    """The web server (started after this fixture) takes one message a minute per participant."""
    monkeypatch.setenv("CHAT_TURNS_PER_MINUTE", "1")


async def test_a_simulated_participant_told_to_slow_down_waits_and_sends_again(
    one_turn_a_minute, web_server, fake_model, monkeypatch
):
    study = await pilot_ready_study(fake_model.base_url)
    pauses = []

    async def a_minute_passes() -> None:  # the server's clock is the messages' created_at
        pauses.append("a minute")
        await sync_to_async(age_messages_by_a_minute)(study)

    monkeypatch.setattr(pilot_chat, "rate_limit_pause", a_minute_passes)

    report = await in_thread(
        run_pilot, study.pk, participants=1, concurrency=1, base_url=web_server
    )

    assert pauses == ["a minute"]  # turn 2 was refused once, then taken: turn 1's message had aged
    assert report["completed"] == 1 and report["turns"] == 2
    assert report["errors"]["chat"] == 1
    assert report["error_messages"]["chat"] == [
        "1x rate_limited: You are sending messages too quickly."
    ]
    (person,) = await participants_of(study)
    assert person.status == Participant.Status.COMPLETED
    count = Message.objects.filter(participant=person, role=Message.Role.USER).count
    assert await sync_to_async(count)() == 2  # the resent message was stored once


def age_messages_by_a_minute(study: Study) -> None:
    aged = Message.objects.filter(participant__study=study)
    aged.update(created_at=F("created_at") - timedelta(minutes=1))


async def test_a_failing_arm_shows_as_chat_errors_and_the_command_exits_non_zero(
    fake_model, monkeypatch
):
    study = await pilot_ready_study(fake_model.base_url, model="fake-500")
    # --serve starts its own web server, which inherits the database from the environment.
    monkeypatch.setenv("DATABASE_URL", e2e.database_url(settings.DATABASES["default"]))
    out = io.StringIO()

    def command():
        with pytest.raises(CommandError, match="2 of 2 participants did not complete"):
            call_command(
                "pilot_study", study.slug, "--participants=2", "--concurrency=2", "--serve",
                stdout=out, stderr=io.StringIO(),
            )  # fmt: skip
        e2e._wait_for_server_sessions_to_end()

    await in_thread(command)

    report = await finished_report(study)
    assert report["completed"] == 0 and report["started"] == 2
    assert report["errors"]["chat"] == 4  # each participant's reply failed, and again on retry
    assert sum(report["errors"].values()) == 4
    assert "reply failed" in report["error_messages"]["chat"][0]
    assert report["simulator_fallbacks"] == 2  # the simulator's model fails too: templated
    assert "errors per step" in out.getvalue()


def test_forms_are_read_whole_hidden_fields_and_checked_choices_included():
    page = page_parse(
        """<p role="alert">Please <b>answer</b></p>
        <form method="get" action="/search"><input name="q"></form>
        <form method="post" action="/s/x/final/">
          <input type="hidden" name="csrfmiddlewaretoken" value="t">
          <textarea name="document_text">draft</textarea>
          <input type="radio" name="score" value="1"><input type="radio" name="score" value="2">
          <input type="radio" name="attention_0" value="0" checked>
          <select name="pick"><option value="a">A</option><option value="b" selected>B</option>
          </select><button type="submit">Submit</button>
        </form>"""
    )
    form = page.post_form("/s/x/final/")
    assert form.defaults() == {
        "csrfmiddlewaretoken": "t",
        "document_text": "draft",
        "attention_0": "0",
        "pick": "b",
    }
    assert form.choices("score") == ["1", "2"]
    assert page.notice() == "Please answer"


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_pilot_completes_on_the_real_embedded_model(web_server, embedded_model):
    study = await pilot_ready_study(
        embedded_model.base_url, model=embedded_model.model, read_timeout=120
    )

    report = await in_thread(
        run_pilot, study.pk, participants=2, concurrency=2, base_url=web_server
    )

    assert report["completed"] == 2, report["error_messages"]
    assert report["errors"] == dict.fromkeys(STEPS, 0)
    assert report["turns"] == 4
