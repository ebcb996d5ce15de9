"""Exports: the schema's tables as CSV and Parquet, with the data dictionary and the manifest."""

import csv
import hashlib
import json
from dataclasses import dataclass

import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse

from analysis import schema
from studies.models import Event, Participant
from studies.services import exports, outcomes, reentry, turns
from studies.services import participants as svc
from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat, new_key

pytestmark = pytest.mark.django_db

SYSTEM_TOKENS, USER_TOKENS, REPLY_TOKENS = 20, 3, 10


@dataclass
class World:
    study: object
    done: list[Participant]
    excluded: Participant
    quitter: Participant
    pilot: Participant
    preview: Participant


def chat(participant, n_turns, scores=None, *, missing_count_at=None):
    """`n_turns` turns whose prompts grow by USER_TOKENS beyond the previous prompt and reply."""
    scores = scores or {}
    for t in range(1, n_turns + 1):
        started = turns.turn_start(participant_id=participant.pk, text=f"turn {t}!", key=new_key())
        outcome = turns.turn_complete(
            message_id=started.assistant_message.pk, text=f"reply {t}", model="m",
            finish_reason="stop",
            prompt_tokens=SYSTEM_TOKENS + USER_TOKENS + (t - 1) * (USER_TOKENS + REPLY_TOKENS),
            completion_tokens=None if t == missing_count_at else REPLY_TOKENS,
            time_to_first_token=0.1, duration=0.3,
        )  # fmt: skip
        if outcome.rating_due_after:
            turns.rating_record(participant_id=participant.pk, after_turn=t, score=scores.get(t, 5))


def finish(participant, quality=7, overall=8):
    svc.participant_finish_chat(participant_id=participant.pk)
    answers = svc.FinalAnswers("My document", quality, overall, "clear", "slow")
    svc.participant_submit_final(participant_id=participant.pk, answers=answers)


def completed(study, external_id, *, scores, quality=7, **fields):
    participant = advance_to_chat(
        ParticipantFactory(study=study, external_id=external_id, **fields)
    )
    chat(participant, 4, scores)
    finish(participant, quality=quality)
    participant.refresh_from_db()
    return participant


def build_world(study=None) -> World:
    """Three completed, one excluded, one who quit after 2 turns, a pilot and a preview."""
    study = study or three_arm_study(rating_every=2, min_turns=4)
    done = [
        completed(study, f"prolific:p{i}", scores={2: 3 + i, 4: 5 + i}, quality=4 + i)
        for i in range(3)
    ]
    excluded = completed(study, "prolific:fast", scores={2: 9, 4: 9})
    outcomes.participant_exclude(participant_id=excluded.pk, reason="too fast")
    quitter = advance_to_chat(ParticipantFactory(study=study, external_id="prolific:quit"))
    chat(quitter, 2, {2: 6}, missing_count_at=2)
    outcomes.participant_end(participant_id=quitter.pk, outcome="abandoned")
    pilot = completed(study, "pilot:1", scores={2: 2, 4: 2}, is_pilot=True)
    preview = advance_to_chat(
        ParticipantFactory(study=study, external_id="preview:1", is_preview=True)
    )
    chat(preview, 2, {2: 1})
    for p in [excluded, quitter, preview]:
        p.refresh_from_db()
    return World(study, done, excluded, quitter, pilot, preview)


@pytest.fixture
def world():
    return build_world()


def read_table(folder, name, fmt):
    """Rows as dicts of text (CSV) or Python values (Parquet), and the column names."""
    if fmt == "csv":
        with (folder / f"{name}.csv").open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return list(reader), reader.fieldnames
    table = pq.read_table(folder / f"{name}.parquet")
    return table.to_pylist(), table.column_names


def by_id(rows):
    return {str(r["participant_id"]): r for r in rows}


