"""Study setup as forms: every JSON setting has named inputs, and broken input is refused on the
field that is wrong, with nothing saved."""

import pytest
from django.urls import reverse
from django.utils.html import escape

from models_serving.prompts import load_prompt
from studies.models import Condition, ModelEndpoint, Study, StudyVersion, Task
from studies.services import lifecycle, versions
from tests.factories import ConditionFactory, StudyFactory, TaskFactory
from tests.studies.formdata import form_data

pytestmark = pytest.mark.django_db


@pytest.fixture
def study():
    study = StudyFactory(status=Study.Status.DRAFT, block_size=2)
    ConditionFactory(study=study, key="a", generation_params={"max_tokens": 16, "stop": ["\n"]})
    ConditionFactory(study=study, key="b")
    TaskFactory(study=study, document_type=Task.DocumentType.BLOG_POST, intent_questions=["Q?"])
    versions.version_publish(study)
    return study


def change_url(study) -> str:
    return reverse("admin:studies_study_change", args=[study.pk])


def post(client, study, **overrides):
    data = form_data(client.get(change_url(study)).content.decode()) | overrides
    return client.post(change_url(study), data)


def refused(response) -> str:
    """The re-rendered form's page (a refused save answers 200, not a redirect)."""
    assert response.status_code == 200, "the save was accepted"
    return response.content.decode()


def field_errors(response, field: str) -> list[str]:
    return list(response.context["adminform"].form.errors.get(field, []))


def nothing_saved(study) -> bool:
    return StudyVersion.objects.filter(study=study).count() == 1


CHECK = "comprehension_questions-0"


def test_the_change_page_has_named_inputs_for_every_json_setting(researcher, study):
    page = researcher.get(change_url(study)).content.decode()
    for name in (
        f"{CHECK}-question",
        f"{CHECK}-choice-0",
        f"{CHECK}-answer",
        "attention_checks-0-question",
        "exclusion_rules_min_active_minutes",
        "exclusion_rules_failed_attention",
        "conditions-0-generation_params_temperature",
        "conditions-0-generation_params_max_tokens",
    ):
        assert f'name="{name}"' in page, name
    assert 'name="tasks-0-intent_questions"' in page and "Q?</textarea>" in page


def test_a_check_written_in_the_form_is_saved_as_the_json_the_services_read(researcher, study):
    response = post(
        researcher,
        study,
        **{
            f"{CHECK}-question": "Who writes the document?",
            f"{CHECK}-choice-0": "The assistant",
            f"{CHECK}-choice-2": "You do",
            f"{CHECK}-answer": "2",
        },
    )
    assert response.status_code == 302
    assert Study.objects.get(pk=study.pk).comprehension_questions == [
        {
            "question": "Who writes the document?",
            "choices": ["The assistant", "You do"],
            "answer": 1,
        },
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"choice-0": "Yes", "choice-1": "No", "answer": "0"}, "Question 1: write the question."),
        ({"question": "Sure?", "choice-0": "Yes", "answer": "0"}, "at least two options"),
        ({"question": "Sure?", "choice-0": "Yes", "choice-1": "No"}, "choose the correct answer"),
        (
            {"question": "Sure?", "choice-0": "Yes", "choice-1": "No", "answer": "3"},
            "must be one of its filled-in options",
        ),
    ],
)
def test_a_broken_check_is_refused_on_its_field_and_saves_nothing(
    researcher, study, fields, message
):
    response = post(researcher, study, **{f"{CHECK}-{k}": v for k, v in fields.items()})
    refused(response)
    assert any(message in e for e in field_errors(response, "comprehension_questions"))
    assert Study.objects.get(pk=study.pk).comprehension_questions == []
    assert nothing_saved(study)


def test_a_broken_check_keeps_what_was_typed(researcher, study):
    response = post(
        researcher, study, **{f"{CHECK}-question": "Typed once", f"{CHECK}-choice-0": "Yes"}
    )
    assert 'value="Typed once"' in refused(response)


def test_forged_row_counts_are_bounded_and_never_crash(researcher, study):
    response = post(
        researcher,
        study,
        **{"comprehension_questions-rows": "999999999", f"{CHECK}-slots": "x"},
    )
    assert response.status_code == 302
    assert Study.objects.get(pk=study.pk).comprehension_questions == []


def test_exclusion_rules_are_named_fields(researcher, study):
    response = post(
        researcher,
        study,
        exclusion_rules_min_active_minutes="2.5",
        exclusion_rules_failed_attention="on",
        exclusion_rules_min_user_chars="200",
    )
    assert response.status_code == 302
    rules = Study.objects.get(pk=study.pk).exclusion_rules
    assert rules == {"min_active_minutes": 2.5, "failed_attention": True, "min_user_chars": 200}


def test_a_negative_exclusion_rule_is_refused(researcher, study):
    response = post(researcher, study, exclusion_rules_min_turns="-1")
    refused(response)
    assert field_errors(response, "exclusion_rules")
    assert nothing_saved(study)


def test_block_sizes_are_typed_as_numbers_and_checked(researcher, study):
    response = post(researcher, study, block_sizes="2, x")
    refused(response)
    assert any("'x'" in e for e in field_errors(response, "block_sizes"))
    assert post(researcher, study, block_sizes="2, 4").status_code == 302
    assert Study.objects.get(pk=study.pk).block_sizes == [2, 4]


