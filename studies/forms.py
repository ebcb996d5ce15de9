"""Form fields shared by the participant pages."""

from typing import Any

from django import forms

from studies.services.text import normalise_newlines


class FreeTextField(forms.CharField):
    """Typed text: a browser sends a textarea's line breaks as CRLF; one newline is one char."""

    def to_python(self, value: Any) -> str:
        return normalise_newlines(super().to_python(value))
