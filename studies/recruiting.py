"""The recruiting parameters of an entry link, checked before anything is looked up or stored.

A bad value (too long, an odd character, an unfilled placeholder, given twice) is refused with a
message for the participant rather than cut to fit: a cut id could collide with someone else's.
"""

import re
from dataclasses import dataclass, field

from django.http import QueryDict
from django.utils.translation import gettext as _

# Source -> (the key holding the participant's id, every key kept from the link).
RECRUITING_KEYS = {
    "prolific": ("PROLIFIC_PID", ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID")),
    "mturk": ("workerId", ("workerId", "assignmentId", "hitId")),
    "link": ("pid", ("pid",)),
}
MTURK_PREVIEW = "ASSIGNMENT_ID_NOT_AVAILABLE"
# Platform ids and tokens are short ASCII (Prolific: 24 hex digits; MTurk: uppercase letters and
# digits); `source:` + 128 characters stays well inside Participant.external_id's 200.
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
MAX_EXTRA_CHARS = 128


class BadRecruitingParam(ValueError):
    """A recruiting parameter the entry page refuses; `message` is for the participant."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Recruiting:
    source: str
    external_id: str | None
    params: dict[str, str] = field(default_factory=dict)


def _one(query: QueryDict, key: str) -> str:
    values = query.getlist(key)
    if len(values) > 1:
        raise BadRecruitingParam(_("The link gives %(key)s more than once.") % {"key": key})
    return values[0].strip() if values else ""


def _token(query: QueryDict, key: str) -> str:
    value = _one(query, key)
    if key in query and not ID_PATTERN.fullmatch(value):
        raise BadRecruitingParam(
            _(
                "The value of %(key)s in this link is not valid (1 to 128 letters, digits or "
                "_ . : @ -). Please open the study again from your recruiting platform's link."
            )
            % {"key": key}
        )
    return value


def _extra(query: QueryDict, key: str) -> dict[str, str]:
    """A stratifying parameter: free text, but short and printable."""
    if key not in query:
        return {}
    value = _one(query, key)
    if len(value) > MAX_EXTRA_CHARS or not value.isprintable():
        raise BadRecruitingParam(
            _("The value of %(key)s in this link is too long or has characters it may not have.")
            % {"key": key}
        )
    return {key: value}


def recruiting_from_query(query: QueryDict, stratify_by: str = "") -> Recruiting:
    """(source, external id, params) from an entry link; raises BadRecruitingParam on bad input.

    The first platform whose id key is present decides the source; an id key present but empty
    is an error (an unfilled link), not an anonymous entry. `stratify_by` "param:NAME" keeps NAME.
    """
    extra = stratify_by.removeprefix("param:") if stratify_by.startswith("param:") else ""
    for source, (id_key, keys) in RECRUITING_KEYS.items():
        if id_key not in query:
            continue
        params = {k: _token(query, k) for k in keys if k in query}
        params = {k: params.get(k, "") for k in keys}
        if extra and extra not in keys:
            params[extra] = _extra(query, extra).get(extra, "")
        return Recruiting(source, f"{source}:{params[id_key]}", params)
    return Recruiting("link", None, _extra(query, extra) if extra else {})
