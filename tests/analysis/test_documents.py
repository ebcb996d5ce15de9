"""How the document was made (analysis.documents and the report's section): measures checked
against a case worked by hand and against independent computations (per-character coverage by
substring search, scipy's bootstrap), and the synthetic study's known per-arm effects recovered."""

import json
import math
from fractions import Fraction

import nbformat
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import documents, stats
from analysis.io import ExportError, empty_table, has_table, load_export, write_export
from analysis.report import build_report
from analysis.schema import TABLES
from analysis.synthetic import synthetic_study

K = documents.MIN_MATCH_CHARS
N_BOOT = 2000
REPLY = "the quick brown fox jumps over the lazy dog near the river bank at dawn"
CUT = "alpha beta gamma delta epsilon zeta "
CONTINUED = "eta theta iota kappa lambda mu nu xi omicron"


def frame(table: str, rows: list[dict]) -> pd.DataFrame:
    """Rows in the schema's columns and types (missing columns empty)."""
    empty = empty_table(table)
    data = pd.DataFrame(rows, columns=TABLES[table].names)
    return data.astype(empty.dtypes.to_dict())


def hand_made() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """Two participants: p1 chats two turns (the second reply cut and continued) and edits three
    times; p2 only submits. p1's final document copies 40 characters of the first reply, 35 that
    span the cut reply and its continuation, and 20 (fewer than K) of the first reply again."""
    final = (
        "My intro|" + REPLY[4:44] + "|and|" + CUT[-15:] + CONTINUED[:20] + "|" + REPLY[10:30] + "|"
    )
    people = pd.DataFrame({
        "participant_id": ["p1", "p2"], "arm": ["base", "base"], "n_complete_turns": [2, 3],
    })  # fmt: skip
    message = {"arm": "base", "attempt": 1, "status": "complete"}
    messages = frame("messages", [
        {**message, "message_id": 1, "participant_id": "p1", "turn_index": 1, "role": "user",
         "content": "Write about a fox."},
        {**message, "message_id": 2, "participant_id": "p1", "turn_index": 1, "role": "assistant",
         "content": REPLY},
        {**message, "message_id": 3, "participant_id": "p1", "turn_index": 2, "role": "user",
         "content": "More."},
        {**message, "message_id": 4, "participant_id": "p1", "turn_index": 2, "role": "assistant",
         "content": CUT, "finish_reason": "length"},
        {**message, "message_id": 5, "participant_id": "p1", "turn_index": 2, "role": "assistant",
         "content": CONTINUED, "continuation_of": 4},
        {**message, "message_id": 6, "participant_id": "p1", "turn_index": 3, "role": "assistant",
         "content": "an interrupted reply that was never shown in full", "status": "failed"},
        {**message, "message_id": 7, "participant_id": "p2", "turn_index": 1, "role": "assistant",
         "content": REPLY},
    ])  # fmt: skip
    version = {"arm": "base"}
    versions = frame("document_versions", [
        {**version, "participant_id": "p1", "version": 1, "source": "typed", "turn_index": 0,
         "text": "My intro", "chars": 8, "seconds_from_chat_start": 12.5},
        {**version, "participant_id": "p1", "version": 2, "source": "inserted",
         "from_message_id": 2, "turn_index": 1, "text": "My intro\n" + REPLY,
         "chars": 9 + len(REPLY), "seconds_from_chat_start": 40.0},
        {**version, "participant_id": "p1", "version": 3, "source": "pasted", "turn_index": 2,
         "text": final[:-1], "chars": len(final) - 1, "seconds_from_chat_start": 90.0},
        {**version, "participant_id": "p1", "version": 4, "source": "final", "turn_index": 2,
         "text": final, "chars": len(final), "seconds_from_chat_start": 130.0},
        {**version, "participant_id": "p2", "version": 1, "source": "final", "turn_index": 3,
         "text": "Mine alone.", "chars": 11, "seconds_from_chat_start": 300.0},
    ])  # fmt: skip
    return people, messages, versions, final


def covered_share(final: str, replies: list[str], k: int = K) -> float:
    """The overlap written out: mark every k-character window of `final` found in a reply."""
    covered = np.zeros(len(final), dtype=bool)
    for start in range(len(final) - k + 1):
        if any(final[start : start + k] in reply for reply in replies):
            covered[start : start + k] = True
    return covered.sum() / len(final) if final else math.nan


