"""The study report (analysis.report, its CLI and notebook) on synthetic studies, known effects."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from analysis import power, stats, trajectories
from analysis.io import load_export, write_export
from analysis.report import build_report, prepare
from analysis.synthetic import synthetic_study

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "schema_version", "generated_at", "export", "settings", "arms", "outcomes", "sample",
    "exclusions", "descriptives", "omnibus", "pairwise", "relative_change", "shares",
    "trajectories", "by_task_type", "power", "figures", "warnings", "documents",
    "reward_agreement",
}  # fmt: skip
OUTCOMES = [
    "overall_interaction", "document_quality", "wall_seconds", "active_seconds", "n_user_turns",
    "assistant_tokens", "user_tokens", "rating_turn_3", "rating_turn_6", "rating_turn_9",
]  # fmt: skip
N_BOOT = 1000


@pytest.fixture(scope="module")
def study():
    return synthetic_study(n_per_arm=300, seed=11, exclusion_rate=0.05)


@pytest.fixture(scope="module")
def export_dir(study, tmp_path_factory):
    return write_export(study, tmp_path_factory.mktemp("export") / "export")


@pytest.fixture(scope="module")
def report(export_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    steps: list[tuple[str, float]] = []
    summary = build_report(
        export_dir, out, seed=5, n_boot=N_BOOT, progress=lambda s, f: steps.append((s, f))
    )
    return out, summary, steps


@pytest.fixture(scope="module")
def analysed(export_dir):
    return prepare(load_export(export_dir, tables=["participants", "turn_ratings"]))


def small_export(tmp_path: Path, **changes) -> Path:
    study = synthetic_study(n_per_arm=15, seed=2, exclusion_rate=0.1)
    people = study["participants"].copy()
    for column, (rows, value) in changes.items():
        people.loc[rows, column] = value
    return write_export({**study, "participants": people}, tmp_path / "export")


def same(rows: list[dict], frame: pd.DataFrame) -> None:
    """The JSON records equal the frame (ints may have become floats, NaN became null)."""
    expected = frame.reset_index(drop=True)
    got = pd.DataFrame(rows, columns=expected.columns).fillna(np.nan)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_the_report_writes_every_file(report):
    out, summary, _ = report
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    figures = {
        "figures/violin_document_quality.png", "figures/violin_overall_interaction.png",
        "figures/violin_wall_seconds.png", "figures/violin_active_seconds.png",
        "figures/trajectories.png",
    }  # fmt: skip
    assert names == {"summary.json", "report.html", "notebook.ipynb", *figures}
    assert {f"figures/{name}" for name in summary["figures"]} == figures


def test_the_summary_has_every_section_for_every_outcome(report):
    out, summary, _ = report
    on_disk = json.loads((out / "summary.json").read_text(), parse_constant=pytest.fail)
    assert on_disk == summary
    assert set(summary) == SECTIONS
    assert summary["outcomes"] == OUTCOMES
    for section in ("descriptives", "omnibus", "pairwise", "relative_change", "by_task_type"):
        assert list(summary[section]) == OUTCOMES, section
    assert list(summary["power"]["pairs"]) == OUTCOMES
    assert set(summary["shares"]) == {"overall_interaction", *OUTCOMES[-3:]}
    assert set(summary["shares"]["rating_turn_9"]) == {"8", "9"}
    assert set(summary["trajectories"]["mixed_model"]["coefficients"][0]) == {
        "term", "estimate", "se", "z", "p", "ci_low", "ci_high",
    }  # fmt: skip
    assert summary["settings"] == {
        "reference_arm": "base", "seed": 5, "n_boot": N_BOOT, "level": 0.95,
        "include_pilot": False,
    }  # fmt: skip


def test_the_numbers_are_those_of_the_stats_functions(report, analysed):
    _, summary, _ = report
    people, boot = analysed.participants, {"seed": 5, "n_boot": N_BOOT}
    for outcome in ("overall_interaction", "wall_seconds", "rating_turn_6"):
        expected = stats.describe(people, outcome, **boot)
        same(summary["descriptives"][outcome], expected)
        pairs = stats.pairwise(
            people,
            outcome,
            order=stats.reference_first(analysed.arms, "base"),
            reference="base",
            **boot,
        )
        same(summary["pairwise"][outcome], pairs)
        change = stats.relative_change(people, outcome, reference="base", **boot)
        same(summary["relative_change"][outcome], change)
        omnibus = stats.omnibus(people, outcome)
        assert summary["omnibus"][outcome]["kruskal_p"] == omnibus.kruskal_p
    share = stats.share_at_least(people, "overall_interaction", 9)
    same(summary["shares"]["overall_interaction"]["9"], share)
    means = trajectories.trajectory_means(analysed.turn_ratings, **boot)
    same(summary["trajectories"]["means"], means)
    first = summary["power"]["pairs"]["overall_interaction"][0]
    assert first["achieved_power"] == power.achieved_power(
        first["hedges_g"], first["n_a"], first["n_b"]
    )
    assert summary["power"]["n_per_arm_for_benchmark"] == power.n_per_arm(0.5) == 64


def test_the_known_effects_are_recovered_within_the_reported_intervals(report, study):
    _, summary, _ = report
    truth = study.truth
    for outcome, expected in (
        ("overall_interaction", truth.satisfaction_change["collabllm"]),
        ("wall_seconds", truth.time_change["collabllm"]),
    ):
        (row,) = [r for r in summary["relative_change"][outcome] if r["arm"] == "collabllm"]
        assert row["reference"] == "base"
        assert row["ci_low"] <= expected <= row["ci_high"], (outcome, row)
    assert truth.satisfaction_change["collabllm"] == pytest.approx(0.176)
    assert truth.time_change["collabllm"] == pytest.approx(-0.104)


def test_exclusions_are_reported_per_arm_and_applied(report, study):
    _, summary, _ = report
    people = study["participants"]
    flagged = people[people["excluded"]]
    totals = {r["arm"]: r["n"] for r in summary["exclusions"] if r["reason"] == "total"}
    assert totals == flagged.groupby("arm").size().to_dict()
    by_reason = {(r["arm"], r["reason"]): r["n"] for r in summary["exclusions"]}
    expected = flagged.groupby(["arm", "exclusion_reason"]).size().to_dict()
    assert {k: v for k, v in by_reason.items() if k[1] != "total"} == expected
    assert summary["sample"]["n_excluded"] == len(flagged) > 0
    assert summary["sample"]["n_analysed"] == len(people) - len(flagged)
    described = {r["arm"]: r["n"] for r in summary["descriptives"]["overall_interaction"]}
    assert described == people[~people["excluded"]].groupby("arm").size().to_dict()
    rated = summary["trajectories"]["mixed_model"]["n_groups"]
    assert rated == len(people) - len(flagged)


def test_the_progress_callback_reaches_one_in_order(report):
    _, _, steps = report
    fractions = [f for _, f in steps]
    assert fractions == sorted(fractions)
    assert steps[-1] == ("done", 1.0)


def test_pilot_rows_are_dropped_unless_asked_for(tmp_path):
    export = small_export(tmp_path, is_pilot=([0, 1, 2], True), excluded=([0, 1, 2], False))
    dropped = build_report(export, tmp_path / "a", n_boot=50)
    kept = build_report(export, tmp_path / "b", n_boot=50, include_pilot=True)
    assert dropped["sample"]["n_pilot_dropped"] == 3
    assert dropped["sample"]["n_analysed"] + 3 == kept["sample"]["n_analysed"]
    assert kept["sample"]["n_pilot_dropped"] == 0
    assert kept["settings"]["include_pilot"] is True


def test_only_completed_participations_are_analysed_and_dropouts_are_counted(tmp_path):
    export = small_export(
        tmp_path, status=([0, 1, 2, 3], "abandoned"), excluded=([0, 1, 2, 3], False)
    )
    people = load_export(export, tables=["participants"]).participants
    complete = build_report(small_export(tmp_path / "all"), tmp_path / "a", n_boot=50)
    summary = build_report(export, tmp_path / "b", n_boot=50)
    assert summary["sample"]["n_not_completed"] == 4
    assert summary["sample"]["n_analysed"] == complete["sample"]["n_analysed"] - 4
    by_arm = summary["sample"]["not_completed_by_arm"]
    assert sum(v["abandoned"] for v in by_arm.values()) == 4
    assert set(by_arm) == set(people.loc[[0, 1, 2, 3], "arm"])
    n_active = sum(r["n"] for r in summary["descriptives"]["active_seconds"])
    assert n_active == summary["sample"]["n_analysed"]


def test_the_reference_arm_can_be_chosen(tmp_path):
    summary = build_report(small_export(tmp_path), tmp_path / "out", reference_arm="proactive")
    pairs = [(r["arm_a"], r["arm_b"]) for r in summary["pairwise"]["overall_interaction"]]
    assert pairs == [("base", "proactive"), ("collabllm", "proactive"), ("base", "collabllm")]
    assert {r["reference"] for r in summary["relative_change"]["overall_interaction"]} == {
        "proactive"
    }
    assert {r["arm"] for r in summary["relative_change"]["overall_interaction"]} == {
        "base",
        "collabllm",
    }


def test_without_a_base_arm_the_first_arm_alphabetically_is_the_reference(tmp_path):
    study = synthetic_study(n_per_arm=10, seed=1, arms=("zeta", "alpha"), reference="zeta")
    export = write_export(study, tmp_path / "export")
    summary = build_report(export, tmp_path / "out", n_boot=50)
    assert summary["settings"]["reference_arm"] == "alpha"


def test_an_unknown_reference_arm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="reference arm 'nope' is not one of"):
        build_report(small_export(tmp_path), tmp_path / "out", reference_arm="nope")


def test_participant_text_is_escaped_in_the_html(tmp_path):
    attack = '<script>alert("x")</script>'
    export = small_export(tmp_path, topic=([0, 1], attack), task_type=([2], "<b>bold</b>"))
    build_report(export, tmp_path / "out", n_boot=50)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in html
    assert "<b>bold" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html


def test_the_html_is_self_contained_with_captioned_tables(report):
    out, summary, _ = report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(summary["figures"]) == 5
    assert 'src="http' not in html and "<link" not in html
    assert html.count("<table") == html.count("<caption>") > 20
    assert '<th scope="col">' in html and '<th scope="row">' in html


def test_the_notebook_validates_and_reproduces_the_summary(report, tmp_path, monkeypatch):
    out, summary, _ = report
    notebook = nbformat.read(out / "notebook.ipynb", as_version=4)
    nbformat.validate(notebook)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "notebook", "exec"), namespace)
    for outcome in OUTCOMES:
        same(summary["descriptives"][outcome], namespace["descriptives"][outcome])
        same(summary["relative_change"][outcome], namespace["changes"][outcome])
        same(summary["pairwise"][outcome], namespace["pairs"][outcome])
    same(summary["trajectories"]["mixed_model"]["coefficients"], namespace["model"].coefficients)
    observed = namespace["observed"]
    reported = [r["achieved_power"] for o in OUTCOMES for r in summary["power"]["pairs"][o]]
    reported = [np.nan if p is None else p for p in reported]
    assert np.allclose(observed["achieved_power"], reported, equal_nan=True)


def run_cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "analysis", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_writes_a_report(tmp_path):
    export = small_export(tmp_path)
    result = run_cli("report", export, "--out", tmp_path / "out", "--seed", 3, "--n-boot", 50)
    assert result.returncode == 0, result.stderr
    assert "participants analysed" in result.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["seed"] == 3
    assert (tmp_path / "out" / "report.html").exists()


def test_the_cli_fails_cleanly_on_a_bad_export(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "participants.csv").write_text("participant_id,arm\np1,base\n")
    result = run_cli("report", tmp_path / "export", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "error:" in result.stderr and "turn_ratings" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_worker_processes_give_the_same_summary_as_one_process(tmp_path):
    export = small_export(tmp_path)
    serial = build_report(export, tmp_path / "serial", n_boot=100, workers=1)
    parallel = build_report(export, tmp_path / "parallel", n_boot=100, workers=2)
    for summary in (serial, parallel):
        summary.pop("generated_at")
    assert serial == parallel


def test_pairwise_effects_read_arm_versus_reference_with_the_relative_change(report, study):
    _, summary, _ = report
    assert study.truth.satisfaction_change["collabllm"] > 0.1  # the arm is clearly better
    for outcome in ("overall_interaction", "document_quality"):
        (pair,) = [
            r
            for r in summary["pairwise"][outcome]
            if {r["arm_a"], r["arm_b"]} == {"collabllm", "base"}
        ]
        (change,) = [r for r in summary["relative_change"][outcome] if r["arm"] == "collabllm"]
        assert (pair["arm_a"], pair["arm_b"]) == ("collabllm", "base")
        assert pair["difference"] == pytest.approx(pair["mean_a"] - pair["mean_b"])
        assert pair["difference"] == pytest.approx(change["change"] * change["reference_mean"])
        assert 0 < pair["diff_ci_low"] < pair["difference"] < pair["diff_ci_high"]
        assert 0 < pair["g_ci_low"] < pair["hedges_g"] < pair["g_ci_high"]
        assert 0 < pair["cliffs_delta"] and 0 < change["ci_low"] < change["change"]
        assert pair["welch_t"] > 0


def test_declines_are_counted_on_their_own_line_and_never_in_an_arm(tmp_path):
    rows = [0, 1, 2]
    export = small_export(
        tmp_path, status=(rows, "declined"), outcome=(rows, "declined"), arm=(rows, None),
        excluded=(rows, False),
    )  # fmt: skip
    complete = build_report(small_export(tmp_path / "all"), tmp_path / "a", n_boot=50)
    summary = build_report(export, tmp_path / "b", n_boot=50)
    sample = summary["sample"]
    assert sample["n_declined"] == 3 and complete["sample"]["n_declined"] == 0
    assert sample["n_not_completed"] == 0 and sample["not_completed_by_arm"] == {}
    assert sample["n_analysed"] == complete["sample"]["n_analysed"] - 3
    assert set(sample["by_arm"]) == {"base", "proactive", "collabllm"}
    described = sum(r["n"] for r in summary["descriptives"]["overall_interaction"])
    assert described == sample["n_analysed"]
    html = (tmp_path / "b" / "report.html").read_text()
    assert "3 declined consent (never assigned an arm" in html


def test_the_mixed_models_variance_components_and_icc_are_reported(report):
    out, summary, _ = report
    model = summary["trajectories"]["mixed_model"]
    between, within = model["group_var"], model["residual_var"]
    assert between > 0 and within > 0
    assert model["icc"] == pytest.approx(between / (between + within))
    html = (out / "report.html").read_text()
    assert f"ICC = between / (between + residual) = {model['icc']:.3g}" in html


def test_a_study_with_only_pilot_participants_says_how_to_analyse_them(tmp_path):
    export = small_export(tmp_path, is_pilot=(slice(None), True))

    with pytest.raises(ValueError) as refused:
        prepare(load_export(export, tables=["participants", "turn_ratings"]))

    message = str(refused.value)
    assert "no completed participant to analyse" in message
    assert f"all {len(load_export(export, tables=['participants']).participants)}" in message
    assert "include pilot participants" in message
    with_pilots = prepare(
        load_export(export, tables=["participants", "turn_ratings"]), include_pilot=True
    )
    assert with_pilots.arms  # and with them it works
