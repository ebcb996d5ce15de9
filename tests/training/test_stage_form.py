"""Training stages are edited as named, range-checked fields; nothing is typed as JSON."""

import pytest
from django.urls import reverse

from tests.factories import ModelEndpointFactory
from tests.studies.formdata import form_data
from training.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(tmp_path):
    return TrainingRun.objects.create(
        name="tiny",
        base_model="/models/base",
        policy_endpoint=ModelEndpointFactory(),
        output_dir=str(tmp_path),
    )


def change(client, run, **overrides):
    url = reverse("admin:training_trainingrun_change", args=[run.pk])
    return client.post(url, form_data(client.get(url).content.decode()) | overrides)


def test_the_run_form_shows_each_stage_as_named_fields(researcher, run):
    url = reverse("admin:training_trainingrun_change", args=[run.pk])
    page = researcher.get(url).content.decode()
    assert 'name="sft_learning_rate"' in page and 'name="dpo_beta"' in page
    assert 'name="online_dpo_max_new_tokens"' in page and 'name="stages"' not in page


def test_stage_fields_are_saved_into_the_stages_the_pipeline_reads(researcher, run):
    response = change(
        researcher, run, sft_epochs="1", sft_max_steps="5", dpo_enabled=[], max_length="512"
    )
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.stages["sft"]["epochs"] == 1 and run.stages["sft"]["max_steps"] == 5
    assert run.stages["dpo"]["enabled"] is False and run.stages["dpo"]["beta"] == 0.1
    assert run.stages["max_length"] == 512 and run.stages["sft"]["learning_rate"] == 1e-5


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sft_learning_rate", "", "An enabled stage needs a learning rate"),
        ("dpo_batch_size", "0", "greater than or equal to 1"),
        ("max_length", "x", "Enter a whole number"),
    ],
)
def test_a_bad_stage_value_is_refused_and_saves_nothing(researcher, run, field, value, message):
    before = run.stages
    response = change(researcher, run, **{field: value})
    assert response.status_code == 200 and message in response.content.decode()
    run.refresh_from_db()
    assert run.stages == before
