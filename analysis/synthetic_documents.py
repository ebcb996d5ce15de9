"""Synthetic assistant replies and document versions with known per-arm effects, consistent with
the synthetic messages and final surveys (analysis.synthetic builds the rest of the study).

Replies are lowercase words without line breaks; what a participant types is capitalised words.
The final document is typed pieces and reply passages (whole replies, the last one maybe cut, at
least MIN_MATCH_CHARS long) joined by line breaks, so no window of MIN_MATCH_CHARS characters
that holds a typed character or a line break can occur in a reply: the overlap measure of
analysis.documents finds exactly the reply passages. Per arm (exact expectations): edits
1 + Poisson(EDITS - 1), final length lognormal with mean FINAL_CHARS, share from replies
Beta with mean ASSISTANT_SHARE (rounding and a dropped short remainder move it by < 0.001 on
average), first edit lognormal with mean FIRST_EDIT_SECONDS.
"""

import math
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import pandas as pd

from analysis.documents import MIN_MATCH_CHARS

EDITS = MappingProxyType({"base": 5.0, "proactive": 6.0, "collabllm": 8.0})
ASSISTANT_SHARE = MappingProxyType({"base": 0.35, "proactive": 0.45, "collabllm": 0.6})
FIRST_EDIT_SECONDS = MappingProxyType({"base": 300.0, "proactive": 240.0, "collabllm": 180.0})
FINAL_CHARS = MappingProxyType({"base": 1800.0, "proactive": 2000.0, "collabllm": 2300.0})
DEFAULTS = {"edits": 5.0, "share": 0.35, "first_edit": 300.0, "final_chars": 1800.0}
SHARE_CONCENTRATION, LENGTH_LOG_SD, FIRST_EDIT_LOG_SD = 20.0, 0.25, 0.5
INSERT_P, PASTE_P = 0.35, 0.15
REPLY_WORDS = (
    "the a of to and in for with your this that draft could we might about more story reader "
    "opening paragraph idea point tone voice clear short detail example scene moment ending "
    "warm plain simple strong first next each one two three here there how why what when "
    "change keep add cut move make sure try consider perhaps really often also still just "
    "light river garden street window letter morning evening friend family school city road"
).split()
TYPED_WORDS = (
    "My Our We I Honestly Last Summer Grandmother Kitchen Bread Train Station Rain Notes "
    "Remember Later Maybe Yes No Okay Then Afterwards Because Since Still Every Sunday Winter "
    "Paris Lisbon Brother Sister Teacher Music Piano Football Garden Dog"
).split()


def reply_texts(rng: np.random.Generator, n: int) -> list[str]:
    """n replies of 60-100 lowercase words, sentences ended by full stops."""
    words = np.array(REPLY_WORDS, dtype=object)
    texts = []
    for size in rng.integers(60, 101, n):
        chosen = words[rng.integers(0, words.size, size)]
        chosen[9::10] = chosen[9::10] + "."
        texts.append(" ".join(chosen))
    return texts