def expected_columns(name, checkpoints=(2, 4)):
    extra = schema.rating_columns(list(checkpoints)) if name == "participants" else []
    return schema.TABLES[name].names + [c.name for c in extra]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_every_table_has_the_schema_columns_in_order(world, tmp_path, fmt):
    result = exports.export_study(world.study, tmp_path / "out", fmt=fmt)
    for name in schema.TABLES:
        _, columns = read_table(result.path, name, fmt)
        assert columns == expected_columns(name), name


def test_parquet_columns_have_the_schema_types(world, tmp_path):
    result = exports.export_study(world.study, tmp_path / "out")
    arrow = {
        "string": "string", "json": "string", "int": "int64", "float": "double", "bool": "bool",
        "datetime": "timestamp[us, tz=UTC]",
    }  # fmt: skip
    for name, table in schema.TABLES.items():
        types = {f.name: str(f.type) for f in pq.read_schema(result.path / f"{name}.parquet")}
        assert {c.name: types[c.name] for c in table.columns} == {
            c.name: arrow[c.dtype] for c in table.columns
        }


def test_participant_rows_carry_arm_task_times_turns_tokens_survey_and_ratings(world, tmp_path):
    rows = by_id(read_table(exports.export_study(world.study, tmp_path / "o").path,
                            "participants", "parquet")[0])  # fmt: skip
    first = world.done[0]
    row = rows[str(first.public_id)]
    assert row["arm"] == first.condition.key and row["topic"] == first.task.topic
    assert row["task_type"] == first.document_type and row["status"] == "completed"
    assert row["stratum"] == first.allocation["arm"]["stratum"]
    assert row["wall_seconds"] == pytest.approx(first.wall_seconds, abs=1e-3)
    assert row["active_seconds"] == pytest.approx(first.active_seconds)
    assert (row["n_user_turns"], row["n_complete_turns"]) == (4, 4)
    assert row["assistant_tokens"] == 4 * REPLY_TOKENS
    assert row["user_tokens"] == 3 * USER_TOKENS  # turns 2-4: the first has no previous prompt
    assert row["user_chars"] == 4 * len("turn 1!")
    assert (row["document_quality"], row["overall_interaction"]) == (4.0, 8.0)
    assert (row["rating_turn_2"], row["rating_turn_4"]) == (3.0, 5.0)
    assert row["excluded"] is False and row["exclusion_reason"] == ""


def test_ended_and_excluded_participants_keep_their_rows_with_gaps_as_missing(world, tmp_path):
    rows = by_id(read_table(exports.export_study(world.study, tmp_path / "o").path,
                            "participants", "parquet")[0])  # fmt: skip
    excluded = rows[str(world.excluded.public_id)]
    assert excluded["excluded"] is True and excluded["exclusion_reason"] == "too fast"
    quitter = rows[str(world.quitter.public_id)]
    assert quitter["status"] == "abandoned" and quitter["wall_seconds"] is None
    assert quitter["rating_turn_2"] == 6.0 and quitter["rating_turn_4"] is None
    assert quitter["document_quality"] is None
    assert quitter["user_tokens"] is None  # a reply without its token count
    assert quitter["assistant_tokens"] == REPLY_TOKENS


