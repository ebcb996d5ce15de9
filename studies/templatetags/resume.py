"""`{% resume_code study.slug as code %}`: the resume code held by this browser's own session."""

from django import template

from studies.sessions import session_resume_code

register = template.Library()


@register.simple_tag(takes_context=True)
def resume_code(context: template.Context, slug: str) -> str:
    """The code the session was shown or entered for the study; '' when it holds none."""
    request = context.get("request")
    session = getattr(request, "session", None)
    return session_resume_code(session, slug) if session is not None else ""
