"""Re-entry from another browser: a recruiting id alone never hands over a participant's session."""

import json
import re

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from django.test import Client

from studies.models import Event, Participant, Study
from studies.services import participants as svc
from studies.services import reentry, turns
from studies.services.participants import entry as entry_service
from tests.factories import three_arm_study
from tests.studies.conftest import complete_reply, new_key
from tests.studies.test_flow import to_chat_with, url

pytestmark = pytest.mark.django_db

# Source -> (the link the participant followed, what a stranger who knows only the id changes).
LINKS = {
    "prolific": ({"PROLIFIC_PID": "p1", "STUDY_ID": "S", "SESSION_ID": "s1"}, {"SESSION_ID": "s9"}),
    "mturk": ({"workerId": "W1", "assignmentId": "A1", "hitId": "H1"}, {"assignmentId": "A9"}),
    "link": ({"pid": "p1"}, {}),
}
SECRET_TEXT = "my secret draft about my grandmother"
REPLY_TEXT = "A reply only the participant has seen."


def owner_in_chat(source: str) -> tuple[Client, Participant]:
    """A participant in the chat with one finished turn, in their own browser."""
    study = three_arm_study(recruiting_source=source)
    owner = Client()
    participant = to_chat_with(owner, study, LINKS[source][0])
    started = turns.turn_start(participant_id=participant.pk, text=SECRET_TEXT, key=new_key())
    complete_reply(started.assistant_message, text=REPLY_TEXT)
    return owner, Participant.objects.select_related("study", "task", "condition").get(
        pk=participant.pk
    )


def bound(client: Client, study: Study) -> int | None:
    return client.session.get(f"participant:{study.slug}")


def kinds(participant: Participant) -> list[str]:
    return list(Event.objects.filter(participant=participant).values_list("kind", flat=True))


def shown_code(client: Client, study: Study) -> str:
    page = client.get(url("chat", study)).content.decode()
    found = re.search(r'id="resume-code"[^>]*>([^<]+)<', page)
    assert found, "the participant's page shows no resume code"
    return found.group(1)


def stranger_arrives(participant: Participant, source: str, **changes) -> Client:
    stranger = Client()
    stranger.get(url("entry", participant.study), LINKS[source][0] | LINKS[source][1] | changes)
    return stranger


@pytest.mark.parametrize("source", list(LINKS))
def test_a_second_browser_with_only_the_id_sees_nothing_of_theirs(source):
    _, participant = owner_in_chat(source)
    before = Participant.objects.values("attempts", "recruiting_params").get(pk=participant.pk)
    stranger = Client()
    link = LINKS[source][0] | LINKS[source][1]
    response = stranger.get(url("entry", participant.study), link, follow=True)
    assert bound(stranger, participant.study) is None
    pages = [response.content.decode()]
    for step in ["consent", "brief", "check", "chat", "final", "done", "closed"]:
        page = stranger.get(url(step, participant.study))
        assert page.status_code == 200 or page["Location"] == url("entry", participant.study)
        pages.append(page.content.decode())
    private = [SECRET_TEXT, REPLY_TEXT, participant.task.topic, participant.condition.label]
    assert not [text for text in private if any(text in page for page in pages)]
    assert "already started" in pages[0]
    after = Participant.objects.values("attempts", "recruiting_params").get(pk=participant.pk)
    assert after == before


def stranger_cookie() -> tuple[Participant, str]:
    """The session cookie of a second browser that arrived with only the Prolific id."""
    _, participant = owner_in_chat("prolific")
    cookies = stranger_arrives(participant, "prolific").cookies
    name = settings.SESSION_COOKIE_NAME
    return participant, f"{name}={cookies[name].value}"


@pytest.mark.django_db(transaction=True)
async def test_a_second_browser_with_only_the_id_cannot_open_the_chat_socket():
    from webapp.asgi import application

    participant, cookie = await sync_to_async(stranger_cookie)()
    headers = [(b"host", b"testserver"), (b"origin", b"http://testserver")]
    comm = WebsocketCommunicator(
        application,
        f"/ws/s/{participant.study.slug}/chat/",
        headers=[*headers, (b"cookie", cookie.encode())],
    )
    connected, code = await comm.connect(timeout=10)
    # The socket's session lookup leaves a connection open on the sync worker thread; close it
    # so the test database can still be dropped when this is the run's last test.
    await sync_to_async(connections.close_all)()
    assert not connected and code == 4403


@pytest.mark.parametrize("source,how", [("prolific", "session_id"), ("mturk", "assignment_id")])
def test_the_platforms_own_token_from_the_original_link_lets_them_back_in(source, how):
    _, participant = owner_in_chat(source)
    again = Client()
    response = again.get(url("entry", participant.study), LINKS[source][0])
    assert response.url == url("chat", participant.study)
    assert bound(again, participant.study) == participant.pk
    event = Event.objects.get(participant=participant, kind="study.participant.rebound")
    assert event.payload["how"] == how


