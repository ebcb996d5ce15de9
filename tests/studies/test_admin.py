"""A small named world: a researcher (staff), a participant and a stranger."""

import pytest
from django.test import Client
from django.urls import reverse

from studies.models import TurnRating
from studies.services import turns
from tests.factories import ParticipantFactory
from tests.studies.conftest import advance_to_chat, complete_reply, new_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def chatted(study):
    participant = advance_to_chat(ParticipantFactory(study=study))
    reply = turns.turn_start(participant_id=participant.pk, text="Draft my post", key=new_key())
    complete_reply(reply.assistant_message, text="Here is a **draft**", duration=0.5)
    return participant


def test_a_researcher_reads_a_transcript_with_timings(researcher, chatted):
    url = reverse("admin:studies_participant_change", args=[chatted.pk])
    page = researcher.get(url).content.decode()
    assert "Draft my post" in page and "Here is a **draft**" in page
    assert "ttft 0.10s" in page and chatted.condition.key in page


def test_the_transcript_shows_each_rating_after_its_turn_and_escapes_what_was_written(
    researcher, chatted
):
    reply = chatted.messages.get(role="assistant")
    TurnRating.objects.create(participant=chatted, after_turn=reply.turn_index, score=7)
    chatted.messages.filter(role="user").update(content="<script>x</script>")
    url = reverse("admin:studies_participant_change", args=[chatted.pk])
    page = researcher.get(url).content.decode()
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x</script>" not in page
    turn, rating = page.index("Here is a **draft**"), page.index("Rating after turn")
    assert turn < rating and f"Rating after turn {reply.turn_index}: 7/10" in page


def test_a_researcher_creates_a_study_with_arms_and_tasks_inline(researcher):
    page = researcher.get(reverse("admin:studies_study_add")).content.decode()
    assert "conditions-TOTAL_FORMS" in page and "tasks-TOTAL_FORMS" in page


@pytest.mark.parametrize("who", ["participant", "stranger"])
def test_participants_and_strangers_cannot_reach_the_admin(chatted, who):
    client = Client()
    if who == "participant":
        session = client.session
        session[f"participant:{chatted.study.slug}"] = chatted.pk
        session.save()
    url = reverse("admin:studies_participant_change", args=[chatted.pk])
    response = client.get(url)
    assert response.status_code == 302 and "/admin/login/" in response.url


def test_the_participant_list_costs_a_fixed_number_of_queries(
    researcher, study, django_assert_max_num_queries
):
    for _ in range(3):
        advance_to_chat(ParticipantFactory(study=study))
    with django_assert_max_num_queries(12) as first:
        researcher.get(reverse("admin:studies_participant_changelist"))
    for _ in range(5):
        advance_to_chat(ParticipantFactory(study=study))
    with django_assert_max_num_queries(len(first.captured_queries)):
        researcher.get(reverse("admin:studies_participant_changelist"))


def test_the_admin_shows_the_continue_setting_and_marks_continuations(researcher, chatted):
    page = researcher.get(reverse("admin:studies_study_change", args=[chatted.study_id]))
    assert 'name="conditions-0-allow_continue"' in page.content.decode()
    cut = turns.turn_start(participant_id=chatted.pk, text="And more", key=new_key())
    turns.turn_complete(
        message_id=cut.assistant_message.pk, text="Cut", model="m", finish_reason="length",
        prompt_tokens=5, completion_tokens=2, time_to_first_token=0.1, duration=0.3,
    )  # fmt: skip
    turns.rating_record(participant_id=chatted.pk, after_turn=2, score=5)  # due after turn 2
    more = turns.turn_continue(participant_id=chatted.pk, message_id=cut.assistant_message.pk)
    url = reverse("admin:studies_participant_change", args=[chatted.pk])
    page = researcher.get(url).content.decode()
    assert "finish length" in page
    assert f"continues message {more.continuation_of_id}" in page