def test_long_tables_hold_every_message_rating_survey_event_and_answer(world, tmp_path):
    folder = exports.export_study(world.study, tmp_path / "o", fmt="csv").path
    messages, _ = read_table(folder, "messages", "csv")
    assert len(messages) == 4 * 8 + 2 * 2  # 4 completed x 4 turns x 2 roles, the quitter's 2
    assert [int(m["message_id"]) for m in messages] == sorted(
        int(m["message_id"]) for m in messages
    )
    first = world.done[0]
    mine = [m for m in messages if m["participant_id"] == str(first.public_id)]
    assert [(m["turn_index"], m["role"]) for m in mine[:2]] == [("1", "user"), ("1", "assistant")]
    assert (
        mine[1]["completion_tokens"] == str(REPLY_TOKENS) and mine[1]["arm"] == first.condition.key
    )
    assert json.loads(mine[1]["generation_params"]) == first.condition.generation_params
    ratings, _ = read_table(folder, "turn_ratings", "csv")
    assert {
        (r["after_turn"], r["score"])
        for r in ratings
        if r["participant_id"] == str(first.public_id)
    } == {("2", "3"), ("4", "5")}
    surveys, _ = read_table(folder, "final_surveys", "csv")
    assert len(surveys) == 4 and {s["document_quality"] for s in surveys} >= {"4", "5", "6"}
    answers, _ = read_table(folder, "intent_answers", "csv")
    assert len(answers) == 5 * 2 and answers[0]["question"] == "Who reads it?"
    events, _ = read_table(folder, "events", "csv")
    kinds = {e["kind"] for e in events if e["participant_id"] == str(first.public_id)}
    assert {"study.turn.started", "study.participant.completed"} <= kinds
    assert all(e["participant_id"] for e in events)


def test_csv_cells_are_iso_times_lowercase_booleans_and_empty_for_missing(world, tmp_path):
    folder = exports.export_study(world.study, tmp_path / "o", fmt="csv").path
    rows = by_id(read_table(folder, "participants", "csv")[0])
    quitter = rows[str(world.quitter.public_id)]
    assert quitter["excluded"] == "false" and quitter["completed_at"] == ""
    assert quitter["consented_at"] == world.quitter.consented_at.isoformat()
    assert rows[str(world.excluded.public_id)]["excluded"] == "true"


def test_recruiting_ids_are_keyed_hashes_stable_across_exports(world, tmp_path):
    first = by_id(read_table(exports.export_study(world.study, tmp_path / "a", fmt="csv").path,
                             "participants", "csv")[0])  # fmt: skip
    again = by_id(read_table(exports.export_study(world.study, tmp_path / "b").path,
                             "participants", "parquet")[0])  # fmt: skip
    for pid, row in first.items():
        assert row["recruiting_id"].startswith("h_") and len(row["recruiting_id"]) == 18
        assert row["recruiting_id"] == again[pid]["recruiting_id"]
    raw = {p.external_id for p in Participant.objects.all()}
    assert not raw & {row["recruiting_id"] for row in first.values()}
    assert first[str(world.done[0].public_id)]["recruiting_id"] == exports.pseudonym("prolific:p0")


def test_the_pseudonym_depends_on_the_key(settings):
    before = exports.pseudonym("prolific:p0")
    settings.EXPORT_PSEUDONYM_KEY = "another-key"
    assert exports.pseudonym("prolific:p0") != before


def test_raw_ids_are_exported_only_when_asked(world, tmp_path):
    folder = exports.export_study(world.study, tmp_path / "o", raw_ids=True).path
    rows = by_id(read_table(folder, "participants", "parquet")[0])
    assert rows[str(world.done[0].public_id)]["recruiting_id"] == "prolific:p0"
    assert json.loads((folder / "manifest.json").read_text())["raw_ids"] is True


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("raw_ids", [False, True])
def test_platform_tokens_never_leave_in_an_export(tmp_path, fmt, raw_ids):
    # A SESSION_ID or assignmentId rebinds a browser to the participant: a credential, not data.
    study = three_arm_study()
    tokens = {"SESSION_ID": "sess-token-1", "assignmentId": "assign-token-1"}
    participant = advance_to_chat(ParticipantFactory(
        study=study, external_id="prolific:p1", recruiting_source="prolific",
        recruiting_params={"PROLIFIC_PID": "p1", **tokens},
        attempts=[{"session_id": tokens["SESSION_ID"], "at": "2026-01-01T00:00:00+00:00"}],
    ))  # fmt: skip
    reentry.participant_record_attempt(participant=participant, params={"SESSION_ID": "sess-2"})
    Event.objects.create(  # as a re-entry was recorded before payloads left the token out
        study=study, participant=participant, kind="study.participant.reentered",
        payload={"session_id": "sess-token-3", "attempt": 3, "params": tokens},
    )  # fmt: skip
    folder = exports.export_study(study, tmp_path / "o", fmt=fmt, raw_ids=raw_ids).path
    cells = json.dumps([read_table(folder, name, fmt)[0] for name in schema.TABLES], default=str)
    for token in [*tokens.values(), "sess-2", "sess-token-3"]:
        assert token not in cells
    events = read_table(folder, "events", fmt)[0]
    reentered = [e for e in events if e["kind"] == "study.participant.reentered"]
    assert sorted(json.loads(e["payload"])["attempt"] for e in reentered) == [2, 3]


