"""The report's "Does the reward agree with people?" section, from a reply_rewards table beside
the export (score_study writes it), checked against scipy on the same rows."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.io import load_export, write_export
from analysis.report import build_report, load_rewards
from analysis.synthetic import synthetic_study


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    study = synthetic_study(n_per_arm=40, seed=4, exclusion_rate=0.0)
    return write_export(study, tmp_path_factory.mktemp("export") / "export")


def rewards_for(export_dir) -> pd.DataFrame:
    """One row per turn of every participant; MR drifts with the rating given at the next
    checkpoint, so the two agree; every seventh reply failed to score."""
    export = load_export(export_dir, tables=["participants", "turn_ratings"])
    rng = np.random.default_rng(7)
    ratings = export.turn_ratings
    rows = []
    for person in export.participants.itertuples():
        own = ratings.loc[ratings["participant_id"] == person.participant_id]
        for turn in range(1, int(person.n_user_turns) + 1):
            later = own.loc[own["after_turn"] >= turn, "score"]
            level = float(later.iloc[0]) if len(later) else 5.0
            failed = (turn + len(rows)) % 7 == 0
            rows.append(
                {
                    "participant_id": person.participant_id,
                    "arm": person.arm,
                    "turn_index": turn,
                    "message_id": len(rows) + 1,
                    "mr": np.nan if failed else level / 10 + rng.normal(0, 0.05),
                    "task": np.nan if failed else level / 10,
                    "penalty": np.nan if failed else 0.01,
                    "interactivity": np.nan if failed else 0.5,
                    "error": "policy_failed: down" if failed else "",
                }
            )
    return pd.DataFrame(rows)


def test_the_report_relates_the_reward_to_the_ratings_when_rewards_sit_beside_the_export(
    export_dir, tmp_path
):
    rewards = rewards_for(export_dir)
    rewards.to_csv(export_dir / "reply_rewards.csv", index=False)
    (export_dir / "reply_rewards_settings.json").write_text(json.dumps({"window": 1}))
    try:
        summary = build_report(export_dir, tmp_path / "out", seed=3, n_boot=200, workers=1)
    finally:
        (export_dir / "reply_rewards.csv").unlink()
        (export_dir / "reply_rewards_settings.json").unlink()

    section = summary["reward_agreement"]
    assert section["settings"] == {"window": 1}
    row = next(
        r
        for r in section["checkpoints"]
        if r["after_turn"] == 3 and r["arm"] == "all" and r["term"] == "mr"
    )
    # Independently: each participant's mean MR over the replies scored up to turn 3.
    ok = rewards.loc[rewards["error"].eq("") & (rewards["turn_index"] <= 3)]
    means = ok.groupby("participant_id")["mr"].mean()
    ratings = load_export(export_dir, tables=["turn_ratings"]).turn_ratings
    at3 = ratings.loc[ratings["after_turn"] == 3].set_index("participant_id")["score"]
    both = pd.concat([means, at3], axis=1, join="inner")
    assert row["n_participants"] == len(both)
    assert row["rho"] == pytest.approx(sps.spearmanr(both["mr"], both["score"]).statistic)
    assert row["ci_low"] < row["rho"] < row["ci_high"] and row["rho"] > 0.5
    counts = {r["arm"]: r for r in section["replies"]}
    assert counts["all"]["n_failed"] == int(rewards["error"].ne("").sum())
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Does the reward agree with people?" in html


def test_without_rewards_the_section_says_it_was_not_computed(export_dir, tmp_path):
    summary = build_report(export_dir, tmp_path / "out", seed=3, n_boot=200, workers=1)

    assert summary["reward_agreement"] is None
    assert "score_study" in (tmp_path / "out" / "report.html").read_text()


def test_a_rewards_file_where_every_reply_was_scored_loads_with_empty_errors(tmp_path):
    path = tmp_path / "reply_rewards.csv"
    path.write_text(
        "participant_id,arm,turn_index,message_id,mr,task,penalty,interactivity,error\n"
        "a,base,1,1,0.5,0.4,0.1,0.2,\n"
    )
    table, settings = load_rewards(path)
    assert table["error"].tolist() == [""] and settings == {}
