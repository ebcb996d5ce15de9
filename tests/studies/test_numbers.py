"""Numbers for people: durations, shares and counts as the admin shows them."""

import pytest
from django.template import Context, Template

from studies.numbers import duration_text, percent_text, thousands_text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.12345, "0.12 s"),
        (4.26, "4.3 s"),
        (45.4, "45 s"),
        (132.66186600000003, "2 min 13 s"),
        (3600 + 62 * 60 + 5, "2 h 02 min"),
    ],
)
def test_a_duration_reads_as_hours_minutes_and_seconds(seconds, text):
    assert duration_text(seconds) == text


def test_a_share_reads_as_a_percentage():
    assert (percent_text(0.4213), percent_text(0.4213, 1), percent_text(None)) == (
        "42%",
        "42.1%",
        "-",
    )


def test_a_count_of_tokens_gets_thousands_separators():
    assert (thousands_text(1234567), thousands_text(9876.6), thousands_text(None)) == (
        "1,234,567",
        "9,877",
        "-",
    )


def test_the_template_filters_format_like_the_functions():
    template = Template("{% load numbers %}{{ s|duration }} {{ f|percent }} {{ n|thousands }}")
    rendered = template.render(Context({"s": 132.66186600000003, "f": 0.5, "n": 12345}))
    assert rendered == "2 min 13 s 50% 12,345"
