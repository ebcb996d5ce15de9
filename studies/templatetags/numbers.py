"""`{% load numbers %}`: the filters `duration`, `percent` and `thousands` (studies/numbers.py)."""

from django import template

from studies.numbers import duration_text, percent_text, thousands_text

register = template.Library()
register.filter("duration", duration_text)
register.filter("percent", percent_text)
register.filter("thousands", thousands_text)
