"""A frame is encoded to JSON once, where it is published, not once per socket that relays it.

The group message carries the socket's text as is, so every socket of the participant (on any
web process) sends it without decoding or re-encoding the frame. Real Redis channel layer.
"""

import json
import uuid

import pytest
from channels.layers import get_channel_layer

from studies.services import relay

pytestmark = pytest.mark.timeout(30)


async def test_a_published_frame_reaches_the_group_as_the_sockets_json_text():
    layer = get_channel_layer()
    participant_id = uuid.uuid4().int % 10**9
    channel = await layer.new_channel()
    await layer.group_add(relay.chat_group(participant_id), channel)
    try:
        frame = {"frame": "delta", "id": 7, "start": 3, "delta": "é 😀", "full": "abcé 😀"}
        assert await relay.publish(participant_id, frame)
        message = await layer.receive(channel)
    finally:
        await layer.group_discard(relay.chat_group(participant_id), channel)
    assert message["type"] == "chat.frame" and message["frame"] == "delta"
    assert json.loads(message["text"]) == {
        "type": "delta", "id": 7, "start": 3, "delta": "é 😀", "full": "abcé 😀"
    }  # fmt: skip