def test_a_block_size_the_arm_weights_do_not_divide_is_refused_with_the_fix(researcher, study):
    response = post(researcher, study, **{"conditions-0-weight": "2"})
    page = refused(response)
    assert "Block size 2 is not a multiple of the summed weights of the active arms (3)" in page
    assert "use e.g. 3, 6, 9" in page
    assert Condition.objects.get(study=study, key="a").weight == 1
    assert nothing_saved(study)


def test_an_inactive_arm_does_not_count_towards_the_block(researcher, study):
    data = {"conditions-0-weight": "2", "block_size": "2"}
    page = form_data(researcher.get(change_url(study)).content.decode()) | data
    page.pop("conditions-1-is_active")
    assert researcher.post(change_url(study), page).status_code == 302


def test_generation_parameters_have_ranges(researcher, study):
    response = post(researcher, study, **{"conditions-0-generation_params_temperature": "3"})
    page = refused(response)
    assert "less than or equal to 2" in page
    assert Condition.objects.get(study=study, key="a").generation_params["max_tokens"] == 16


def test_generation_parameters_keep_settings_the_form_does_not_name(researcher, study):
    response = post(
        researcher,
        study,
        **{
            "conditions-0-generation_params_temperature": "0.5",
            "conditions-0-generation_params_max_tokens": "64",
        },
    )
    assert response.status_code == 302
    params = Condition.objects.get(study=study, key="a").generation_params
    assert params == {"temperature": 0.5, "max_tokens": 64, "stop": ["\n"]}


def test_the_system_prompt_is_chosen_among_the_prompts_that_exist(researcher, study):
    page = researcher.get(change_url(study)).content.decode()
    assert '<option value="collabllm">' in page and '<option value="proactive">' in page
    response = post(researcher, study, **{"conditions-0-system_prompt": "no-such-prompt"})
    refused(response)
    assert nothing_saved(study)


def test_a_prompt_version_that_does_not_exist_is_refused(researcher, study):
    response = post(
        researcher,
        study,
        **{"conditions-0-system_prompt": "none", "conditions-0-prompt_version": "v1"},
    )
    assert "Choose a version that exists" in refused(response)


def test_the_saved_prompt_is_shown_read_only(researcher, study):
    Condition.objects.filter(study=study, key="a").update(system_prompt="collabllm")
    page = researcher.get(change_url(study)).content.decode()
    assert '<details class="setup-prompt"><summary>collabllm@v1#' in page


def test_every_prompt_version_can_be_read_before_choosing_it(researcher):
    page = researcher.get(reverse("admin:studies_study_add")).content.decode()
    for name in ("collabllm", "proactive"):
        prompt = load_prompt(name)
        assert f"<summary>{prompt.ref}</summary><pre>{escape(prompt.text)}</pre>" in page


def test_intent_questions_are_one_per_line(researcher, study):
    response = post(researcher, study, **{"tasks-0-intent_questions": "First?\r\n\r\n Second? "})
    assert response.status_code == 302
    assert Task.objects.get(study=study).intent_questions == ["First?", "Second?"]


def test_a_bad_stratum_is_refused(researcher, study):
    response = post(researcher, study, stratify_by="param:SESSION_ID")
    refused(response)
    assert any("token is not a stratum" in e for e in field_errors(response, "stratify_by"))


def test_a_new_study_starts_as_a_draft_whatever_the_form_posts(researcher):
    add = reverse("admin:studies_study_add")
    data = form_data(researcher.get(add).content.decode())
    data |= {"title": "T", "slug": "t", "consent_text": "Agree?", "status": "live"}
    assert researcher.post(add, data).status_code == 302
    assert Study.objects.get(slug="t").status == Study.Status.DRAFT


def test_go_live_lists_every_problem_at_once():
    study = StudyFactory(status=Study.Status.DRAFT, block_size=4)
    ConditionFactory(study=study, key="capped", cap=0)
    down = ConditionFactory(study=study, key="down", weight=2)
    ModelEndpoint.objects.filter(pk=down.endpoint_id).update(health=ModelEndpoint.Health.DOWN)
    with pytest.raises(lifecycle.StudyNotReady) as exc:
        lifecycle.study_set_status(study_id=study.pk, status="live")
    problems = " | ".join(exc.value.problems)
    assert "Arm capped: its cap is 0" in problems
    assert "Arm down: its endpoint" in problems and "was down" in problems
    assert "no tasks" in problems
    assert "Block size 4 is not a multiple" in problems
    assert Study.objects.get(pk=study.pk).status == Study.Status.DRAFT


def test_go_live_names_an_arm_whose_endpoint_key_is_not_set(monkeypatch):
    monkeypatch.delenv("MODEL_API_KEY_SETUP", raising=False)
    study = StudyFactory(status=Study.Status.DRAFT, block_size=1)
    arm = ConditionFactory(study=study, key="keyed")
    ModelEndpoint.objects.filter(pk=arm.endpoint_id).update(api_key_env="MODEL_API_KEY_SETUP")
    TaskFactory(study=study)
    with pytest.raises(lifecycle.StudyNotReady) as exc:
        lifecycle.study_set_status(study_id=study.pk, status="live")
    assert exc.value.problems == [
        f"Arm keyed: its endpoint {arm.endpoint.name} takes its key from MODEL_API_KEY_SETUP, "
        "which this deployment does not set (or allow)."
    ]
    monkeypatch.setenv("MODEL_API_KEY_SETUP", "sk-test")
    assert lifecycle.study_set_status(study_id=study.pk, status="live").status == "live"
