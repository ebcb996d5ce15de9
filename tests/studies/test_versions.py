"""Frozen study configurations (versions), their admin, and study status changes."""

import pytest
from django.test import Client
from django.urls import reverse

from studies.models import Condition, Event, Participant, Study, StudyVersion, Task
from studies.services import lifecycle, turns, versions
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from tests.factories import ConditionFactory, StudyFactory, TaskFactory, three_arm_study
from tests.studies.conftest import advance_to_chat, new_key
from tests.studies.formdata import form_data
from tests.studies.test_flow import enter, url

pytestmark = pytest.mark.django_db


@pytest.fixture
def study():
    """A live study with one arm (so every participant gets it) and one blog-post topic."""
    study = StudyFactory()
    ConditionFactory(study=study, key="solo", system_prompt="none")
    TaskFactory(study=study, document_type=Task.DocumentType.BLOG_POST)
    return study


def edit_arm(study, **changes) -> Condition:
    Condition.objects.filter(study=study).update(**changes)
    return Condition.objects.get(study=study)


def entered(study, external_id: str) -> Participant:
    return svc.participant_enter(
        study=study, external_id=external_id, source="link", params={}
    ).participant


def test_publishing_creates_version_one(study):
    version = versions.version_publish(study, by="ann")
    assert version.number == 1 and version.created_by == "ann"
    assert version.config["arms"]["solo"]["generation_params"] == {"max_tokens": 16}
    study.refresh_from_db()
    assert study.config_version == 1


def test_publishing_an_unchanged_study_returns_the_same_version(study):
    first = versions.version_publish(study)
    again = versions.version_publish(study)
    assert again.pk == first.pk
    assert StudyVersion.objects.filter(study=study).count() == 1
    assert Event.objects.filter(study=study, kind="study.config.published").count() == 1


@pytest.mark.parametrize(
    "changes",
    [{"system_prompt": "collabllm"}, {"generation_params": {"max_tokens": 16, "top_p": 0.9}}],
)
def test_an_arm_edit_publishes_version_two(study, changes):
    versions.version_publish(study)
    edit_arm(study, **changes)
    second = versions.version_publish(study)
    assert second.number == 2
    assert Study.objects.get(pk=study.pk).config_version == 2 and study.config_version == 2


def test_a_participant_is_stamped_with_the_latest_version(study):
    versions.version_publish(study)
    edit_arm(study, system_prompt="proactive")
    latest = versions.version_publish(study)
    participant = entered(study, "link:p1")
    assert participant.version_id == latest.pk and participant.config_version == 2
    event = Event.objects.get(participant=participant, kind="study.participant.entered")
    assert event.payload["version"] == 2


def test_the_first_entry_publishes_version_one_when_none_exists(study):
    participant = entered(study, "link:p1")
    assert participant.version.number == 1 and participant.config_version == 1


def test_a_participant_keeps_their_versions_arm_after_the_arm_is_edited(study):
    versions.version_publish(study)
    early = advance_to_chat(entered(study, "link:early"))
    edit_arm(
        study,
        system_prompt="collabllm",
        model_name="adapter-x",
        generation_params={"max_tokens": 64, "temperature": 0.2},
    )
    versions.version_publish(study)
    late = advance_to_chat(entered(study, "link:late"))
    old = turns.turn_start(participant_id=early.pk, text="hi", key=new_key()).assistant_message
    new = turns.turn_start(participant_id=late.pk, text="hi", key=new_key()).assistant_message
    assert old.generation_params == {"max_tokens": 16}
    assert old.prompt_ref == "none" and old.model == "fake"
    assert new.generation_params == {"max_tokens": 64, "temperature": 0.2}
    assert new.prompt_ref.startswith("collabllm@v1#") and new.model == "adapter-x"


def test_the_diff_lists_exactly_the_changed_settings(study):
    first = versions.version_publish(study)
    edit_arm(study, generation_params={"max_tokens": 32})
    Study.objects.filter(pk=study.pk).update(min_turns=5)
    second = versions.version_publish(Study.objects.get(pk=study.pk))
    assert versions.version_diff(first, second) == [
        ("arms.solo.generation_params.max_tokens", 16, 32),
        ("study.min_turns", 2, 5),
    ]


def test_the_diff_of_a_setting_added_to_an_empty_dict_names_only_the_new_key(study):
    first = versions.version_publish(study)
    Study.objects.filter(pk=study.pk).update(exclusion_rules={"min_turns": 3})
    second = versions.version_publish(Study.objects.get(pk=study.pk))
    assert versions.version_diff(first, second) == [("study.exclusion_rules.min_turns", None, 3)]


def test_the_diff_names_a_new_arm(study):
    first = versions.version_publish(study)
    ConditionFactory(study=study, key="extra", endpoint=Condition.objects.get(study=study).endpoint)
    second = versions.version_publish(study)
    paths = [path for path, _, _ in versions.version_diff(first, second)]
    assert "arms.extra.system_prompt" in paths
    assert all(p.startswith("arms.extra.") for p in paths)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_the_version_admin_shows_what_changed(researcher, study):
    versions.version_publish(study)
    edit_arm(study, generation_params={"max_tokens": 32})
    second = versions.version_publish(study)
    page = researcher.get(
        reverse("admin:studies_studyversion_change", args=[second.pk])
    ).content.decode()
    assert "v1 → v2" in page
    assert "<code>arms.solo.generation_params.max_tokens</code></th><td>16</td><td>32</td>" in page
    assert "<code>study.min_turns</code>" not in page


