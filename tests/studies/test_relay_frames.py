"""Delta frames count in the page's unit: astral characters (emoji) never garble the live text.

The page (chat.js) keeps the reply as a JavaScript string and cuts it at a delta's `start`, so
`start` must count UTF-16 code units, where an emoji is two. The relay runs here on its own, with
publishing captured: no socket, database or Redis is involved.
"""

import asyncio

import pytest

from studies.services import deltas, relay
from studies.services.generation import RunningReply

pytestmark = pytest.mark.timeout(30)

# Emoji, a ZWJ family and a flag (several code points each), a skin tone, astral letters (math
# script, CJK extension B) and combining accents; some split across chunks mid-sequence.
CHUNKS = [
    "Hi ", "😀", " there ", "👩", "\u200d👩\u200d👧", " cafe", "\u0301 ", "🇫🇷", " 👍🏽 ",
    "\U0001d4b3 𠜎", "e\u0301\u0327", " 🧪🧬", "", "plain ascii again", " 🎉",
]  # fmt: skip
TEXT = "".join(CHUNKS)


def page_apply(text: str, frame: dict) -> str | None:
    """chat.js's delta handler, on a UTF-16 string as JavaScript holds it; None for a gap."""
    if "full" in frame:
        return frame["full"]
    units = text.encode("utf-16-le", "surrogatepass")  # JS strings may hold one
    if frame["start"] * 2 > len(units):
        return None
    return units[: frame["start"] * 2].decode("utf-16-le", "surrogatepass") + frame["delta"]


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


async def relayed(chunks: list[str], monkeypatch, *, fail: set[int] = frozenset()) -> list[dict]:
    """Stream `chunks` through relay.frames, one frame each; return the frames delivered.

    The publishes whose index is in `fail` fail (as a Redis blip does) and deliver nothing.
    """
    delivered, attempts, arrived = [], [], asyncio.Event()

    async def publish(participant_id: int, frame: dict, *, tries: int = 3) -> bool:
        attempts.append(frame)
        if len(attempts) - 1 in fail:
            return False
        delivered.append(dict(frame))
        arrived.set()
        return True

    monkeypatch.setattr(relay, "publish", publish)
    monkeypatch.setattr(relay, "PUBLISH_BACKOFF", (0.0, 0.0))
    reply, wake = RunningReply(message_id=7, participant_id=3), asyncio.Event()
    task = asyncio.create_task(relay.frames(reply, wake))
    try:
        for chunk in chunks:
            arrived.clear()
            reply.text += chunk
            wake.set()
            async with asyncio.timeout(5):
                await arrived.wait()  # one delivered frame per chunk
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return delivered


@pytest.fixture(autouse=True)
def _frames_without_heals(settings) -> None:
    settings.CHAT_FRAME_INTERVAL = 0.0
    settings.CHAT_CHECKPOINT_INTERVAL = 3600.0  # no whole-text frame heals a wrong offset


async def test_the_page_rebuilds_text_with_astral_characters_exactly_at_every_frame(monkeypatch):
    frames = await relayed(CHUNKS, monkeypatch)

    assert len(frames) == len(CHUNKS) and not any("full" in f for f in frames)
    text, expected = "", ""
    for chunk, frame in zip(CHUNKS, frames, strict=True):
        expected += chunk
        assert frame["start"] == utf16(text)  # UTF-16 units, not code points
        text = page_apply(text, frame)
        assert text == expected
    assert text == TEXT


async def test_python_clients_apply_frames_as_the_page_does(monkeypatch):
    frames = await relayed(CHUNKS, monkeypatch)
    page = python = ""
    for frame in frames:
        page, python = page_apply(page, frame), deltas.delta_apply(python, frame)
        assert python == page
    assert python == TEXT
    assert deltas.delta_apply("ab", {"start": 3, "delta": "c"}) is None  # a gap waits for a heal


async def test_after_a_failed_publish_the_offset_counts_only_what_was_delivered(monkeypatch):
    frames = await relayed(CHUNKS, monkeypatch, fail={2, 5})

    text = ""
    for frame in frames:
        if "full" not in frame:  # the frame after a failure heals with the whole text anyway
            assert frame["start"] == utf16(text)
        text = page_apply(text, frame)
    assert text == TEXT
    assert sum("full" in f for f in frames) == 2


async def test_a_surrogate_pair_split_across_chunks_keeps_every_offset_exact(monkeypatch):
    # A server that escapes JSON per UTF-16 unit may cut an emoji between its two halves:
    # Python then holds two lone surrogates, JavaScript joins them into the emoji again.
    chunks = ["Hi ", "\ud83d", "\ude00 there", " \ud83c", "\udf89"]
    frames = await relayed(chunks, monkeypatch)

    text = ""
    for frame in frames:
        assert frame["start"] == len(text.encode("utf-16-le", "surrogatepass")) // 2
        text = page_apply(text, frame)
    assert text.encode("utf-16-le", "surrogatepass").decode("utf-16-le") == "Hi 😀 there 🎉"
    assert deltas.utf16_len("\ud83d") == 1


def test_utf16_len_counts_what_javascript_counts():
    assert deltas.utf16_len("") == 0
    assert deltas.utf16_len("plain") == 5
    assert deltas.utf16_len("é") == 1 and deltas.utf16_len("e\u0301") == 2
    assert deltas.utf16_len("😀") == 2 and deltas.utf16_len("👍🏽") == 4
    assert deltas.utf16_len("👩\u200d👩\u200d👧") == 8
    assert deltas.utf16_len(TEXT) == len(TEXT.encode("utf-16-le")) // 2
