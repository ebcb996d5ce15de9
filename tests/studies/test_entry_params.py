"""Bad recruiting parameters at the door get a clear 400 page and change nothing."""

import pytest
from django.http import QueryDict
from django.test import Client

from studies.models import Event, Participant, Study
from tests.factories import three_arm_study
from tests.studies.test_flow import url

pytestmark = pytest.mark.django_db

BAD_IDS = {
    "too long": "a" * 196,
    "just too long": "a" * 129,
    "a control character": "p1\x00x",
    "a newline inside": "p1\nx",
    "unicode": "pé1",
    "an unfilled placeholder": "{{%PROLIFIC_PID%}}",
    "empty after strip": "   ",
    "empty": "",
}


def nothing_stored() -> bool:
    return not Participant.objects.exists() and not Event.objects.exists()


@pytest.mark.parametrize("value", BAD_IDS.values(), ids=BAD_IDS.keys())
@pytest.mark.parametrize("key,source", [("pid", "link"), ("PROLIFIC_PID", "prolific")])
def test_a_bad_recruiting_id_gets_a_clear_400_page_and_changes_nothing(key, source, value):
    study = three_arm_study(recruiting_source=source)
    client = Client()
    response = client.get(url("entry", study), {key: value})
    assert response.status_code == 400
    assert key in response.content.decode() and study.title in response.content.decode()
    assert nothing_stored()
    assert f"participant:{study.slug}" not in client.session


@pytest.mark.parametrize(
    "params",
    [
        {"PROLIFIC_PID": "p1", "STUDY_ID": "S", "SESSION_ID": "s" * 300},
        {"PROLIFIC_PID": "p1", "STUDY_ID": "S\x07", "SESSION_ID": "s1"},
        {"PROLIFIC_PID": "p1", "STUDY_ID": "S", "SESSION_ID": "sé"},
    ],
)
def test_a_bad_platform_token_is_refused_too(params):
    study = three_arm_study(recruiting_source=Study.Source.PROLIFIC)
    assert Client().get(url("entry", study), params).status_code == 400
    assert nothing_stored()


def test_an_id_given_twice_is_refused():
    study = three_arm_study()
    response = Client().get(f"{url('entry', study)}?pid=a&pid=b")
    assert response.status_code == 400 and nothing_stored()


@pytest.mark.parametrize("value", ["x" * 129, "young\x00", "line\nbreak"])
def test_a_bad_stratifying_parameter_is_refused(value):
    study = three_arm_study(stratify_by="param:band")
    response = Client().get(url("entry", study), {"pid": "p1", "band": value})
    assert response.status_code == 400 and nothing_stored()


def test_the_longest_allowed_id_with_every_allowed_character_enters():
    study = three_arm_study()
    value = ("Az09_.:@-" * 15)[:128]
    response = Client().get(url("entry", study), {"pid": f"  {value} "})
    assert response.status_code == 302 and response.url == url("consent", study)
    assert Participant.objects.get(study=study).external_id == f"link:{value}"


def test_params_are_parsed_into_source_id_and_kept_keys():
    from studies.recruiting import recruiting_from_query

    query = QueryDict("workerId=W1&assignmentId=A1&utm=x&band=old")
    link = recruiting_from_query(query, "param:band")
    assert link.source == "mturk" and link.external_id == "mturk:W1"
    assert link.params == {"workerId": "W1", "assignmentId": "A1", "hitId": "", "band": "old"}


def test_a_parse_error_names_the_parameter():
    from studies.recruiting import BadRecruitingParam, recruiting_from_query

    with pytest.raises(BadRecruitingParam) as exc:
        recruiting_from_query(QueryDict("PROLIFIC_PID=p1&SESSION_ID=" + "s" * 200))
    assert "SESSION_ID" in exc.value.message
