"""A one-item topic list is no choice: the brief takes it and asks the intent questions."""

import importlib

import pytest
from django.urls import reverse

from studies.models import Event, Participant, Task
from tests.factories import ConditionFactory, StudyFactory, TaskFactory

pytestmark = pytest.mark.django_db


def _study(topics: int):
    study = StudyFactory()
    ConditionFactory(study=study, key="base")
    for _ in range(topics):
        TaskFactory(study=study, document_type=Task.DocumentType.BLOG_POST)
    return study


def _consented(client, study) -> Participant:
    client.get(
        reverse("studies:entry", args=[study.slug]),
        {"PROLIFIC_PID": "p1", "STUDY_ID": "s", "SESSION_ID": "x"},
    )
    client.post(reverse("studies:consent", args=[study.slug]), {"choice": "agree"})
    return Participant.objects.get(study=study)


def _topic_events(participant) -> list[dict]:
    events = Event.objects.filter(participant=participant, kind="study.participant.topic_chosen")
    return [e.payload for e in events]


def test_the_only_topic_is_taken_and_the_intent_questions_come_straight_away(client):
    study = _study(topics=1)
    participant = _consented(client, study)

    page = client.get(reverse("studies:brief", args=[study.slug])).content.decode()
    client.get(reverse("studies:brief", args=[study.slug]))  # a reload takes nothing twice

    participant.refresh_from_db()
    task = study.tasks.get()
    assert participant.task == task
    assert 'name="task"' not in page and 'name="q0"' in page and task.topic in page
    assert _topic_events(participant) == [{"task_id": task.pk, "only_topic": True}]
    client.post(reverse("studies:brief", args=[study.slug]), {"q0": "friends", "q1": "warm"})
    participant.refresh_from_db()
    assert participant.status == Participant.Status.CHATTING


def test_two_topics_are_still_a_choice(client):
    study = _study(topics=2)
    participant = _consented(client, study)

    page = client.get(reverse("studies:brief", args=[study.slug])).content.decode()

    participant.refresh_from_db()
    assert participant.task is None and page.count('name="task"') == 2
    assert _topic_events(participant) == []


def test_a_participant_timed_out_as_the_brief_opens_is_sent_on_not_shown_an_error(
    client, monkeypatch
):
    # Housekeeping ends the participation between the page's step check and the topic's lock.
    brief = importlib.import_module("studies.views.brief")  # the module, not the view

    study = _study(topics=1)
    participant = _consented(client, study)
    real_at_step = brief.at_step

    def at_step_then_timed_out(request, slug, step):
        found = real_at_step(request, slug, step)
        Participant.objects.filter(pk=participant.pk).update(status=Participant.Status.TIMED_OUT)
        return found

    monkeypatch.setattr(brief, "at_step", at_step_then_timed_out)
    response = client.get(reverse("studies:brief", args=[study.slug]))

    assert response.status_code == 302
    participant.refresh_from_db()
    assert participant.task is None and _topic_events(participant) == []
