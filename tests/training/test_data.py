from __future__ import annotations

import json

import pytest

from training.pipeline.data import dpo_rows, read_jsonl, save_dataset, sft_rows

U1, A1, U2 = (
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "more"},
)


def _conv(turns, messages=(U1, A1, U2)):
    return {"task_id": "t1", "kind": "document", "messages": list(messages), "turns": turns}


def _turn(*mrs):
    return {
        "history": [U1],
        "candidates": [{"candidate": f"c{i}", "mr": mr} for i, mr in enumerate(mrs)],
    }


def test_sft_rows_end_on_the_assistant_and_carry_the_system_prompt():
    [row] = sft_rows([_conv([])], system_prompt="be helpful")
    assert row["messages"] == [{"role": "system", "content": "be helpful"}, U1, A1]


def test_a_conversation_without_an_assistant_turn_gives_no_sft_row():
    assert sft_rows([_conv([], messages=[U1])]) == []


def test_dpo_pairs_take_the_best_and_worst_scored_candidates():
    [row] = dpo_rows([_conv([_turn(0.2, None, 0.9, 0.5)])])
    assert row["chosen"] == [{"role": "assistant", "content": "c2"}]
    assert row["rejected"] == [{"role": "assistant", "content": "c0"}]
    assert row["prompt"] == [U1]
    assert (row["mr_chosen"], row["mr_rejected"]) == (0.9, 0.2)


@pytest.mark.parametrize(
    "mrs, min_gap, pairs",
    [((0.5, 0.5), 0.0, 0), ((0.5, None), 0.0, 0), ((0.6, 0.5), 0.2, 0), ((0.8, 0.5), 0.2, 1)],
)
def test_ties_unscored_candidates_and_small_gaps_make_no_pair(mrs, min_gap, pairs):
    assert len(dpo_rows([_conv([_turn(*mrs)])], min_gap=min_gap)) == pairs


def test_a_saved_dataset_loads_with_datasets_and_has_a_card(tmp_path):
    import datasets

    rows = dpo_rows([_conv([_turn(0.1, 0.9)])])
    folder = save_dataset(rows, tmp_path / "dpo", name="collabllm-dpo", card={"window": 2})
    loaded = datasets.load_dataset(
        "parquet", data_files=str(folder / "train.parquet"), split="train"
    )
    assert loaded[0]["chosen"] == rows[0]["chosen"]
    assert read_jsonl(folder / "train.jsonl") == json.loads(json.dumps(rows))
    card = (folder / "README.md").read_text()
    assert card.startswith("---\npretty_name: collabllm-dpo") and '"window": 2' in card


def test_the_data_card_counts_failed_rollouts_and_unranked_candidates(tmp_path):
    from training.pipeline.stages import build_datasets

    counts = {"attempted": 3, "succeeded": 1, "failed": 2, "failures": {"policy_failed": 2}}
    ranked = {"attempted": 3, "succeeded": 3, "failed": 0, "failures": {}}
    turn = {
        "history": [U1],
        "candidates": [
            {"candidate": "a", "mr": None, "rollout_counts": counts},
            {"candidate": "b", "mr": 0.5, "rollout_counts": ranked},
        ],
    }
    folder = tmp_path / "conversations"
    folder.mkdir()
    for task_id, ended in (("t1", "terminated"), ("t2", "user_failed")):
        conv = _conv([turn]) | {"task_id": task_id, "ended": ended, "settings": {}}
        (folder / f"{task_id}.json").write_text(json.dumps(conv))
    build_datasets(tmp_path, min_gap=0.0)
    card = (tmp_path / "data" / "dpo" / "README.md").read_text()
    failures = json.loads(card.split("```json\n")[1].split("\n```")[0])["reward_failures"]
    assert failures == {
        "conversations_ended": {"terminated": 1, "user_failed": 1},
        "candidates": 4,
        "unranked_candidates": 2,
        "rollouts": {
            "attempted": 12,
            "succeeded": 8,
            "failed": 4,
            "failures": {"policy_failed": 4},
        },
    }
