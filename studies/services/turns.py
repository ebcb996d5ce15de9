"""Chat turns: start, retry, checkpoint, complete, fail, and the blocking ratings between them.

A turn is one user message and its assistant reply. `turn_start` writes both rows (the reply as a
`streaming` placeholder carrying the pinned model, prompt and parameters) in one commit; the reply's
text is then checkpointed every ~1-2 s and written once more on completion. No write per token.
"""

import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Count, Exists, Max, OuterRef, Q
from django.utils import timezone
from django.utils.translation import gettext as _
from redis.exceptions import RedisError

from models_serving.prompts import load_prompt
from studies.models import Message, Participant, Study, TurnRating
from studies.services import inflight
from studies.services.activity import activity_apply
from studies.services.errors import StudyActionError
from studies.services.events import event_record
from studies.services.rendering import render_markdown
from studies.services.text import normalise_newlines
from studies.services.versions import arm_settings, frozen_study

log = logging.getLogger(__name__)
P = Participant.Status
M = Message.Status
RETRYABLE = {M.FAILED, M.INTERRUPTED}
# error_kind of a reply the reaper interrupted: its process looked dead, but if it was only
# unreachable it may still finish, and then the reply is stored (turn_complete).
REAPED = "stale"
# error_kind of a reply that finished after its participant's chat had ended: kept, not counted.
LATE = "finished_late"
# A reply streaming for a participant who left for good, or in a closed study, is cancelled.
GONE = {P.ABANDONED, P.RETURNED, P.TIMED_OUT, P.EXCLUDED}
# Continuing a reply cut off at the token limit: a bounded number per turn, each a new assistant
# row on the same turn (continuation_of set) that never counts as a turn. The model is asked with
# the conversation up to the cut reply and then this fixed user message: both llama.cpp's server
# and vLLM apply the chat template to it as to any message (neither supports asking a model to
# extend an unfinished assistant message in the same way). The instruction used is recorded in
# the row's generation_params under CONTINUATION_KEY (kept out of the request's parameters).
LENGTH = "length"
CONTINUATIONS_PER_TURN = 3
CONTINUATION_KEY = "continuation"
CONTINUE_INSTRUCTION = (
    "Continue exactly where you stopped. Do not repeat anything you already wrote and do not "
    "start over; write only the rest of your reply."
)
# Only complete replies that are not continuations are turns (counted for ratings, min/max turns).
TURN_REPLY = Q(role=Message.Role.ASSISTANT, status=M.COMPLETE, continuation_of__isnull=True)


@dataclass(frozen=True)
class TurnStarted:
    user_message: Message
    assistant_message: Message | None
    replayed: bool = False


def _lock(participant_id: int) -> Participant:
    return (
        Participant.objects.select_for_update(of=("self",))
        .select_related("study", "condition__endpoint", "version")
        .get(pk=participant_id)
    )


def _require_chatting(participant: Participant, *, streaming: bool | None = None) -> None:
    if participant.status == P.RATING_DUE:
        raise StudyActionError("rating_due", _("Please rate the conversation so far to continue."))
    if participant.status != P.CHATTING:
        raise StudyActionError("wrong_step", _("The chat is closed for you."))
    if streaming is None:
        streaming = participant.messages.filter(status=M.STREAMING).exists()
    if streaming:
        raise StudyActionError("busy", _("Please wait until the assistant's reply has finished."))


def _turn_stats(participant: Participant, *, key: uuid.UUID, since) -> dict:
    """Everything turn_start checks, in one query (it sits on the time to first token)."""
    user = Q(role=Message.Role.USER)
    return participant.messages.aggregate(
        replay=Max("id", filter=Q(idempotency_key=key)),
        streaming=Count("id", filter=Q(status=M.STREAMING)),
        done=Count("id", filter=TURN_REPLY),
        recent=Count("id", filter=user & Q(created_at__gte=since)),
        last_turn=Max("turn_index"),
    )