@pytest.mark.parametrize("include_pilot", [False, True])
def test_previews_are_never_exported_and_pilots_only_with_the_flag(world, tmp_path, include_pilot):
    folder = exports.export_study(
        world.study, tmp_path / "o", fmt="csv", include_pilot=include_pilot
    ).path
    preview, pilot = str(world.preview.public_id), str(world.pilot.public_id)
    for name in schema.TABLES:
        ids = {r["participant_id"] for r in read_table(folder, name, "csv")[0]}
        assert preview not in ids, name
        if name in ("participants", "messages", "turn_ratings", "final_surveys", "events"):
            assert (pilot in ids) == include_pilot, name
    rows = by_id(read_table(folder, "participants", "csv")[0])
    assert len(rows) == 5 + include_pilot
    assert all(r["is_pilot"] == ("true" if r["participant_id"] == pilot else "false")
               for r in rows.values())  # fmt: skip


def test_the_manifest_counts_rows_and_hashes_every_file(world, tmp_path):
    result = exports.export_study(world.study, tmp_path / "o", fmt="csv")
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["study"] == world.study.slug and manifest["format"] == "csv"
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    assert manifest["config_versions"] == [1] and manifest["include_pilot"] is False
    assert manifest["rating_checkpoints"] == [2, 4]
    assert manifest["row_counts"] == result.row_counts
    for name in schema.TABLES:
        rows, _ = read_table(result.path, name, "csv")
        assert manifest["row_counts"][name] == len(rows), name
    assert set(manifest["sha256"]) == {f"{n}.csv" for n in schema.TABLES} | {"data_dictionary.md"}
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((result.path / name).read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in result.path.iterdir()) == sorted(p.name for p in result.files)


def test_the_data_dictionary_lists_every_exported_column(world, tmp_path):
    folder = exports.export_study(world.study, tmp_path / "o", fmt="csv").path
    dictionary = (folder / "data_dictionary.md").read_text()
    assert dictionary == schema.data_dictionary([2, 4])
    for name in schema.TABLES:
        section = dictionary.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for column in read_table(folder, name, "csv")[1]:
            assert f"| `{column}` |" in section, (name, column)


def test_rating_columns_follow_the_schedule_up_to_the_last_rating_given(tmp_path):
    study = three_arm_study(rating_every=2, min_turns=6)
    participant = advance_to_chat(ParticipantFactory(study=study))
    chat(participant, 6, {2: 4, 4: 5, 6: 6})
    assert exports.rating_checkpoints(study) == [2, 4, 6]
    study.rating_every = 3  # an edit after the fact: the ratings given still get their columns
    assert exports.rating_checkpoints(study) == [2, 3, 4, 6]
    _, columns = read_table(exports.export_study(study, tmp_path / "o").path,
                            "participants", "parquet")  # fmt: skip
    assert columns[-4:] == ["rating_turn_2", "rating_turn_3", "rating_turn_4", "rating_turn_6"]