def test_the_resume_code_shown_on_their_pages_lets_them_back_in_elsewhere():
    owner, participant = owner_in_chat("link")
    code = shown_code(owner, participant.study)
    stranger = stranger_arrives(participant, "link")
    typed = code.replace("-", " ").lower()
    response = stranger.post(url("resume", participant.study), {"code": typed})
    assert response.status_code == 302 and response.url == url("chat", participant.study)
    assert bound(stranger, participant.study) == participant.pk
    assert shown_code(stranger, participant.study) == code
    event = Event.objects.get(participant=participant, kind="study.participant.rebound")
    assert event.payload["how"] == "resume_code"


def test_only_a_keyed_hash_of_the_resume_code_is_stored():
    owner, participant = owner_in_chat("link")
    code = shown_code(owner, participant.study)
    participant.refresh_from_db()
    stored = participant.resume_code_hash
    assert len(stored) == 64 and code.replace("-", "") not in stored
    assert reentry.resume_code_matches(participant, code)


def test_a_wrong_code_gets_a_clear_message_and_binds_nothing():
    _, participant = owner_in_chat("link")
    stranger = stranger_arrives(participant, "link")
    response = stranger.post(url("resume", participant.study), {"code": "AAAAA-AAAAA"})
    assert response.status_code == 400 and "not right" in response.content.decode()
    assert bound(stranger, participant.study) is None
    refused = Event.objects.filter(participant=participant, kind="study.participant.resume_refused")
    assert [e.payload["reason"] for e in refused] == ["no_token", "wrong_code"]


def test_wrong_codes_are_rate_limited_per_id_even_before_the_right_one():
    owner, participant = owner_in_chat("link")
    code = shown_code(owner, participant.study)
    stranger = stranger_arrives(participant, "link")
    resume = url("resume", participant.study)
    statuses = [
        stranger.post(resume, {"code": "AAAAA-AAAAA"}).status_code
        for _ in range(reentry.ATTEMPT_LIMIT)
    ]
    assert statuses == [400] * reentry.ATTEMPT_LIMIT
    late = [stranger.post(resume, {"code": code}) for _ in range(3)]
    assert [r.status_code for r in late] == [429, 429, 429]
    assert "Too many attempts" in late[0].content.decode()
    assert bound(stranger, participant.study) is None
    refused = kinds(participant).count("study.participant.resume_refused")
    assert refused == 1 + reentry.ATTEMPT_LIMIT + 1  # arrival, wrong codes, first refusal


def test_wrong_codes_are_rate_limited_per_client_address_across_ids():
    study = three_arm_study()
    people = []
    for i in range(reentry.ATTEMPT_LIMIT + 1):
        owner = Client()
        owner.get(url("entry", study), {"pid": f"p{i}"})
        people.append((owner, f"p{i}"))
    prober = Client()
    for _, pid in people[:-1]:
        prober.get(url("entry", study), {"pid": pid})
        assert prober.post(url("resume", study), {"code": "AAAAA-AAAAA"}).status_code == 400
    owner, pid = people[-1]
    code = owner.session[f"resume_code:{study.slug}"]
    prober.get(url("entry", study), {"pid": pid})
    assert prober.post(url("resume", study), {"code": code}).status_code == 429
    assert bound(prober, study) is None


def test_a_made_up_session_id_is_not_recorded_and_a_proven_one_is():
    owner, participant = owner_in_chat("prolific")
    code = shown_code(owner, participant.study)
    stranger_arrives(participant, "prolific", SESSION_ID="s-made-up")
    participant.refresh_from_db()
    assert [a["session_id"] for a in participant.attempts] == ["s1"]
    returning = stranger_arrives(participant, "prolific", SESSION_ID="s2")
    returning.post(url("resume", participant.study), {"code": code})
    participant.refresh_from_db()
    assert [a["session_id"] for a in participant.attempts] == ["s1", "s2"]
    third = Client()
    link = LINKS["prolific"][0] | {"SESSION_ID": "s2"}
    assert third.get(url("entry", participant.study), link).url == url("chat", participant.study)
    third_made_up = stranger_arrives(participant, "prolific", SESSION_ID="s-made-up")
    assert bound(third_made_up, participant.study) is None


def test_their_own_browser_continues_and_records_a_new_attempt():
    owner, participant = owner_in_chat("prolific")
    link = LINKS["prolific"][0] | {"SESSION_ID": "s2"}
    assert owner.get(url("entry", participant.study), link).url == url("chat", participant.study)
    participant.refresh_from_db()
    assert [a["session_id"] for a in participant.attempts] == ["s1", "s2"]
    assert "study.participant.rebound" not in kinds(participant)