def _assistant_placeholder(
    participant: Participant,
    *,
    turn_index: int,
    attempt: int,
    continuation_of: Message | None = None,
) -> Message:
    """The reply row, pinned to the arm as frozen in the participant's study version."""
    condition = participant.condition
    assert condition is not None
    frozen = arm_settings(participant) or {
        f: getattr(condition, f)
        for f in ("model_name", "system_prompt", "prompt_version", "generation_params")
    }
    prompt = load_prompt(frozen["system_prompt"], frozen["prompt_version"] or None)
    params = frozen["generation_params"]
    if continuation_of is not None:
        params = {**params, CONTINUATION_KEY: {"instruction": CONTINUE_INSTRUCTION}}
    return Message.objects.create(
        participant=participant,
        turn_index=turn_index,
        role=Message.Role.ASSISTANT,
        attempt=attempt,
        status=M.STREAMING,
        model=frozen["model_name"] or condition.endpoint.served_model,
        endpoint_url=condition.endpoint.base_url,
        prompt_ref=prompt.ref,
        generation_params=params,
        continuation_of=continuation_of,
    )


def chat_deadline(participant: Participant) -> datetime | None:
    """When the study's time limit ends this participant's chat (None: no limit)."""
    minutes = frozen_study(participant).time_limit_minutes
    start = participant.chat_started_at
    return start + timedelta(minutes=minutes) if minutes and start else None


def time_is_up(participant: Participant, now: datetime | None = None) -> bool:
    deadline = chat_deadline(participant)
    return deadline is not None and (now or timezone.now()) >= deadline


def turn_start(*, participant_id: int, text: str, key: uuid.UUID) -> TurnStarted:
    """Persist a user message and a streaming reply placeholder, or refuse with a clear reason."""
    text = normalise_newlines(text).strip()
    if not text:
        raise StudyActionError("empty", _("Please write a message first."))
    if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise StudyActionError(
            "too_long",
            _("Messages are limited to %(chat_max_message_chars)s characters.")
            % {"chat_max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS},
        )
    now = timezone.now()
    with transaction.atomic():
        participant = _lock(participant_id)
        stats = _turn_stats(participant, key=key, since=now - timedelta(minutes=1))
        if stats["replay"] is not None:
            return TurnStarted(Message.objects.get(pk=stats["replay"]), None, replayed=True)
        _require_chatting(participant, streaming=stats["streaming"] > 0)
        if time_is_up(participant, now):
            raise StudyActionError(
                "time_up",
                _("Your time for the chat is up; please continue to the final questions."),
            )
        shortest = frozen_study(participant).min_user_message_chars
        if len(text) < shortest:
            raise StudyActionError(
                "too_short",
                _("Please write at least %(shortest)s characters so the assistant can help you.")
                % {"shortest": shortest},
            )
        last_turn, done = stats["last_turn"] or 0, stats["done"]
        if done < last_turn:  # every turn gets its reply row at once, so this one failed
            raise StudyActionError(
                "retry_needed", _("The last reply did not finish; retry it first.")
            )
        max_turns = frozen_study(participant).max_turns
        if max_turns is not None and done >= max_turns:
            raise StudyActionError("max_turns", _("You have reached the last turn of this chat."))
        if stats["recent"] >= settings.CHAT_TURNS_PER_MINUTE:
            raise StudyActionError("rate_limited", _("You are sending messages too quickly."))
        turn_index = last_turn + 1
        user = Message.objects.create(
            participant=participant,
            turn_index=turn_index,
            role=Message.Role.USER,
            content=text,
            status=M.COMPLETE,
            idempotency_key=key,
            completed_at=now,
        )
        reply = _assistant_placeholder(participant, turn_index=turn_index, attempt=1)
        participant.save(update_fields=activity_apply(participant, signal="message", now=now))
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.turn.started",
            payload={"turn": turn_index, "user_message": user.pk, "reply": reply.pk},
        )
    return TurnStarted(user, reply)


