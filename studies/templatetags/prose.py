"""Researcher texts (consent, instructions, task brief) as sanitised Markdown."""

from django import template
from django.utils.safestring import SafeString, mark_safe

from studies.services.rendering import render_markdown

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    """Render Markdown with raw HTML off and sanitise it, as for the assistant's replies."""
    return mark_safe(render_markdown(str(text or "")))  # nh3 has sanitised it
