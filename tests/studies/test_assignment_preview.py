"""`manage.py preview_design`: the production allocator over simulated arrivals, no writes."""

import io
import re

import pytest
from django.core.management import CommandError, call_command

from studies.models import AssignmentCounter, Event, Participant
from tests.factories import three_arm_study

pytestmark = pytest.mark.django_db


def preview(slug: str, *args: str) -> str:
    out = io.StringIO()
    call_command("preview_design", slug, *args, stdout=out)
    return out.getvalue()


def max_imbalance(text: str) -> float:
    return float(re.search(r"Max imbalance per stratum: ([\d.]+)", text).group(1))


def test_it_reports_arms_strata_and_a_chi_squared_check_and_writes_nothing():
    study = three_arm_study(block_size=4, block_sizes=[4, 8], stratify_by="document_type")
    study.conditions.filter(key="collabllm").update(weight=2)
    text = preview(study.slug, "--arrivals", "10000")
    assert "χ² goodness of fit vs weights" in text and "df = 2" in text
    assert text.count("document_type=") == 3
    assert max_imbalance(text) <= 2  # at most one block of 8 open per stratum
    assert float(re.search(r"p = ([\d.]+)", text).group(1)) > 0.9  # blocks track the weights
    assert not AssignmentCounter.objects.exists()
    assert not Participant.objects.exists() and not Event.objects.exists()


def test_slot_reuse_keeps_the_stayers_balanced_when_people_return():
    study = three_arm_study(block_size=3, stratify_by="param:STUDY_ID")
    text = preview(
        study.slug, "--arrivals", "3000", "--return-rate", "0.2", "--param-values", "a,b,c"
    )
    assert re.search(r"\d+ returned, \d+ took a freed slot", text)
    assert "STUDY_ID=a" in text and "STUDY_ID=c" in text
    assert max_imbalance(text) <= 1 + 3  # freed slots still waiting: at most the pending returns


def test_caps_show_as_fallbacks_and_refusals():
    study = three_arm_study(block_size=3)
    study.conditions.update(cap=100)
    text = preview(study.slug, "--arrivals", "400")
    assert "100 refused as full" in text and "Caps are set" in text


def test_a_broken_design_is_refused_with_its_problems():
    study = three_arm_study(block_size=4)
    with pytest.raises(CommandError, match="multiple"):
        preview(study.slug)