def turn_retry(*, participant_id: int, message_id: int) -> Message:
    """Start a new attempt for the participant's last reply when it failed or was interrupted."""
    with transaction.atomic():
        participant = _lock(participant_id)
        _require_chatting(participant)
        last = participant.messages.filter(role=Message.Role.ASSISTANT).order_by("-id").first()
        if last is None or last.pk != message_id or last.status not in RETRYABLE:
            raise StudyActionError("not_retryable", _("Only the last failed reply can be retried."))
        reply = _assistant_placeholder(
            participant,
            turn_index=last.turn_index,
            attempt=last.attempt + 1,
            continuation_of=last.continuation_of,
        )
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.turn.retried",
            payload={"turn": last.turn_index, "failed": last.pk, "reply": reply.pk},
        )
    return reply


def continue_allowed(participant: Participant) -> bool:
    """Whether the participant's arm, as frozen in their version, lets cut replies continue."""
    frozen = arm_settings(participant)
    if frozen is not None:
        return bool(frozen.get("allow_continue", True))
    return participant.condition is not None and participant.condition.allow_continue


def _not_continuable() -> StudyActionError:
    return StudyActionError(
        "not_continuable",
        _("Only the last reply that was cut off at the length limit can be continued."),
    )


def continue_refusal(participant: Participant, reply: Message) -> StudyActionError | None:
    """Why `reply` cannot be continued now, or None when it can."""
    cut = reply.role == Message.Role.ASSISTANT and reply.status == M.COMPLETE
    if not (cut and reply.finish_reason == LENGTH):
        return _not_continuable()
    try:
        _require_chatting(participant)
    except StudyActionError as exc:
        return exc
    latest = participant.messages.filter(role=Message.Role.ASSISTANT).order_by("-id").first()
    if latest is None or latest.pk != reply.pk:
        return _not_continuable()
    if time_is_up(participant):
        return StudyActionError(
            "time_up", _("Your time for the chat is up; please continue to the final questions.")
        )
    if not continue_allowed(participant):
        return StudyActionError("continue_off", _("Replies cannot be continued in this chat."))
    continued = participant.messages.filter(
        turn_index=reply.turn_index, continuation_of__isnull=False, status=M.COMPLETE
    ).count()
    if continued >= CONTINUATIONS_PER_TURN:
        return StudyActionError("continue_limit", _("This reply cannot be continued any further."))
    return None


def turn_continue(*, participant_id: int, message_id: int) -> Message:
    """Start a continuation of the participant's last reply when it stopped at the token limit."""
    with transaction.atomic():
        participant = _lock(participant_id)
        cut = participant.messages.filter(pk=message_id).first()  # only this participant's
        if cut is None:
            raise _not_continuable()
        if (refusal := continue_refusal(participant, cut)) is not None:
            raise refusal
        attempts = participant.messages.filter(
            role=Message.Role.ASSISTANT, turn_index=cut.turn_index
        ).aggregate(last=Max("attempt"))
        reply = _assistant_placeholder(
            participant,
            turn_index=cut.turn_index,
            attempt=attempts["last"] + 1,
            continuation_of=cut,
        )
        now = timezone.now()
        participant.save(update_fields=activity_apply(participant, signal="active", now=now))
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.turn.continued",
            payload={"turn": cut.turn_index, "continues": cut.pk, "reply": reply.pk},
        )
    return reply


def join_reply_parts(parts: list[str]) -> str:
    """A cut reply and its continuations as one text, as later turns' history holds it.

    A model asked to go on starts its message without the space its tokenizer would have put
    between two words, so one is added where both sides of the seam are text and the next part
    does not open with punctuation (a cut inside a word gets a stray space: the rarer case).
    """
    text = ""
    for part in parts:
        if text and part and not text[-1].isspace() and not part[0].isspace():
            if part[0] not in ".,;:!?)]}'\"":
                text += " "
        text += part
    return text


def _later_attempt() -> Exists:
    """A later attempt on the reply's turn, or a later turn (which a reaped continuation does
    not block): either replaced the reply, so it is no longer completed."""
    return Exists(
        Message.objects.filter(
            Q(turn_index=OuterRef("turn_index"), attempt__gt=OuterRef("attempt"))
            | Q(turn_index__gt=OuterRef("turn_index")),
            participant=OuterRef("participant"),
            role=Message.Role.ASSISTANT,
        )
    )