def _typed(rng: np.random.Generator, length: int) -> str:
    if length <= 0:
        return ""
    words = rng.choice(TYPED_WORDS, length // 3 + 2)
    return " ".join(words)[:length]


def _final_text(rng: np.random.Generator, replies: list[str], share: float, length: int) -> str:
    """Typed pieces and reply passages summing to about `length`, about `share` from replies."""
    wanted = round(share * length)
    pieces: list[str] = []
    for index in rng.permutation(len(replies)):
        left = wanted - sum(len(p) for p in pieces)
        if left < MIN_MATCH_CHARS:
            break
        pieces.append(replies[index][:left])
    typed = max(0, length - sum(len(p) for p in pieces) - 2 * len(pieces))
    cuts = np.sort(rng.integers(0, typed + 1, len(pieces)))
    sizes = np.diff(np.concatenate(([0], cuts, [typed])))
    parts = [_typed(rng, int(sizes[0]))]
    for piece, size in zip(pieces, sizes[1:], strict=True):
        parts += [piece, _typed(rng, int(size))]
    return "\n".join(parts)


def expected_inverse_turns(turns: int) -> float:
    """E[1 / (turns + Poisson(1))]: a synthetic study's completed turns are turns + Poisson(1)."""
    return sum(math.exp(-1) / math.factorial(k) / (turns + k) for k in range(60))


def truth(arms: tuple[str, ...], turns: int) -> dict[str, dict[str, float]]:
    """Per measure of analysis.documents.MEASURES, the expected value per arm."""
    edits = {a: EDITS.get(a, DEFAULTS["edits"]) for a in arms}
    return {
        "n_edits": edits,
        "versions_per_turn": {a: (edits[a] + 1) * expected_inverse_turns(turns) for a in arms},
        "assistant_share": {a: ASSISTANT_SHARE.get(a, DEFAULTS["share"]) for a in arms},
        "first_edit_seconds": {a: FIRST_EDIT_SECONDS.get(a, DEFAULTS["first_edit"]) for a in arms},
        "final_chars": {a: FINAL_CHARS.get(a, DEFAULTS["final_chars"]) for a in arms},
    }


def _lognormal(rng: np.random.Generator, mean: float, sd: float) -> float:
    return float(mean * np.exp(rng.normal(-(sd**2) / 2, sd)))


def _versions(
    rng: np.random.Generator, arm: str, replies: pd.DataFrame, wall: float, values: Mapping
) -> tuple[list[dict], str]:
    """(non-final versions as dicts, final text) for one participant; replies in turn order.

    Edits fall before 93 % of the wall time (the final version is saved at 95 %, with the
    survey); a first edit drawn later is moved to 90 %, which almost never happens.
    """
    edits = 1 + int(rng.poisson(values["n_edits"][arm] - 1))
    share = rng.beta(
        values["assistant_share"][arm] * SHARE_CONCENTRATION,
        (1 - values["assistant_share"][arm]) * SHARE_CONCENTRATION,
    )
    length = round(_lognormal(rng, values["final_chars"][arm], LENGTH_LOG_SD))
    final = _final_text(rng, replies["content"].tolist(), float(share), length)
    first = min(_lognormal(rng, values["first_edit_seconds"][arm], FIRST_EDIT_LOG_SD), 0.9 * wall)
    seconds = first + np.sort(rng.random(edits - 1)) * (0.93 * wall - first)
    rows = []
    for j, second in enumerate(np.concatenate(([first], seconds)), start=1):
        done = int((replies["at"] <= second).sum())
        text, source, origin = final[: math.ceil(len(final) * j / (edits + 1))], "typed", None
        draw = rng.random()
        if done and draw < INSERT_P:
            reply = replies.iloc[int(rng.integers(0, done))]
            text, source, origin = f"{text}\n{reply['content']}", "inserted", reply["message_id"]
        elif draw < INSERT_P + PASTE_P:
            text, source = f"{text}\n{_typed(rng, 80)}", "pasted"
        rows.append({"text": text, "source": source, "from": origin, "at": second, "turn": done})
    return rows, final


def version_columns(
    rng: np.random.Generator,
    participants: pd.DataFrame,
    messages: pd.DataFrame,
    values: Mapping[str, Mapping[str, float]],
) -> tuple[dict[str, list], dict[str, str]]:
    """(document_versions columns, final text per participant id).

    The chat starts at consent + 5 % of the wall time (before the first message); the final
    version is saved at completion, when the final survey is submitted.
    """
    columns: dict[str, list] = {
        k: []
        for k in (
            "participant_id", "arm", "version", "source", "from_message_id", "turn_index",
            "chars", "text", "seconds_from_chat_start", "created_at",
        )
    }  # fmt: skip
    assistant = messages.loc[messages["role"] == "assistant"]
    by_owner = dict(tuple(assistant.groupby("participant_id", sort=False)))
    finals = {}
    for person in participants.itertuples(index=False):
        start = person.consented_at + pd.Timedelta(seconds=0.05 * person.wall_seconds)
        replies = by_owner[person.participant_id].assign(
            at=lambda r, s=start: (r["created_at"] - s).dt.total_seconds()
        )
        rows, final = _versions(rng, person.arm, replies, person.wall_seconds, values)
        rows.append({
            "text": final, "source": "final", "from": None, "at": 0.95 * person.wall_seconds,
            "turn": int(person.n_complete_turns),
        })  # fmt: skip
        finals[person.participant_id] = final
        for number, row in enumerate(rows, start=1):
            columns["participant_id"].append(person.participant_id)
            columns["arm"].append(person.arm)
            columns["version"].append(number)
            columns["source"].append(row["source"])
            columns["from_message_id"].append(row["from"])
            columns["turn_index"].append(row["turn"])
            columns["chars"].append(len(row["text"]))
            columns["text"].append(row["text"])
            columns["seconds_from_chat_start"].append(row["at"])
            # The final version is saved with the final survey (to the microsecond).
            when = start + pd.Timedelta(seconds=row["at"])
            columns["created_at"].append(person.completed_at if row["source"] == "final" else when)
    return columns, finals
