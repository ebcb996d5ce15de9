"""Reading and writing export directories (analysis.io): types, formats and clear errors."""

import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.io import ExportError, load_export, write_export
from analysis.schema import FORMULA_TRIGGERS, SCHEMA_VERSION, TABLES, csv_guard, csv_unguard
from analysis.synthetic import synthetic_study


@pytest.fixture(scope="module")
def study():
    return synthetic_study(n_per_arm=20, seed=3, exclusion_rate=0.2, messages=True)


def _without_empty_strings(frame: pd.DataFrame) -> pd.DataFrame:
    text = frame.select_dtypes(include="str").columns
    return frame.assign(**{c: frame[c].mask(frame[c] == "") for c in text})


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_every_table_round_trips_with_the_schema_types(study, tmp_path, fmt):
    export = load_export(write_export(study, tmp_path / "export", fmt=fmt))
    for name in TABLES:
        expected = _without_empty_strings(study[name].reset_index(drop=True))
        pd.testing.assert_frame_equal(getattr(export, name), expected, obj=f"{fmt} {name}")


def test_datetimes_come_back_in_utc_and_ratings_as_floats(study, tmp_path):
    export = load_export(write_export(study, tmp_path / "export", fmt="csv"))
    assert str(export.participants["consented_at"].dt.tz) == "UTC"
    assert export.participants["rating_turn_6"].dtype == "float64"
    assert export.participants["excluded"].dtype == "boolean"
    assert export.participants["n_user_turns"].dtype == "Int64"


def test_text_that_looks_like_a_missing_marker_stays_text(study, tmp_path):
    answers = study["intent_answers"].copy()
    answers.loc[0, "answer"] = "NA"
    answers.loc[1, "answer"] = "None"
    write_export({**study, "intent_answers": answers}, tmp_path / "export", fmt="csv")
    loaded = load_export(tmp_path / "export", tables=["intent_answers"]).intent_answers
    assert loaded["answer"].tolist()[:2] == ["NA", "None"]


def test_only_the_requested_tables_are_read(study, tmp_path):
    write_export(study, tmp_path / "export")
    (tmp_path / "export" / "messages.parquet").write_bytes(b"not parquet")
    export = load_export(tmp_path / "export", tables=["participants", "turn_ratings"])
    assert len(export.participants) == 60
    assert export.messages.empty
    assert list(export.messages.columns) == TABLES["messages"].names


def test_a_missing_column_is_named_in_the_error(study, tmp_path):
    broken = study["participants"].drop(columns=["arm", "wall_seconds"])
    write_export({**study, "participants": broken}, tmp_path / "export", fmt="csv")
    with pytest.raises(ExportError, match=r"participants\.csv lacks .*arm, wall_seconds"):
        load_export(tmp_path / "export")


def test_a_missing_table_file_is_named_in_the_error(study, tmp_path):
    write_export({"participants": study["participants"]}, tmp_path / "export")
    with pytest.raises(ExportError, match=r"missing: turn_ratings\.parquet or turn_ratings\.csv"):
        load_export(tmp_path / "export", tables=["participants", "turn_ratings"])


def test_a_directory_that_does_not_exist_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="is not a directory"):
        load_export(tmp_path / "nowhere")


def test_a_value_of_the_wrong_type_is_named_in_the_error(study, tmp_path):
    people = study["participants"].astype({"n_user_turns": "str"})
    people.loc[0, "n_user_turns"] = "many"
    write_export({**study, "participants": people}, tmp_path / "export", fmt="csv")
    with pytest.raises(ExportError, match="column 'n_user_turns' is not int"):
        load_export(tmp_path / "export", tables=["participants"])


def test_an_export_without_the_pilot_column_has_no_pilots(study, tmp_path):
    people = study["participants"].drop(columns=["is_pilot"])
    write_export({**study, "participants": people}, tmp_path / "export")
    loaded = load_export(tmp_path / "export", tables=["participants"]).participants
    assert not loaded["is_pilot"].any()


def test_writing_an_export_adds_its_data_dictionary_and_manifest(study, tmp_path):
    directory = write_export(study, tmp_path / "export", fmt="csv")
    assert "`rating_turn_9` | float" in (directory / "data_dictionary.md").read_text()
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["rows"]["participants"] == 60
    assert load_export(directory).manifest == manifest


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_the_csv_formula_guard_is_reversible_and_leaves_no_trigger_in_front(text):
    guarded = csv_guard(text)
    assert csv_unguard(guarded) == text
    assert not guarded.startswith(FORMULA_TRIGGERS)


def test_a_csv_written_without_the_guard_keeps_its_apostrophes(study, tmp_path):
    answers = study["intent_answers"].copy()
    answers.loc[0, "answer"] = "'=kept"
    write_export({**study, "intent_answers": answers}, tmp_path / "export", fmt="csv")
    loaded = load_export(tmp_path / "export", tables=["intent_answers"]).intent_answers
    assert loaded["answer"].tolist()[0] == "'=kept"