def turn_checkpoint(*, message_id: int, text: str) -> bool:
    """Save the partial reply so far (one UPDATE, no event); False if it should stop.

    The filter doubles as the abandonment check: the UPDATE touches no row when the reply is no
    longer streaming, its participant has left for good, or its study was closed. A reply the
    reaper wrongly took for dead keeps going (and keeps its text) until a retry replaces it.
    """
    reaped = Q(status=M.INTERRUPTED, error_kind=REAPED) & ~_later_attempt()
    live = (
        Message.objects.filter(Q(status=M.STREAMING) | reaped, pk=message_id)
        .exclude(participant__status__in=GONE)
        .exclude(participant__study__status=Study.Status.CLOSED)
    )
    return live.update(content=text, updated_at=timezone.now()) > 0


@dataclass(frozen=True)
class TurnOutcome:
    message: Message
    rating_due_after: int | None
    completed_turns: int
    superseded: bool = False  # a late reply kept on its reaped row; a retry replaced it
    status: str = ""  # the participant's status after the write
    continuable: bool = False  # the participant may ask this reply to continue now


def turn_complete(
    *,
    message_id: int,
    text: str,
    model: str,
    finish_reason: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    time_to_first_token: float | None,
    duration: float,
    usage_source: str = "stream",
    inter_token_latency: float | None = None,
    endpoint_url: str = "",
    held: bool = False,
) -> TurnOutcome:
    """Store the finished reply once and open the rating checkpoint when the schedule says so.

    `held` says the reply waited in Redis for the database (recorded in the event).

    A reply the reaper interrupted while its process still lived is completed all the same when
    no retry has replaced it and its participant is still chatting; otherwise its text is kept on
    the interrupted row (no rating opens, completed turns do not change). Completing a
    complete reply raises `already_complete` (held replies may be written twice: stored once).
    """
    now = timezone.now()
    html = render_markdown(text)  # once, outside the locks; every later read reuses it
    with transaction.atomic():
        # Lock order everywhere: participant, then message.
        participant = _lock(
            Message.objects.values_list("participant_id", flat=True).get(pk=message_id)
        )
        message = (
            Message.objects.select_for_update(of=("self",))
            .annotate(superseded=_later_attempt())
            .get(pk=message_id)
        )
        reaped = message.status == M.INTERRUPTED and message.error_kind == REAPED
        if message.status == M.COMPLETE:
            raise StudyActionError("already_complete", _("This reply is already saved."))
        if message.status != M.STREAMING and not reaped:
            raise StudyActionError("not_streaming", _("This reply is no longer in progress."))
        if reaped and message.superseded:
            return _keep_late_reply(participant, message, text)
        if participant.status not in (P.CHATTING, P.RATING_DUE):  # finished, left or excluded
            return _keep_late_reply(participant, message, text)
        message.content = text
        message.html = html
        message.status = M.COMPLETE
        if reaped:
            message.error_kind = message.error_detail = ""
        message.model = model or message.model
        message.finish_reason = finish_reason or ""
        message.prompt_tokens = prompt_tokens
        message.completion_tokens = completion_tokens
        message.usage_source = usage_source
        message.time_to_first_token = time_to_first_token
        message.inter_token_latency = inter_token_latency
        message.endpoint_url = endpoint_url or message.endpoint_url
        message.duration = duration
        message.completed_at = now
        message.save()
        done = participant.messages.filter(TURN_REPLY).count()
        every = frozen_study(participant).rating_every
        rating_due = (
            done
            if every
            and done % every == 0
            and participant.status == P.CHATTING
            and message.continuation_of_id is None
            else None
        )
        if rating_due is not None:
            participant.status = P.RATING_DUE
            participant.save(update_fields=["status"])
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.turn.completed",
            payload={
                "turn": message.turn_index,
                "reply": message.pk,
                "rating_due": rating_due,
                # A continuation completes a part of the turn's reply, not another turn.
                **({"continues": message.continuation_of_id} if message.continuation_of_id else {}),
                **({"after_reaped": True} if reaped else {}),
                **({"held": True} if held else {}),
            },
        )
    return TurnOutcome(
        message,
        rating_due,
        done,
        status=participant.status,
        continuable=continue_refusal(participant, message) is None,
    )