def race_with(monkeypatch, source: str) -> None:
    """Make the other tab's request create the participant just before this one inserts."""
    real = entry_service.version_latest
    link = LINKS[source][0]
    raced = []

    def rival_first(study):
        if not raced:
            raced.append(True)
            external_id = f"{source}:{next(iter(link.values()))}"
            svc.participant_enter(study=study, external_id=external_id, source=source, params=link)
        return real(study)

    monkeypatch.setattr(entry_service, "version_latest", rival_first)


def test_the_loser_of_a_two_tab_race_is_not_bound_to_the_winner(monkeypatch):
    study = three_arm_study()
    race_with(monkeypatch, "link")
    loser = Client()
    response = loser.get(url("entry", study), {"pid": "p1"})
    assert Participant.objects.filter(study=study).count() == 1
    assert bound(loser, study) is None
    assert response.url == url("resume", study)


def test_two_tabs_of_the_same_prolific_link_both_continue(monkeypatch):
    study = three_arm_study(recruiting_source=Study.Source.PROLIFIC)
    race_with(monkeypatch, "prolific")
    tab = Client()
    assert tab.get(url("entry", study), LINKS["prolific"][0]).url == url("consent", study)
    assert bound(tab, study) == Participant.objects.get(study=study).pk


def test_no_redirect_after_entry_carries_an_id():
    owner, participant = owner_in_chat("link")
    code = shown_code(owner, participant.study)
    stranger = Client()
    first = stranger.get(url("entry", participant.study), {"pid": "p1"})
    second = stranger.post(url("resume", participant.study), {"code": code})
    assert first["Location"] == url("resume", participant.study)
    assert second["Location"] == url("chat", participant.study)


def test_refusals_at_the_door_are_logged_only_up_to_the_limit():
    _, participant = owner_in_chat("link")
    for _ in range(reentry.ATTEMPT_LIMIT + 3):
        stranger_arrives(participant, "link")
    refused = Event.objects.filter(participant=participant, kind="study.participant.resume_refused")
    assert refused.count() == reentry.ATTEMPT_LIMIT
    assert {e.payload["reason"] for e in refused} == {"no_token"}


def test_with_redis_away_a_code_is_refused_rather_than_unlimited(settings):
    owner, participant = owner_in_chat("link")
    code = shown_code(owner, participant.study)
    stranger = stranger_arrives(participant, "link")
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = stranger.post(url("resume", participant.study), {"code": code})
    assert response.status_code == 503 and "cannot be checked" in response.content.decode()
    assert bound(stranger, participant.study) is None


@pytest.mark.parametrize("source", ["prolific", "mturk"])
def test_guessed_platform_tokens_are_rate_limited_even_before_the_right_one(source):
    _, participant = owner_in_chat(source)
    key = next(iter(LINKS[source][1]))
    for i in range(reentry.ATTEMPT_LIMIT):
        guesser = stranger_arrives(participant, source, **{key: f"guess-{i}"})
        assert bound(guesser, participant.study) is None
    late = Client()
    response = late.get(url("entry", participant.study), LINKS[source][0])
    assert response.status_code == 429 and "Too many attempts" in response.content.decode()
    assert bound(late, participant.study) is None
    refused = Event.objects.filter(participant=participant, kind="study.participant.resume_refused")
    assert "limited" in {e.payload["reason"] for e in refused}


def test_their_own_browser_is_never_counted_at_the_door():
    owner, participant = owner_in_chat("prolific")
    for i in range(reentry.ATTEMPT_LIMIT + 1):
        stranger_arrives(participant, "prolific", SESSION_ID=f"guess-{i}")
    response = owner.get(url("entry", participant.study), LINKS["prolific"][0])
    assert response.url == url("chat", participant.study)
    assert bound(owner, participant.study) == participant.pk


def test_with_redis_away_a_platform_token_is_refused_rather_than_unlimited(settings):
    _, participant = owner_in_chat("prolific")
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    again = Client()
    response = again.get(url("entry", participant.study), LINKS["prolific"][0])
    assert response.status_code == 503 and "cannot be checked" in response.content.decode()
    assert bound(again, participant.study) is None


def test_a_new_attempt_is_recorded_by_its_number_never_by_its_token():
    owner, participant = owner_in_chat("prolific")
    token = "sess-second-attempt-token"
    owner.get(url("entry", participant.study), LINKS["prolific"][0] | {"SESSION_ID": token})
    again = Client()
    again.get(url("entry", participant.study), LINKS["prolific"][0] | {"SESSION_ID": token})
    assert bound(again, participant.study) == participant.pk
    reentered = Event.objects.get(participant=participant, kind="study.participant.reentered")
    assert reentered.payload == {"attempt": 2}
    payloads = Event.objects.filter(participant=participant).values_list("payload", flat=True)
    assert not [p for p in payloads if token in json.dumps(p) or "s1" in p.values()]
