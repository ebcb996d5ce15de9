"""SFT and DPO datasets from collected conversations, saved in Hugging Face `datasets` format.

SFT rows are the chosen paths (`messages`); DPO rows pair, at each turn, the highest-MR candidate
with the lowest-MR one (`prompt` / `chosen` / `rejected`, TRL's conversational preference format),
kept only when the MR gap is at least min_gap.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SYSTEM_ROLE = "system"


def sft_rows(conversations: Iterable[Mapping[str, Any]], system_prompt: str = "") -> list[dict]:
    """One row per conversation with at least one assistant turn; a trailing user message is cut."""
    rows = []
    for conv in conversations:
        messages = list(conv["messages"])
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()
        if not messages:
            continue
        prefix = [{"role": SYSTEM_ROLE, "content": system_prompt}] if system_prompt else []
        rows.append(
            {"task_id": conv["task_id"], "kind": conv["kind"], "messages": prefix + messages}
        )
    return rows


def dpo_rows(
    conversations: Iterable[Mapping[str, Any]], *, min_gap: float = 0.0, system_prompt: str = ""
) -> list[dict]:
    """One (prompt, chosen, rejected) row per turn whose best and worst MR differ by min_gap."""
    rows = []
    prefix = [{"role": SYSTEM_ROLE, "content": system_prompt}] if system_prompt else []
    for conv in conversations:
        for turn in conv["turns"]:
            scored = [c for c in turn["candidates"] if c["mr"] is not None]
            if len(scored) < 2:
                continue
            best = max(scored, key=lambda c: c["mr"])
            worst = min(scored, key=lambda c: c["mr"])
            gap = best["mr"] - worst["mr"]
            if gap <= 0 or gap < min_gap or best["candidate"] == worst["candidate"]:
                continue
            row = {
                "task_id": conv["task_id"],
                "kind": conv["kind"],
                "prompt": prefix + list(turn["history"]),
                "chosen": [{"role": "assistant", "content": best["candidate"]}],
                "rejected": [{"role": "assistant", "content": worst["candidate"]}],
                "mr_chosen": best["mr"],
                "mr_rejected": worst["mr"],
            }
            if "source" in best:  # collected from a study: whose reply each side is
                row |= {"chosen_source": best["source"], "rejected_source": worst["source"]}
            rows.append(row)
    return rows


def source_counts(
    conversations: Iterable[Mapping[str, Any]], dpo: Iterable[Mapping[str, Any]]
) -> dict[str, int]:
    """Collected from a study: how many turns, real replies scored, and DPO sides that are real."""
    turns = scored = 0
    for conv in conversations:
        for turn in conv["turns"]:
            turns += 1
            scored += any(
                c.get("source") == "participant" and c["mr"] is not None for c in turn["candidates"]
            )
    pairs = list(dpo)
    return {
        "turns": turns,
        "participant_replies_scored": scored,
        "dpo_chosen_participant": sum(r.get("chosen_source") == "participant" for r in pairs),
        "dpo_rejected_participant": sum(r.get("rejected_source") == "participant" for r in pairs),
    }


def reward_failures(conversations: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """How the collection went: conversation endings, failed rollouts and unranked candidates."""
    ended: Counter[str] = Counter()
    rollouts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    candidates = unranked = 0
    for conv in conversations:
        ended[conv.get("ended", "unknown")] += 1
        for turn in conv["turns"]:
            for candidate in turn["candidates"]:
                candidates += 1
                unranked += candidate["mr"] is None
                counts = candidate.get("rollout_counts") or {}
                rollouts.update({k: counts.get(k, 0) for k in ("attempted", "succeeded", "failed")})
                reasons.update(counts.get("failures", {}))
    return {
        "conversations_ended": dict(sorted(ended.items())),
        "candidates": candidates,
        "unranked_candidates": unranked,
        "rollouts": {**rollouts, "failures": dict(sorted(reasons.items()))},
    }


def prompt_rows(conversations: Iterable[Mapping[str, Any]], system_prompt: str = "") -> list[dict]:
    """Online DPO prompts: every history the policy answered, with its task id."""
    prefix = [{"role": SYSTEM_ROLE, "content": system_prompt}] if system_prompt else []
    return [
        {"task_id": conv["task_id"], "kind": conv["kind"], "prompt": prefix + list(t["history"])}
        for conv in conversations
        for t in conv["turns"]
    ]


def save_dataset(rows: list[dict], folder: Path, *, name: str, card: Mapping[str, Any]) -> Path:
    """Write train.parquet, train.jsonl and a data card (README.md) into folder."""
    import datasets  # heavy; only the stages that write data need it

    folder.mkdir(parents=True, exist_ok=True)
    if rows:
        datasets.Dataset.from_list(rows).to_parquet(str(folder / "train.parquet"))
    with (folder / "train.jsonl").open("w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    (folder / "README.md").write_text(data_card(name, len(rows), card))
    return folder


def data_card(name: str, count: int, card: Mapping[str, Any]) -> str:
    """A Hugging Face dataset card: YAML header, then how the rows were made."""
    settings = json.dumps(card, indent=2, sort_keys=True, default=str)
    study = card.get("source_study")
    if study:
        made = (
            f"{count} rows, made from the real conversations of study `{study['study']}` with "
            "Multiturn-aware Rewards (CollabLLM, ICML 2025) on this platform. Only participants "
            f"who agreed to their data being used for training are included: {study['eligible']} "
            f"eligible, {study['left_out_no_consent']} left out for no consent. At each assistant "
            "turn the participant's real reply (source `participant`) was scored beside replies "
            "sampled from the policy (source `policy`); `chosen_source` and `rejected_source` "
            "say whose each side of a DPO pair is. SFT rows are the participants' real chats.\n\n"
        )
    else:
        made = (
            f"{count} rows, made by collaborative simulation with Multiturn-aware Rewards "
            "(CollabLLM, ICML 2025) on this platform. Every role was a configured model endpoint; "
            "the tasks are the platform's offline task sets unless the settings name others.\n\n"
        )
    return (
        "---\n"
        f"pretty_name: {name}\n"
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n"
        "    path: train.parquet\n"
        "task_categories:\n- text-generation\n"
        "---\n\n"
        f"# {name}\n\n" + made + "## Settings\n\n```json\n" + settings + "\n```\n"
    )


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file."""
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]
