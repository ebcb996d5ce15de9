"""Signed researcher links: preview (never in the data) and pilot (simulated participants).

Both work on draft and paused studies, so a study can be tried and piloted before anyone is paid.
The token binds the study and the kind; it expires after `max_age` seconds.
"""

from urllib.parse import urlencode

from django.core import signing
from django.urls import reverse

from studies.models import Study

KINDS = ("preview", "pilot")
SALT = "studies.access"
MAX_AGE_SECONDS = 7 * 24 * 3600


def access_token(study: Study, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown access kind {kind!r}")
    return signing.dumps({"study": study.pk, "kind": kind}, salt=SALT, compress=True)


def access_link(study: Study, kind: str) -> str:
    """Path of the entry URL that makes a preview or pilot participant."""
    query = urlencode({kind: access_token(study, kind)})
    return f"{reverse('studies:entry', args=[study.slug])}?{query}"


def access_kind(
    study: Study, params: dict[str, str], *, max_age: int = MAX_AGE_SECONDS
) -> str | None:
    """'preview' or 'pilot' when the request carries a valid token for this study, else None."""
    for kind in KINDS:
        token = params.get(kind)
        if not token:
            continue
        try:
            data = signing.loads(token, salt=SALT, max_age=max_age)
        except signing.BadSignature:
            return None
        if data.get("study") == study.pk and data.get("kind") == kind:
            return kind
        return None
    return None
