"""Continuing a cut reply over the chat socket: fake model at the seam, then the real one."""

import json

import pytest
from channels.db import database_sync_to_async as sync_to_async

from studies.models import Event
from studies.services import turns
from tests.studies.test_consumer import (
    connect,
    frames_until,
    make_chatting,
    messages_of,
    repin,
    send_turn,
    settled,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


async def chat_with_max_tokens(base_url, model, max_tokens, **kwargs):
    participant = await make_chatting(base_url, model=model, **kwargs)
    if max_tokens is not None:
        await sync_to_async(repin)(participant, generation_params={"max_tokens": max_tokens})
    comm, connected, _ = await connect(participant)
    assert connected
    await comm.receive_json_from()
    return participant, comm


async def test_a_reply_cut_at_the_limit_says_so_and_continues_on_the_same_turn(fake_model):
    participant, comm = await chat_with_max_tokens(fake_model.base_url, "fake", 4)
    await send_turn(comm)
    done = (await frames_until(comm, {"complete", "failed"}))[-1]
    assert done["type"] == "complete" and done["message"]["finish_reason"] == "length"
    assert done["continuable"] is True
    cut_id = done["message"]["id"]
    await settled()
    await comm.send_json_to({"type": "continue", "message_id": cut_id})
    started = (await frames_until(comm, {"started"}))[-1]
    assert started["message"]["continuation_of"] == cut_id and started["user"] is None
    done = (await frames_until(comm, {"complete", "failed"}))[-1]
    assert done["type"] == "complete" and done["message"]["continuation_of"] == cut_id
    assert done["completed_turns"] == 1
    await settled()
    sent = fake_model.server.stats.last_body
    assert [m["role"] for m in sent["messages"]][-2:] == ["assistant", "user"]
    assert sent["messages"][-2]["content"] == "tok0 tok1 tok2 tok3"
    assert sent["messages"][-1]["content"] == turns.CONTINUE_INSTRUCTION
    assert "continuation" not in sent
    rows = await messages_of(participant)
    assert [(m.role, m.attempt, m.status, m.continuation_of_id) for m in rows] == [
        ("user", 1, "complete", None),
        ("assistant", 1, "complete", None),
        ("assistant", 2, "complete", cut_id),
    ]
    await comm.send_json_to({"type": "sync"})
    state = (await frames_until(comm, {"state"}))[-1]
    assert state["completed_turns"] == 1
    assert [m.get("continuation_of") for m in state["messages"]] == [None, None, cut_id]
    await comm.disconnect()


async def test_a_refused_continue_gets_a_clear_error_and_changes_nothing(fake_model):
    participant, comm = await chat_with_max_tokens(fake_model.base_url, "fake-script", None)
    await send_turn(comm)  # a scripted reply stops by itself
    done = (await frames_until(comm, {"complete", "failed"}))[-1]
    assert done["message"]["finish_reason"] == "stop" and done["continuable"] is False
    await settled()
    before = (await messages_of(participant), await sync_to_async(Event.objects.count)())
    for frame in ({"type": "continue", "message_id": done["message"]["id"]},
                  {"type": "continue", "message_id": "x"}):  # fmt: skip
        await comm.send_to(text_data=json.dumps(frame))
        error = (await frames_until(comm, {"error"}))[-1]
        assert error["code"] in ("not_continuable", "malformed") and error["message"]
    after = (await messages_of(participant), await sync_to_async(Event.objects.count)())
    assert [(m.pk, m.status) for m in after[0]] == [(m.pk, m.status) for m in before[0]]
    assert after[1] == before[1]
    await comm.disconnect()


async def test_the_real_model_cut_at_a_tiny_limit_continues_to_a_complete_reply(embedded_model):
    participant, comm = await chat_with_max_tokens(
        embedded_model.base_url, embedded_model.model, 8, read_timeout=120
    )
    await send_turn(comm, "Write a long paragraph about why people enjoy reading books.")
    done = (await frames_until(comm, {"complete", "failed"}, wait=120))[-1]
    assert done["type"] == "complete", done
    assert done["message"]["finish_reason"] == "length" and done["continuable"]
    await settled()
    await comm.send_json_to({"type": "continue", "message_id": done["message"]["id"]})
    done = (await frames_until(comm, {"complete", "failed"}, wait=120))[-1]
    assert done["type"] == "complete", done
    assert done["message"]["continuation_of"] and done["message"]["text"].strip()
    assert done["completed_turns"] == 1
    await settled()
    _, cut, more = await messages_of(participant)
    assert more.continuation_of_id == cut.pk and more.status == "complete"
    assert more.finish_reason in ("stop", "length") and more.completion_tokens
    await comm.disconnect()