def turn_usage_record(
    *, message_id: int, prompt_tokens: int | None, completion_tokens: int | None, usage_source: str
) -> bool:
    """Record token counts made after the reply was stored (one UPDATE; False if none changed).

    Only a reply stored without counts gets them: counts the stream carried are never replaced.
    """
    rows = Message.objects.filter(pk=message_id, status=M.COMPLETE, completion_tokens__isnull=True)
    return (
        rows.update(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            usage_source=usage_source,
        )
        > 0
    )


def _keep_late_reply(participant: Participant, message: Message, text: str) -> TurnOutcome:
    """Keep the text of a reply that finished too late to count, without completing it.

    Too late: a retry replaced it after the reaper ended it, or its participant is no longer
    chatting (finished, left, excluded). A row still streaming is ended as interrupted.
    """
    message.content = text
    fields = ["content", "updated_at"]
    if message.status == M.STREAMING:
        message.status, message.error_kind = M.INTERRUPTED, LATE
        message.error_detail = "The reply finished after the participant's chat had ended."
        fields += ["status", "error_kind", "error_detail"]
    message.save(update_fields=fields)
    event_record(
        study_id=participant.study_id,
        participant_id=participant.pk,
        kind="study.turn.late_reply_kept",
        payload={"turn": message.turn_index, "reply": message.pk, "status": participant.status},
    )
    done = participant.messages.filter(TURN_REPLY).count()
    return TurnOutcome(message, None, done, superseded=True)


def turn_fail(
    *,
    message_id: int,
    text: str | None,
    kind: str,
    detail: str,
    interrupted: bool = False,
    endpoint_url: str = "",
) -> None:
    """End a reply as failed (model error) or interrupted (process gone, participant left).

    `text` is the partial reply so far; None keeps the last checkpoint already stored.
    `endpoint_url` is the replica last tried, when one was.
    """
    status = M.INTERRUPTED if interrupted else M.FAILED
    with transaction.atomic():
        message = (
            Message.objects.select_for_update(of=("self",))
            .select_related("participant")
            .get(pk=message_id)
        )
        if message.status != M.STREAMING:
            return
        if text is not None:
            message.content = text
        message.status = status
        message.error_kind = kind
        message.error_detail = detail[:2000]
        message.endpoint_url = endpoint_url or message.endpoint_url
        message.save(
            update_fields=[
                "content", "status", "error_kind", "error_detail", "endpoint_url", "updated_at"
            ]
        )  # fmt: skip
        event_record(
            study_id=message.participant.study_id,
            participant_id=message.participant_id,
            kind=f"study.turn.{status}",
            payload={"turn": message.turn_index, "reply": message.pk, "error": kind},
        )