def test_a_continued_reply_is_one_reply_with_its_parts_joined():
    _, messages, _, _ = hand_made()
    replies = documents.replies(messages)
    assert replies.loc[replies["participant_id"] == "p1", "text"].tolist() == [
        REPLY,
        CUT + CONTINUED,
    ]
    assert replies["message_id"].tolist() == [2, 4, 7]


def test_the_share_of_a_hand_made_document_counts_only_runs_of_k_characters():
    _, messages, _, final = hand_made()
    replies = documents.replies(messages)
    texts = replies.loc[replies["participant_id"] == "p1", "text"].tolist()
    share = documents.assistant_share(final, texts)
    assert Fraction(share).limit_denominator(1000) == Fraction(40 + 35, len(final))
    assert share == covered_share(final, texts)
    # The parts of the continued reply alone hold neither side of the 35-character run.
    assert documents.assistant_share(final, [REPLY, CUT, CONTINUED]) == pytest.approx(
        40 / len(final)
    )


def test_the_hand_made_measures():
    people, messages, versions, final = hand_made()
    result = documents.measures(people, versions, documents.replies(messages)).set_index(
        "participant_id"
    )
    p1, p2 = result.loc["p1"], result.loc["p2"]
    assert (p1.n_versions, p1.n_edits, p1.versions_per_turn) == (4, 3, 2.0)
    assert (p1.first_edit_seconds, p1.final_chars) == (12.5, len(final))
    assert p1.assistant_share == pytest.approx(75 / len(final))
    assert (p2.n_versions, p2.n_edits, p2.versions_per_turn) == (1, 0, pytest.approx(1 / 3))
    assert math.isnan(p2.first_edit_seconds)
    assert p2.assistant_share == 0.0 and p2.final_chars == 11


@pytest.fixture(scope="module")
def study():
    return synthetic_study(n_per_arm=150, seed=21, messages=True, exclusion_rate=0.05)


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    export = write_export(study, tmp_path_factory.mktemp("export") / "export")
    out = tmp_path_factory.mktemp("report")
    return export, out, build_report(export, out, seed=4, n_boot=N_BOOT)


def independent_measures(study) -> pd.DataFrame:
    """Per analysed participant, every measure computed here from the raw tables."""
    people = study["participants"]
    people = people.loc[~people["excluded"].astype(bool)].set_index("participant_id")
    messages = study["messages"]
    rows = []
    for pid, versions in study["document_versions"].groupby("participant_id"):
        if pid not in people.index:
            continue
        versions = versions.sort_values("version")
        own = messages.loc[(messages["participant_id"] == pid) & (messages["role"] == "assistant")]
        final = versions["text"].iloc[-1]
        edits = versions.loc[versions["source"] != "final"]
        rows.append({
            "arm": people.loc[pid, "arm"],
            "n_edits": len(edits),
            "versions_per_turn": len(versions) / people.loc[pid, "n_complete_turns"],
            "assistant_share": covered_share(final, own["content"].tolist()),
            "first_edit_seconds": edits["seconds_from_chat_start"].iloc[0],
            "final_chars": len(final),
        })  # fmt: skip
    return pd.DataFrame(rows)


def test_the_sections_numbers_match_an_independent_computation(report, study):
    _, _, summary = report
    expected = independent_measures(study)
    section = summary["documents"]
    assert section["min_match_chars"] == K and section["notes"] == []
    assert section["n_with_versions"] == expected.groupby("arm").size().to_dict()
    for measure in documents.MEASURES:
        for row in section["per_arm"][measure]:
            values = expected.loc[expected["arm"] == row["arm"], measure].to_numpy(float)
            assert row["n"] == values.size
            assert row["mean"] == pytest.approx(values.mean(), rel=1e-12)
            reference = sps.bootstrap(
                (values,), np.mean, n_resamples=N_BOOT, method="percentile", random_state=7
            ).confidence_interval
            width = row["ci_high"] - row["ci_low"]
            assert row["ci_low"] == pytest.approx(reference.low, abs=0.1 * width), measure
            assert row["ci_high"] == pytest.approx(reference.high, abs=0.1 * width), measure


def test_the_known_per_arm_effects_are_recovered(report, study):
    _, _, summary = report
    truth = study.truth.documents
    for measure in documents.MEASURES:
        rows = {r["arm"]: r for r in summary["documents"]["per_arm"][measure]}
        for arm, expected in truth[measure].items():
            row = rows[arm]
            se = (row["ci_high"] - row["ci_low"]) / (2 * 1.96)
            assert abs(row["mean"] - expected) < 3.5 * se, (measure, arm, row, expected)
    share = {r["arm"]: r for r in summary["documents"]["per_arm"]["assistant_share"]}
    assert share["base"]["ci_high"] < share["collabllm"]["ci_low"]
    edits = {r["arm"]: r for r in summary["documents"]["per_arm"]["n_edits"]}
    assert edits["base"]["ci_high"] < edits["collabllm"]["ci_low"]


