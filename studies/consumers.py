"""The chat socket: authenticate by session, validate frames, call services, relay group frames."""

import json
import uuid

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import transaction

from studies import selectors
from studies.ratelimit import CLOSE_CODE, FrameLimiter, Verdict
from studies.services import activity, generation, relay, turns
from studies.services.db import db_call
from studies.services.errors import StudyActionError
from studies.sessions import CHAT_STATUSES, session_participant_id

MAX_FRAME_CHARS_EXTRA = 1000
_UNREADABLE = ("malformed", "The page sent something the server could not read.")


class ChatConsumer(AsyncJsonWebsocketConsumer):
    participant_id: int
    limiter: FrameLimiter
    closed_for_abuse = False

    async def connect(self) -> None:
        slug = self.scope["url_route"]["kwargs"]["slug"]
        pid = await db_call(session_participant_id)(
            self.scope["session"], slug, statuses=CHAT_STATUSES
        )
        if pid is None:
            await self.close(code=4403)
            return
        self.participant_id = pid
        self.group = generation.chat_group(pid)
        self.limiter = FrameLimiter()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await db_call(turns.turn_reap_stale)(participant_id=pid, running=generation.running_ids())
        await db_call(activity.activity_record)(participant_id=pid, signal="connected")
        await self.send_json(await self._state())

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await db_call(activity.activity_record)(
                participant_id=self.participant_id, signal="disconnected", payload={"code": code}
            )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Every frame, readable or not, takes a token before any work: a flood costs O(1) a frame
        # and touches neither the database nor the log.
        if self.closed_for_abuse or not hasattr(self, "limiter"):  # closed, or refused at connect
            return
        content, error = _parse(text_data)
        verdict = self.limiter.check(content["type"] if content else "invalid")
        if verdict is Verdict.REFUSE:
            key = content.get("key") if content else None
            await self._error("rate_limited", "Too many requests at once; please wait.", key=key)
        elif verdict is Verdict.CLOSE:
            self.closed_for_abuse = True
            await self.close(code=CLOSE_CODE)
        elif verdict is Verdict.ALLOW and content is not None:
            await self.receive_json(content)
        elif verdict is Verdict.ALLOW and error is not None:
            await self._error(*error)

    async def receive_json(self, content: dict, **kwargs) -> None:
        handler = {
            "send": self._send_turn,
            "retry": self._retry,
            "continue": self._continue,
            "rating": self._rating,
            "presence": self._presence,
            "paste": self._paste,
            "sync": self._resync,
        }.get(content["type"])
        if handler is None:
            await self._error("unknown_type", "The page sent an unknown request.")
            return
        try:
            await handler(content)
        except StudyActionError as exc:
            await self._error(exc.code, exc.message, key=content.get("key"))

    async def _send_turn(self, content: dict) -> None:
        text, key = content.get("text"), _uuid(content.get("key"))
        if not isinstance(text, str) or key is None:
            raise StudyActionError("malformed", "The page sent an incomplete message.")
        started, plan = await db_call(_start_turn)(self.participant_id, text, key)
        reply = started.assistant_message
        if reply is not None:  # the model call goes out before anything else is sent
            generation.generation_start(
                message_id=reply.pk, participant_id=self.participant_id, plan=plan
            )
        user = selectors.message_frame(started.user_message)
        await self.send_json(
            {"type": "ack", "key": str(key), "replayed": started.replayed, "message": user}
        )
        if reply is not None:
            await self._announce(reply, user=user)

    async def _retry(self, content: dict) -> None:
        if not isinstance(content.get("message_id"), int):
            raise StudyActionError("malformed", "The page sent an incomplete retry.")
        reply = await db_call(turns.turn_retry)(
            participant_id=self.participant_id, message_id=content["message_id"]
        )
        generation.generation_start(message_id=reply.pk, participant_id=self.participant_id)
        await self._announce(reply, user=None)

    async def _continue(self, content: dict) -> None:
        message_id = content.get("message_id")
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            raise StudyActionError("malformed", "The page sent an incomplete request.")
        reply = await db_call(turns.turn_continue)(
            participant_id=self.participant_id, message_id=message_id
        )
        generation.generation_start(message_id=reply.pk, participant_id=self.participant_id)
        await self._announce(reply, user=None)

    async def _announce(self, reply, *, user: dict | None) -> None:
        # Supervised publish: a Redis blip costs a frame (the page heals on sync), not the socket.
        frame = {"frame": "started", "message": selectors.message_frame(reply), "user": user}
        await relay.publish(self.participant_id, frame)

    async def _rating(self, content: dict) -> None:
        after, score = content.get("after_turn"), content.get("score")
        if not isinstance(after, int) or not isinstance(score, int):
            raise StudyActionError("malformed", "The page sent an incomplete rating.")
        await db_call(turns.rating_record)(
            participant_id=self.participant_id, after_turn=after, score=score
        )
        await relay.publish(self.participant_id, {"frame": "rated"})
        await self.send_json(await self._state())

    async def _presence(self, content: dict) -> None:
        signal = content.get("signal")
        if signal not in activity.CLIENT_SIGNALS:
            raise StudyActionError("malformed", "Unknown presence signal.")
        await db_call(activity.activity_record)(participant_id=self.participant_id, signal=signal)

    async def _paste(self, content: dict) -> None:
        try:
            await db_call(activity.paste_record)(
                participant_id=self.participant_id, chars=content.get("chars")
            )
        except ValueError as exc:
            raise StudyActionError(
                "malformed", "The page sent an unreadable paste notice."
            ) from exc

    async def _resync(self, content: dict) -> None:
        state = await self._state()
        if _elsewhere(state):  # the page syncs when a streaming reply goes quiet: is it orphaned?
            # Ended (with retry) if no live process runs it; a copy held in Redis is stored.
            await db_call(turns.turn_reap_stale)(
                participant_id=self.participant_id, running=generation.running_ids()
            )
            state = await self._state()  # a held copy may have been stored too: read again
        await self.send_json(state)

    async def _state(self) -> dict:
        state = await db_call(selectors.chat_state)(participant_id=self.participant_id)
        for message in state["messages"]:
            live = generation.running_reply(message["id"])
            if live is not None and message["status"] == "streaming":
                message["text"] = live.text
        return state

    async def dispatch(self, message: dict) -> None:
        # channels runs close_old_connections before every message on the process's one
        # thread-sensitive thread, so each frame (a relayed delta, a turn, a presence ping) would
        # queue behind that thread's work. This consumer's database calls run on
        # studies.services.db, which closes each connection after its call: nothing to close.
        if message.get("type") == "chat.frame":
            await self.chat_frame(message)
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def chat_frame(self, event: dict) -> None:
        text = event.get("text")  # encoded once, by relay.publish
        if text is None:  # a frame from a process of the previous release, mid-deploy
            frame = {k: v for k, v in event.items() if k not in ("type", "frame")}
            text = json.dumps({"type": event["frame"], **frame})
        await self.send(text_data=text)

    async def _error(self, code: str, message: str, key: object = None) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, "key": key})


def _parse(text_data: str | None) -> tuple[dict | None, tuple[str, str] | None]:
    """A frame's JSON object with a string type, or None and the error to answer with."""
    if (
        text_data is None
        or len(text_data) > settings.CHAT_MAX_MESSAGE_CHARS * 2 + MAX_FRAME_CHARS_EXTRA
    ):
        return None, ("frame_too_large", "That message is too large to send.")
    try:
        content = json.loads(text_data)
    except ValueError:
        return None, _UNREADABLE
    if not isinstance(content, dict) or not isinstance(content.get("type"), str):
        return None, _UNREADABLE
    return content, None


def _elsewhere(state: dict) -> bool:
    """Whether the state shows a reply streaming that this process is not generating."""
    return any(
        m["status"] == "streaming" and generation.running_reply(m["id"]) is None
        for m in state["messages"]
    )


def _start_turn(participant_id: int, text: str, key: uuid.UUID) -> tuple:
    """Store the turn and read its generation plan: one trip to a database thread, one commit."""
    with transaction.atomic():
        started = turns.turn_start(participant_id=participant_id, text=text, key=key)
        reply = started.assistant_message
        return started, (selectors.generation_plan(message_id=reply.pk) if reply else None)


def _uuid(value: object) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