def turn_reap_stale(*, participant_id: int | None, running: set[int]) -> list[int]:
    """Mark streaming replies interrupted when no live process is generating them.

    Held replies (finished, waiting for the database) are stored first. Then a streaming reply
    is reaped when all of these hold: this process is not generating it (`running`); its row
    went untouched for a quiet bound; no finished copy is held in Redis; and its liveness key
    in Redis has lapsed. The generating process renews that key four times per TTL
    (CHAT_ALIVE_SECONDS) whatever happens to its database checkpoints, so a reply whose
    checkpoints fail during a database blip is not reaped while its process lives. When Redis
    cannot be asked, only rows untouched for CHAT_REAP_WITHOUT_REDIS_SECONDS (a longer bound)
    are reaped.

    For one participant (their socket connecting, or their page's sync; on one of the chat's
    database threads) the quiet bound is the key's TTL: a participant looking at a reply whose
    web process died sees it interrupted, with retry, within seconds. The periodic sweep (None),
    which nobody waits for, keeps the longer CHAT_STALE_STREAM_SECONDS. For one participant
    Redis is asked for held replies only when the participant has a reply that could be held;
    the sweep always drains.
    """
    if participant_id is None or _may_hold(participant_id, running):
        turn_store_held(participant_id=participant_id)
    now = timezone.now()
    quiet = settings.CHAT_STALE_STREAM_SECONDS if participant_id is None else inflight.alive_ttl()
    stale = Message.objects.filter(
        status=M.STREAMING, updated_at__lt=now - timedelta(seconds=quiet)
    ).exclude(pk__in=running)
    if participant_id is not None:
        stale = stale.filter(participant_id=participant_id)
    rows = list(stale.values_list("pk", "updated_at"))
    if not rows:  # the usual case: no round trip to Redis on the database thread
        return []
    try:
        # Liveness first: a process holds a finished reply before it drops the key, so a key
        # found gone means any hold of it is already there to read.
        alive = inflight.alive_among([pk for pk, _ in rows])
        keep = alive | set(inflight.held_ids(participant_id))
    except RedisError:
        log.warning("reaper: Redis unreachable, reaping only long-silent replies", exc_info=True)
        cutoff = now - timedelta(seconds=settings.CHAT_REAP_WITHOUT_REDIS_SECONDS)
        keep = {pk for pk, updated in rows if updated >= cutoff}
    ids = [pk for pk, _ in rows if pk not in keep]
    for pk in ids:
        turn_fail(
            message_id=pk,
            text=None,
            kind=REAPED,
            detail="The server handling this reply stopped before it finished.",
            interrupted=True,
        )
    return ids


def _may_hold(participant_id: int, running: set[int]) -> bool:
    """Whether the participant has a reply another process may have held (one indexed query)."""
    reaped = Q(status=M.INTERRUPTED, error_kind=REAPED)
    return (
        Message.objects.filter(Q(status=M.STREAMING) | reaped, participant_id=participant_id)
        .exclude(pk__in=running)
        .exists()
    )


def turn_store_held(*, participant_id: int | None = None) -> list[int]:
    """Write finished replies held in Redis while the database was away (idempotent).

    A reply stored twice is stored once: the second write finds it complete and only drops the
    hold. Returns the ids written now. Redis or the database being away leaves the holds for the
    next sweep.
    """
    stored = []
    try:
        held = [(pk, inflight.held_get(pk)) for pk in inflight.held_ids(participant_id)]
    except RedisError:
        log.warning("could not read held replies from Redis", exc_info=True)
        return []
    for pk, record in held:
        if record is None:
            continue
        fields = {k: v for k, v in record.items() if k != "participant_id"}
        try:
            turn_complete(**fields, held=True)
            stored.append(pk)
        except StudyActionError as exc:
            log.info("held reply %s not stored again: %s", pk, exc.code)
        except Message.DoesNotExist:
            log.error("held reply %s has no row; keeping it in Redis", pk)
            continue
        except DatabaseError:
            log.warning("database still away; held replies kept for the next sweep", exc_info=True)
            break
        with contextlib.suppress(RedisError):  # a hold left behind is dropped by the next sweep
            inflight.held_drop(pk, record["participant_id"])
    return stored


def rating_record(*, participant_id: int, after_turn: int, score: int) -> TurnRating:
    """Record the blocking rating that is due and reopen the composer."""
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 10:
        raise StudyActionError("bad_score", _("Please choose a rating from 1 to 10."))
    with transaction.atomic():
        participant = _lock(participant_id)
        if participant.status != P.RATING_DUE:
            raise StudyActionError("no_rating_due", _("No rating is due right now."))
        done = participant.messages.filter(TURN_REPLY).count()
        if after_turn != done:
            raise StudyActionError("wrong_checkpoint", _("That rating is not the one due now."))
        rating = TurnRating.objects.create(participant=participant, after_turn=done, score=score)
        participant.status = P.CHATTING
        fields = activity_apply(participant, signal="active", now=timezone.now())
        participant.save(update_fields=["status", *fields])
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.rating.recorded",
            payload={"after_turn": done, "score": score},
        )
    return rating