def test_the_html_shows_the_section_with_its_definitions(report):
    _, out, summary = report
    html = (out / "report.html").read_text()
    assert "<h2>How the document was made</h2>" in html
    assert f"at least {K} consecutive" in html and "percentile" in html
    for label in documents.MEASURES.values():
        assert f"<caption>{label.replace(chr(39), '&#39;')}</caption>" in html
    mean = summary["documents"]["per_arm"]["n_edits"][0]["mean"]
    assert f"{mean:.4g}" in html


def test_the_notebook_reproduces_the_section(report, tmp_path, monkeypatch):
    _, out, summary = report
    notebook = nbformat.read(out / "notebook.ipynb", as_version=4)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "notebook", "exec"), namespace)
    for measure in documents.MEASURES:
        got = pd.DataFrame(summary["documents"]["per_arm"][measure]).fillna(np.nan)
        pd.testing.assert_frame_equal(got, namespace["doc"]["per_arm"][measure], check_dtype=False)


def test_an_export_without_document_versions_says_so(study, tmp_path):
    # Schema 1: no document versions, and messages without finish_reason and continuation_of.
    old = {k: v for k, v in study.items() if k != "document_versions"}
    old["messages"] = old["messages"].drop(columns=["finish_reason", "continuation_of"])
    export = write_export(old, tmp_path / "export")
    assert not has_table(export, "document_versions")
    with pytest.raises(ExportError, match=r"document_versions\.parquet or document_versions\.csv"):
        load_export(export)
    summary = build_report(export, tmp_path / "out", n_boot=50)
    section = summary["documents"]
    assert "no document versions" in section["notes"][0]
    assert all(rows == [] for rows in section["per_arm"].values())
    html = (tmp_path / "out" / "report.html").read_text()
    assert "This export has no document versions" in html


def test_too_few_participants_with_versions_in_an_arm_is_said(study, tmp_path):
    people = study["participants"].set_index("participant_id")
    versions = study["document_versions"]
    proactive = people.index[people["arm"] == "proactive"][1:]
    thinned = versions.loc[~versions["participant_id"].isin(proactive)]
    export = write_export({**study, "document_versions": thinned}, tmp_path / "export")
    summary = build_report(export, tmp_path / "out", n_boot=50)
    notes = " ".join(summary["documents"]["notes"])
    assert "Too few participants with document versions" in notes and "proactive" in notes
    assert "have no document versions and are left out" in notes
    assert json.dumps(summary, allow_nan=False)


def test_replies_cut_at_the_length_limit_are_counted_per_arm():
    """p1's turn-2 reply was cut and continued (one cut reply, continued, not left cut); p2's
    only reply is cut and was not continued; failed replies are no replies."""
    _, messages, _, _ = hand_made()
    cut_again = messages["message_id"].eq(7)
    messages.loc[cut_again, "finish_reason"] = "length"
    rows = {r["arm"]: r for r in documents.truncation(messages, ["base"]).to_dict("records")}
    base = rows["base"]
    assert (base["n_replies"], base["n_cut"], base["n_continued"], base["n_left_cut"]) == (
        3,
        2,
        1,
        1,
    )
    assert base["share_cut"] == pytest.approx(2 / 3)
    low, high = stats.wilson_interval(2, 3)
    assert (base["ci_low"], base["ci_high"]) == pytest.approx((low, high))


def test_the_report_counts_cut_replies_from_the_messages(report, study):
    _, out, summary = report
    messages = study["messages"]
    roots = messages.loc[
        messages["role"].eq("assistant")
        & messages["status"].eq("complete")
        & messages["continuation_of"].isna()
        & messages["participant_id"].isin(
            study["participants"].loc[
                study["participants"]["status"].eq("completed")
                & ~study["participants"]["excluded"].fillna(False).astype(bool),
                "participant_id",
            ]
        )
    ]
    expected = roots.groupby("arm").size().to_dict()
    found = {r["arm"]: r["n_replies"] for r in summary["documents"]["truncation"]}
    assert found == {str(k): int(v) for k, v in expected.items()}
    assert "cut at the length limit" in (out / "report.html").read_text()
