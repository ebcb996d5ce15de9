"""Reads for pages, the chat socket and the generator; no writes."""

from dataclasses import dataclass

from django.utils import timezone

from models_serving.client import EndpointSpec
from models_serving.prompts import load_prompt
from models_serving.routing import replica_list
from studies.models import Message, Participant, Study, Task
from studies.services import turns
from studies.services.endpoints import endpoint_client_spec
from studies.services.participants import completed_turns
from studies.services.rendering import render_markdown
from studies.services.turns import chat_deadline, time_is_up
from studies.services.versions import frozen_study

M = Message.Status


def study_by_slug(slug: str) -> Study | None:
    """The study with this slug, or None."""
    return Study.objects.filter(slug=slug).first()


def participant_for_page(participant_id: int) -> Participant:
    """A participant with what every step page shows."""
    return Participant.objects.select_related("study", "task", "condition", "version").get(
        pk=participant_id
    )


def topics_for(participant: Participant) -> list[Task]:
    """The topics a participant may choose from (their assigned document type)."""
    return list(
        Task.objects.filter(study_id=participant.study_id, document_type=participant.document_type)
    )


@dataclass(frozen=True)
class GenerationPlan:
    message_id: int
    participant_id: int
    spec: EndpointSpec
    messages: list[dict[str, str]]
    params: dict
    endpoint: str = ""  # the endpoint's name: the key of its stream slots in Redis
    replicas: tuple[str, ...] = ()  # base URLs to route across, primary first
    max_streams: int = 0  # concurrent streams across all web processes; 0 = no limit


def generation_plan(*, message_id: int) -> GenerationPlan:
    """Everything the generator needs for one reply: endpoint, pinned prompt, history, params."""
    reply = Message.objects.select_related("participant__condition__endpoint").get(pk=message_id)
    condition = reply.participant.condition
    assert condition is not None
    endpoint = condition.endpoint
    prompt_name, _, rest = reply.prompt_ref.partition("@")
    prompt = load_prompt(prompt_name, rest.partition("#")[0] or None)
    history = _history(reply, prompt.text)
    params = {k: v for k, v in reply.generation_params.items() if k != turns.CONTINUATION_KEY}
    spec = endpoint_client_spec(endpoint, reply.model)
    return GenerationPlan(
        message_id,
        reply.participant_id,
        spec,
        history,
        params,
        endpoint=endpoint.name,
        replicas=tuple(replica_list(endpoint.base_url, endpoint.replica_urls or ())),
        max_streams=endpoint.max_concurrent_streams,
    )


def _history(reply: Message, system_prompt: str) -> list[dict[str, str]]:
    """The conversation the model sees for `reply`.

    Each earlier turn: the user's message and its reply as one assistant message (the complete
    reply joined with its complete continuations). For a continuation, the parts of its own
    turn so far follow as one assistant message, then the recorded instruction to go on.
    """
    history: list[dict[str, str]] = []
    if system_prompt:
        history.append({"role": "system", "content": system_prompt})
    earlier = Message.objects.filter(
        participant_id=reply.participant_id, turn_index__lte=reply.turn_index, id__lt=reply.pk
    ).order_by("id")
    parts: list[str] = []
    for m in earlier:
        if m.role == Message.Role.USER:
            if parts:
                history.append({"role": "assistant", "content": turns.join_reply_parts(parts)})
                parts = []
            history.append({"role": m.role, "content": m.content})
        elif m.status == M.COMPLETE and (
            m.turn_index < reply.turn_index or reply.continuation_of_id
        ):
            parts.append(m.content)
    if parts:
        history.append({"role": "assistant", "content": turns.join_reply_parts(parts)})
    continuation = reply.generation_params.get(turns.CONTINUATION_KEY)
    if reply.continuation_of_id is not None and isinstance(continuation, dict):
        history.append({"role": "user", "content": continuation["instruction"]})
    return history


def message_frame(message: Message) -> dict:
    """A message as the chat page receives it."""
    frame = {
        "id": message.pk,
        "turn": message.turn_index,
        "role": message.role,
        "status": message.status,
        "text": message.content,
    }
    if message.role == Message.Role.ASSISTANT and message.status == M.COMPLETE:
        # Stored at completion; a row completed before that was stored is rendered here.
        frame["html"] = message.html or render_markdown(message.content)
    if message.status in (M.FAILED, M.INTERRUPTED):
        frame["error"] = message.error_kind
    if message.role == Message.Role.ASSISTANT:
        frame["finish_reason"] = message.finish_reason
        frame["continuation_of"] = message.continuation_of_id
    return frame


def transcript(*, participant_id: int) -> list[dict]:
    """The complete messages in order, as frames (assistant HTML sanitised), for the final page."""
    rows = Message.objects.filter(participant_id=participant_id, status=M.COMPLETE).order_by("id")
    return [message_frame(m) for m in rows]


def chat_state(*, participant_id: int) -> dict:
    """The whole chat as the page needs it after (re)connecting."""
    participant = Participant.objects.select_related("study", "version", "condition").get(
        pk=participant_id
    )
    study = frozen_study(participant)
    messages = list(participant.messages.order_by("id"))
    done = completed_turns(participant_id)
    deadline = chat_deadline(participant)
    time_up = time_is_up(participant)
    chatting = participant.status == Participant.Status.CHATTING
    return {
        "type": "state",
        "status": participant.status,
        "messages": [message_frame(m) for m in messages],
        "completed_turns": done,
        "min_turns": study.min_turns,
        "max_turns": study.max_turns,
        "min_chars": study.min_user_message_chars,
        "detect_paste": study.detect_paste,
        "rating_due": done if participant.status == Participant.Status.RATING_DUE else None,
        "can_finish": chatting and (done >= study.min_turns or time_up),
        "deadline": deadline.isoformat() if deadline else None,
        "seconds_left": max(0.0, (deadline - timezone.now()).total_seconds()) if deadline else None,
        "warning_seconds": study.time_warning_minutes * 60,
        "time_up": time_up,
        "continuable": _continuable(participant, messages),
    }


def _continuable(participant: Participant, messages: list[Message]) -> int | None:
    """The id of the reply the participant may ask to continue now, if any."""
    replies = [m for m in messages if m.role == Message.Role.ASSISTANT]
    if not replies or replies[-1].finish_reason != turns.LENGTH:  # no query in the usual case
        return None
    return replies[-1].pk if turns.continue_refusal(participant, replies[-1]) is None else None