def test_an_empty_study_exports_empty_tables_with_their_headers(tmp_path):
    study = three_arm_study()
    for fmt in ["csv", "parquet"]:
        result = exports.export_study(study, tmp_path / fmt, fmt=fmt)
        assert set(result.row_counts.values()) == {0}
        rows, columns = read_table(result.path, "participants", fmt)
        assert rows == [] and columns == schema.PARTICIPANTS.names


def test_it_refuses_a_folder_that_is_not_empty_unless_forced(world, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(exports.ExportError, match="not empty"):
        exports.export_study(world.study, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    exports.export_study(world.study, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


def test_a_failed_export_leaves_nothing_behind(world, tmp_path, monkeypatch):
    real = exports._write_table

    def fail_on_events(source, *args):
        if source.name == "events":
            raise RuntimeError("disk full")
        return real(source, *args)

    monkeypatch.setattr(exports, "_write_table", fail_on_events)
    with pytest.raises(RuntimeError, match="disk full"):
        exports.export_study(world.study, tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


def test_tables_are_read_through_chunked_cursors_and_written_in_batches(
    world, tmp_path, monkeypatch
):
    cursors = []
    real = connection.chunked_cursor
    monkeypatch.setattr(connection, "chunked_cursor", lambda: cursors.append(1) or real())
    monkeypatch.setattr(exports, "BATCH_ROWS", 7)
    result = exports.export_study(world.study, tmp_path / "o")
    assert len(cursors) == len(schema.TABLES)
    messages = pq.ParquetFile(result.path / "messages.parquet")
    assert messages.metadata.num_rows == 36 and messages.num_row_groups == 6


def test_progress_reaches_one(world, tmp_path):
    seen = []
    exports.export_study(world.study, tmp_path / "o", progress=lambda f, step: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 2


def test_export_study_command_writes_the_files(world, tmp_path, capsys):
    out = tmp_path / "o"
    call_command("export_study", world.study.slug, "--out", str(out), "--format", "csv")
    assert (out / "participants.csv").exists() and (out / "data_dictionary.md").exists()
    assert "participants 5" in capsys.readouterr().out
    with pytest.raises(CommandError, match="not empty"):
        call_command("export_study", world.study.slug, "--out", str(out))
    call_command("export_study", world.study.slug, "--out", str(out), "--force", "--raw-ids",
                 "--include-pilot")  # fmt: skip
    assert (out / "participants.parquet").exists() and not (out / "participants.csv").exists()
    with pytest.raises(CommandError, match="no study"):
        call_command("export_study", "nope", "--out", str(tmp_path / "x"))


def export_action(client, study, **form):
    data = {"action": "export_data", "_selected_action": [study.pk], **form}
    return client.post(reverse("admin:studies_study_changelist"), data)


def zip_members(response):
    import io
    import zipfile

    content = b"".join(response.streaming_content)
    archive = zipfile.ZipFile(io.BytesIO(content))
    return {name: archive.read(name) for name in archive.namelist()}


def test_the_export_action_asks_for_the_options_then_downloads_a_zip(researcher, world):
    page = export_action(researcher, world.study).content.decode()
    assert 'name="raw_ids"' in page and 'value="export_data"' in page
    response = export_action(researcher, world.study, export="1", fmt="csv")
    assert response["Content-Disposition"].startswith("attachment")
    assert f"{world.study.slug}-export.zip" in response["Content-Disposition"]
    members = zip_members(response)
    folder = f"{world.study.slug}-export/"
    assert {folder + n for n in ["participants.csv", "manifest.json", "data_dictionary.md"]} <= set(
        members
    )
    participants = members[folder + "participants.csv"].decode()
    assert "prolific:p0" not in participants and str(world.pilot.public_id) not in participants


def test_raw_ids_in_the_admin_export_need_an_explicit_confirmation(researcher, world):
    refused = export_action(researcher, world.study, export="1", fmt="csv", raw_ids="on")
    assert "need the confirmation" in refused.content.decode()
    response = export_action(
        researcher, world.study, export="1", fmt="csv", raw_ids="on", confirm_raw_ids="on"
    )
    members = zip_members(response)
    assert "prolific:p0" in members[f"{world.study.slug}-export/participants.csv"].decode()


def test_the_export_action_takes_one_study_at_a_time(researcher, world):
    other = three_arm_study()
    response = researcher.post(
        reverse("admin:studies_study_changelist"),
        {"action": "export_data", "_selected_action": [world.study.pk, other.pk], "export": "1"},
        follow=True,
    )
    assert "Export one study at a time." in response.content.decode()


# Participant text is stripped on arrival; replies keep leading tabs and carriage returns.
FORMULAS = ['=HYPERLINK("http://x.test","y")', "+1+2", "-2+3", "@SUM(A1)", "'=1", "'tis plain"]
REPLY_PREFIXES = ["\t", "\r", "-"]


@pytest.fixture
def formulas(settings):
    """One participant whose messages are formula-like text; one reply with a negative duration."""
    settings.CHAT_TURNS_PER_MINUTE = len(FORMULAS)
    study = three_arm_study(rating_every=0, min_turns=1)
    participant = advance_to_chat(ParticipantFactory(study=study, external_id="prolific:f"))
    for i, text in enumerate(FORMULAS):
        started = turns.turn_start(participant_id=participant.pk, text=text, key=new_key())
        turns.turn_complete(
            message_id=started.assistant_message.pk, model="=m",
            text=REPLY_PREFIXES[i % len(REPLY_PREFIXES)] + "reply",
            finish_reason="stop", prompt_tokens=1, completion_tokens=1,
            time_to_first_token=0.1, duration=-1.5,
        )  # fmt: skip
    return study


def test_csv_cells_that_a_spreadsheet_would_run_get_an_apostrophe(formulas, tmp_path):
    folder = exports.export_study(formulas, tmp_path / "o", fmt="csv").path
    rows, _ = read_table(folder, "messages", "csv")
    user = [r["content"] for r in rows if r["role"] == "user"]
    assert user == ["'" + t for t in FORMULAS[:-1]] + ["'tis plain"]
    replies = [r["content"] for r in rows if r["role"] == "assistant"]
    assert replies == ["'" + REPLY_PREFIXES[i % 3] + "reply" for i in range(len(FORMULAS))]
    assert {r["model"] for r in rows if r["role"] == "assistant"} == {"'=m"}
    assert {r["duration"] for r in rows if r["role"] == "assistant"} == {"-1.5"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest[schema.CSV_GUARD_KEY] == schema.CSV_GUARD
    assert "apostrophe" in (folder / "data_dictionary.md").read_text()


def test_parquet_keeps_the_true_text(formulas, tmp_path):
    folder = exports.export_study(formulas, tmp_path / "o", fmt="parquet").path
    rows, _ = read_table(folder, "messages", "parquet")
    assert [r["content"] for r in rows if r["role"] == "user"] == FORMULAS
    assert schema.CSV_GUARD_KEY not in json.loads((folder / "manifest.json").read_text())


def test_the_analysis_loader_reads_guarded_csv_as_the_true_text(formulas, tmp_path):
    from analysis.io import load_export

    csv_export = load_export(exports.export_study(formulas, tmp_path / "c", fmt="csv").path)
    parquet = load_export(exports.export_study(formulas, tmp_path / "p", fmt="parquet").path)
    for name in ["messages", "participants", "events"]:
        ours, theirs = getattr(csv_export, name), getattr(parquet, name)
        text = [c.name for c in schema.TABLES[name].columns if c.dtype in ("string", "json")]
        assert ours[text].fillna("").values.tolist() == theirs[text].fillna("").values.tolist()
    user = csv_export.messages[csv_export.messages["role"] == "user"]
    assert user["content"].tolist() == FORMULAS
    assert csv_export.messages["duration"].dropna().eq(-1.5).all()
