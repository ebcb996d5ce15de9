"""How the document was made: per participant, measures of the document_versions table (edits,
versions per completed turn, time to the first edit, final length) and the share of the final
document that came from the assistant's replies; per arm, their means with bootstrap CIs.

The share is a verbatim text overlap: a character of the final document counts as coming from
the assistant when it lies inside some run of at least MIN_MATCH_CHARS consecutive characters
that also occurs, exactly, in one of the participant's own complete assistant replies (a reply
continued after the token limit is the cut reply and its continuations joined). Unlike difflib's
SequenceMatcher, this finds reordered passages too and has no junk heuristics.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis import stats

MIN_MATCH_CHARS = 30  # about five words: shorter runs shared by chance ("in order to make the")
MIN_PARTICIPANTS = 2  # per arm, for a mean with an interval
MEASURES = {
    "n_edits": "Edits: document versions saved before the submitted one (source not final)",
    "versions_per_turn": "Document versions (all, the submitted one included) per completed turn",
    "assistant_share": "Share of the final document's characters that came from assistant replies",
    "first_edit_seconds": "Seconds from the chat's start to the first edit",
    "final_chars": "Length of the submitted document (characters)",
}
MEASURE_COLUMNS = ["participant_id", "arm", "n_versions", *MEASURES]
_P = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(int(_P), -1, 2**64))


def replies(messages: pd.DataFrame) -> pd.DataFrame:
    """Complete assistant replies, one row per reply with its continuations joined in order:
    participant_id, message_id (of the first part), text."""
    rows = messages.loc[
        messages["role"].eq("assistant").fillna(False)
        & messages["status"].eq("complete").fillna(False),
        ["participant_id", "message_id", "continuation_of", "content"],
    ].sort_values("message_id")
    ids = rows["message_id"].astype("int64").tolist()
    parents = rows["continuation_of"].astype("Float64").fillna(-1).astype("int64").tolist()
    parent = dict(zip(ids, parents, strict=True))
    # Plain lists: pandas' string groupby-join runs row by row in Python anyway, slower.
    texts: dict[tuple[str, int], list[str]] = {}
    contents = rows["content"].fillna("").tolist()
    for pid, message_id, content in zip(
        rows["participant_id"].tolist(), ids, contents, strict=True
    ):
        root, seen = message_id, {message_id}
        while parent[root] in parent and parent[root] not in seen:  # no cycles from the platform
            root = parent[root]
            seen.add(root)
        texts.setdefault((pid, root), []).append(content)
    keys = sorted(texts)
    return pd.DataFrame(
        {
            "participant_id": pd.Series([k[0] for k in keys], dtype="str"),
            "message_id": pd.Series([k[1] for k in keys], dtype="int64"),
            "text": pd.Series(["".join(texts[k]) for k in keys], dtype="str"),
        }
    )


def truncation(messages: pd.DataFrame, arms: list[str], level: float = 0.95) -> pd.DataFrame:
    """Per arm, replies cut at the token limit: n_replies (complete replies, a continued reply
    counted once), n_cut (its first part stopped with finish_reason "length"), n_continued (a
    complete continuation follows), n_left_cut (its last complete part still stopped at the
    limit), and share_cut = n_cut / n_replies with a Wilson interval."""
    parts = messages.loc[
        messages["role"].eq("assistant").fillna(False)
        & messages["status"].eq("complete").fillna(False)
    ].sort_values("message_id")
    ids = parts["message_id"].astype("int64").tolist()
    parents = parts["continuation_of"].astype("Float64").fillna(-1).astype("int64").tolist()
    parent = dict(zip(ids, parents, strict=True))
    cut = parts["finish_reason"].astype("string").eq("length").fillna(False).tolist()
    chains: dict[int, list[bool]] = {}  # root part -> cut flags of its parts, in order
    arm_of: dict[int, str] = {}
    for message_id, arm, was_cut in zip(ids, parts["arm"].astype(str).tolist(), cut, strict=True):
        root, seen = message_id, {message_id}
        while parent[root] in parent and parent[root] not in seen:
            root = parent[root]
            seen.add(root)
        chains.setdefault(root, []).append(was_cut)
        arm_of.setdefault(root, arm)
    rows = []
    for arm in arms:
        mine = [flags for root, flags in chains.items() if arm_of[root] == arm]
        n, k = len(mine), sum(flags[0] for flags in mine)
        rows.append({
            "arm": arm,
            "n_replies": n,
            "n_cut": k,
            "n_continued": sum(len(flags) > 1 for flags in mine),
            "n_left_cut": sum(flags[-1] for flags in mine),
            "share_cut": k / n if n else np.nan,
            **dict(zip(("ci_low", "ci_high"), stats.wilson_interval(k, n, level), strict=True)),
        })  # fmt: skip
    return pd.DataFrame(
        rows,
        columns=["arm", "n_replies", "n_cut", "n_continued", "n_left_cut", "share_cut", "ci_low",
                 "ci_high"],
    )  # fmt: skip


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.uint64)


def _window_hashes(codes: np.ndarray, k: int) -> np.ndarray:
    """Polynomial hash (mod 2**64) of every window of k codes: sum_j codes[i + j] * P**j."""
    n = codes.size
    if n < k:
        return np.empty(0, dtype=np.uint64)
    powers, inverse = _powers(n)
    prefix = np.concatenate(([np.uint64(0)], np.cumsum(codes * powers[:n], dtype=np.uint64)))
    return (prefix[k:] - prefix[:-k]) * inverse[: n - k + 1]


_POWERS = [np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64)]


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(P**i, P**-i) mod 2**64 for i < at least n, grown by doubling and kept for the next call."""
    if _POWERS[0].size < n:
        size = max(n, 2 * _POWERS[0].size)
        for j, base in enumerate((_P, _P_INV)):
            _POWERS[j] = np.concatenate(
                ([np.uint64(1)], np.cumprod(np.full(size - 1, base, dtype=np.uint64)))
            )
    return _POWERS[0], _POWERS[1]