def save_in_admin(client, study, **overrides):
    change = reverse("admin:studies_study_change", args=[study.pk])
    data = form_data(client.get(change).content.decode()) | overrides
    response = client.post(change, data, follow=True)
    assert response.redirect_chain, response.context["adminform"].form.errors
    return response


def test_saving_an_edited_arm_in_the_admin_publishes_a_version_and_says_so(researcher, study):
    versions.version_publish(study)
    response = save_in_admin(
        researcher, study, **{"conditions-0-generation_params_max_tokens": "40"}
    )
    assert any("configuration version 2" in m for m in messages_of(response))
    latest = StudyVersion.objects.filter(study=study).latest("number")
    assert latest.number == 2
    assert latest.config["arms"]["solo"]["generation_params"] == {"max_tokens": 40}
    assert Study.objects.get(pk=study.pk).config_version == 2


def test_saving_an_unchanged_study_in_the_admin_publishes_nothing(researcher, study):
    versions.version_publish(study)
    response = save_in_admin(researcher, study)
    assert not any("configuration version" in m for m in messages_of(response))
    assert StudyVersion.objects.filter(study=study).count() == 1


@pytest.fixture
def draft():
    return three_arm_study(status=Study.Status.DRAFT)


def test_going_live_publishes_the_configuration(draft):
    assert not StudyVersion.objects.filter(study=draft).exists()
    study = lifecycle.study_set_status(study_id=draft.pk, status="live", by="ann")
    assert study.status == Study.Status.LIVE
    assert StudyVersion.objects.get(study=draft).number == 1
    event = Event.objects.get(study=draft, kind="study.status.changed")
    assert event.payload == {"from": "draft", "to": "live", "by": "ann"}


def test_a_paused_study_admits_nobody_new_but_lets_entered_participants_go_on(draft):
    lifecycle.study_set_status(study_id=draft.pk, status="live")
    early = Client()
    enter(early, draft, pid="early")
    lifecycle.study_set_status(study_id=draft.pk, status="paused")
    response = enter(Client(), draft, pid="late")
    assert b"not accepting" in response.content
    assert not Participant.objects.filter(external_id="link:late").exists()
    assert early.post(url("consent", draft), {"choice": "agree"}).url == url("brief", draft)
    assert enter(early, draft, pid="early").url == url("brief", draft)


def test_a_resumed_study_admits_new_participants_again(draft):
    lifecycle.study_set_status(study_id=draft.pk, status="live")
    lifecycle.study_set_status(study_id=draft.pk, status="paused")
    lifecycle.study_set_status(study_id=draft.pk, status="live")
    assert enter(Client(), draft, pid="new").url == url("consent", draft)


@pytest.mark.parametrize(
    "path",
    [["closed", "live"], ["closed", "paused"], ["closed", "draft"], ["paused"], ["live", "draft"]],
)
def test_impossible_status_changes_are_refused(draft, path):
    *before, last = path
    for status in before:
        lifecycle.study_set_status(study_id=draft.pk, status=status)
    current = Study.objects.get(pk=draft.pk).status
    with pytest.raises(StudyActionError) as exc:
        lifecycle.study_set_status(study_id=draft.pk, status=last)
    assert exc.value.code == "bad_transition"
    assert Study.objects.get(pk=draft.pk).status == current


def test_a_study_without_arms_cannot_go_live():
    study = StudyFactory(status=Study.Status.DRAFT)
    TaskFactory(study=study)
    with pytest.raises(StudyActionError) as exc:
        lifecycle.study_set_status(study_id=study.pk, status="live")
    assert exc.value.code == "incomplete"
    assert Study.objects.get(pk=study.pk).status == Study.Status.DRAFT
    assert not StudyVersion.objects.filter(study=study).exists()


def study_action(client, action: str, *studies):
    return client.post(
        reverse("admin:studies_study_changelist"),
        {"action": action, "_selected_action": [s.pk for s in studies]},
        follow=True,
    )


def test_the_admin_status_actions_walk_a_study_through_its_life(researcher, draft):
    steps = [("go_live", "live"), ("pause", "paused"), ("resume", "live"), ("close", "closed")]
    for action, status in steps:
        response = study_action(researcher, action, draft)
        assert f"{draft.slug} is now {status}." in messages_of(response)
        assert Study.objects.get(pk=draft.pk).status == status
    assert StudyVersion.objects.filter(study=draft).count() == 1


def test_the_admin_reports_a_study_that_cannot_go_live(researcher):
    empty = StudyFactory(status=Study.Status.DRAFT)
    response = study_action(researcher, "go_live", empty)
    assert any(m.startswith(f"{empty.slug}: A study needs") for m in messages_of(response))
    assert Study.objects.get(pk=empty.pk).status == Study.Status.DRAFT


def test_go_live_does_not_resume_a_paused_study(researcher, draft):
    lifecycle.study_set_status(study_id=draft.pk, status="live")
    lifecycle.study_set_status(study_id=draft.pk, status="paused")
    study_action(researcher, "go_live", draft)
    assert Study.objects.get(pk=draft.pk).status == Study.Status.PAUSED