def _reply_hashes(reply_texts: Sequence[str], k: int) -> np.ndarray:
    """Hashes of every k-character window lying inside one reply (none across two)."""
    lengths = np.array([len(t) for t in reply_texts], dtype=np.int64)
    hashes = _window_hashes(_codes("".join(reply_texts)), k)
    owner = np.repeat(np.arange(lengths.size), lengths)
    return hashes[owner[: hashes.size] == owner[k - 1 :]] if hashes.size else hashes


def assistant_share(final: str, reply_texts: Sequence[str], k: int = MIN_MATCH_CHARS) -> float:
    """Covered characters / length of `final` (see the module docstring); NaN when it is empty."""
    if not final:
        return np.nan
    target, known = _window_hashes(_codes(final), k), _reply_hashes(reply_texts, k)
    if target.size == 0 or known.size == 0:
        return 0.0
    known = np.sort(known)  # a sorted search: several times faster than np.isin at these sizes
    found = np.minimum(np.searchsorted(known, target), known.size - 1)
    starts = np.flatnonzero(known[found] == target)
    edges = np.zeros(len(final) + 1, dtype=np.int64)
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + k, -1)
    return float((np.cumsum(edges[:-1]) > 0).sum() / len(final))


def measures(
    participants: pd.DataFrame, versions: pd.DataFrame, reply_rows: pd.DataFrame
) -> pd.DataFrame:
    """One row per participant of `participants` that has document versions."""
    people = participants.set_index("participant_id")
    turns = people["n_complete_turns"].astype("Float64")
    own = versions.loc[versions["participant_id"].isin(turns.index)].sort_values(
        ["participant_id", "version"]
    )
    groups = own.groupby("participant_id", sort=True)
    last = groups.tail(1).set_index("participant_id")
    edits = own.loc[own["source"].ne("final").fillna(True)].groupby("participant_id")
    n_versions = groups.size()
    texts: dict[str, list[str]] = {}
    for pid, text in zip(
        reply_rows["participant_id"].tolist(), reply_rows["text"].tolist(), strict=True
    ):
        texts.setdefault(pid, []).append(text)
    finals = last["text"].fillna("").astype(str)
    share = [assistant_share(finals[p], texts.get(p, [])) for p in last.index]
    per_turn = n_versions / turns.reindex(last.index).where(lambda t: t > 0)
    result = pd.DataFrame({
        "participant_id": last.index,
        "arm": people["arm"].reindex(last.index).astype(str).to_numpy(),
        "n_versions": n_versions.reindex(last.index).to_numpy(),
        "n_edits": edits.size().reindex(last.index, fill_value=0).to_numpy(),
        "versions_per_turn": per_turn.to_numpy(dtype=float, na_value=np.nan),
        "assistant_share": share,
        "first_edit_seconds": edits["seconds_from_chat_start"].first().reindex(last.index),
        "final_chars": last["chars"].astype("Float64").fillna(finals.str.len()),
    })  # fmt: skip
    return result.reset_index(drop=True).astype({"final_chars": float, "first_edit_seconds": float})


def _notes(people: pd.DataFrame, found: pd.DataFrame, arms: list[str]) -> list[str]:
    if found.empty:
        return [
            "This export has no document versions for the analysed participants: exports made "
            "before the document pane (and studies without it) have none, so this section is empty."
        ]
    notes = []
    missing = len(people) - len(found)
    if missing:
        notes.append(f"{missing} analysed participants have no document versions and are left out.")
    counts = found.groupby("arm").size()
    few = [a for a in arms if counts.get(a, 0) < MIN_PARTICIPANTS]
    if few:
        notes.append(
            f"Too few participants with document versions for an interval in: {', '.join(few)} "
            f"(fewer than {MIN_PARTICIPANTS})."
        )
    return notes


def document_sections(
    people: pd.DataFrame,
    versions: pd.DataFrame,
    messages: pd.DataFrame,
    arms: list[str],
    seed: int,
    n_boot: int,
    level: float,
) -> dict[str, Any]:
    """The report's "How the document was made" entries: per measure, per-arm mean with a
    percentile bootstrap CI (stats.describe), plus notes on what is missing."""
    found = measures(people, versions, replies(messages))
    return {
        "min_match_chars": MIN_MATCH_CHARS,
        "n_with_versions": {a: int((found["arm"] == a).sum()) for a in arms},
        "notes": _notes(people, found, arms),
        "measures": list(MEASURES),
        "labels": MEASURES,
        "per_arm": {
            m: stats.describe(found, m, seed=seed, n_boot=n_boot, level=level) for m in MEASURES
        },
        "truncation": truncation(messages, arms, level),
    }
