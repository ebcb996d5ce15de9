"""Study exports: the tables of `analysis.schema`, streamed from the database into CSV or Parquet.

Rows come through server-side cursors in chunks and go out in batches, so memory stays flat
whatever the study's size. Every table is cut at the export's start time (rows created later are
left out) so the tables agree with each other while a study is live. The files, data_dictionary.md
and manifest.json appear in `out_dir` only once all are written: they are written into a
temporary sibling folder that is renamed into place.
"""

import csv
import hashlib
import hmac
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from django.conf import settings
from django.db.models import (
    BooleanField,
    Count,
    ExpressionWrapper,
    F,
    FloatField,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Coalesce, Extract, Length

from analysis import schema
from studies.models import (
    DocumentVersion,
    Event,
    FinalSurvey,
    IntentAnswer,
    Message,
    Participant,
    Study,
    TurnRating,
)
from studies.services import reentry

FORMATS = ("parquet", "csv")
BATCH_ROWS = 5000
Progress = Callable[[float, str], None]
_ZipTarget = TypeVar("_ZipTarget", Path, IO[bytes])

# Per turn: the reply's prompt tokens beyond the previous turn's prompt and completion, i.e. what
# the participant added (plus the chat template's few tokens). A turn's completion is its reply's
# plus its continuations' (later prompts hold them joined); a continuation's own prompt is not a
# turn's. The first turn has no previous prompt to subtract (its prompt is mostly the arm's
# system prompt), so it is not counted. Null when any completed reply lacks a count.
USER_TOKENS_SQL = """
SELECT CASE WHEN count(*) = 0 THEN 0 WHEN bool_and(g.counted) THEN coalesce(sum(g.growth), 0) END
FROM (
    SELECT bool_and(m.prompt_tokens IS NOT NULL AND m.completion_tokens IS NOT NULL) AS counted,
           max(m.prompt_tokens) FILTER (WHERE m.continuation_of_id IS NULL)
               - lag(max(m.prompt_tokens) FILTER (WHERE m.continuation_of_id IS NULL)
                     + sum(m.completion_tokens))
               OVER (ORDER BY m.turn_index) AS growth
    FROM studies_message m
    WHERE m.participant_id = studies_participant.id AND m.role = 'assistant'
      AND m.status = 'complete' AND m.created_at <= %s
    GROUP BY m.turn_index
) g
"""
WALL_SECONDS_SQL = (
    "EXTRACT(EPOCH FROM (studies_participant.completed_at - studies_participant.consented_at))"
    "::float8"
)


class ExportError(Exception):
    """The export cannot start (bad format, or `out_dir` is not empty)."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    row_counts: dict[str, int]
    files: list[Path]


@dataclass(frozen=True)
class _Source:
    name: str
    columns: list[schema.Column]
    rows: QuerySet  # filtered, for counting
    fields: list[Any]  # one lookup or expression per column
    order: Sequence[str]

    def values(self) -> QuerySet:
        return self.rows.order_by(*self.order).values_list(*self.fields)


def pseudonym(external_id: str) -> str:
    """The keyed hash that stands for a recruiting id in exports (stable under one key)."""
    key = settings.EXPORT_PSEUDONYM_KEY.encode()
    return "h_" + hmac.new(key, external_id.encode(), hashlib.sha256).hexdigest()[:16]


def _dump_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


_CONVERT: dict[str, Callable[[Any], Any]] = {"string": str, "json": _dump_json, "float": float}


def _population(study: Study, include_pilot: bool, prefix: str = "") -> Q:
    """Exported participants (never previews; pilots only when asked), seen from a related row."""
    q = Q(**{f"{prefix}study": study, f"{prefix}is_preview": False})
    return q if include_pilot else q & Q(**{f"{prefix}is_pilot": False})


def _per_participant(rows: QuerySet, value: Any) -> Coalesce:
    grouped = rows.filter(participant=OuterRef("pk")).order_by().values("participant")
    return Coalesce(Subquery(grouped.annotate(v=value).values("v")), 0)


def rating_checkpoints(study: Study, *, include_pilot: bool = False) -> list[int]:
    """The study's rating checkpoints: multiples of rating_every up to the last one given."""
    rated = TurnRating.objects.filter(_population(study, include_pilot, "participant__"))
    present = set(rated.order_by().values_list("after_turn", flat=True).distinct())
    every = study.rating_every
    scheduled = set(range(every, max(present) + 1, every)) if present and every else set()
    return sorted(present | scheduled)


def _participants(study: Study, checkpoints: list[int], cutoff: datetime, pilot: bool) -> _Source:
    messages = Message.objects.filter(created_at__lte=cutoff)
    user, assistant = messages.filter(role="user"), messages.filter(role="assistant")
    ratings = TurnRating.objects.filter(created_at__lte=cutoff, participant=OuterRef("pk"))
    exprs: dict[str, Any] = {
        "participant_id": "public_id",
        "recruiting_id": "external_id",
        "arm": "condition__key",
        "task_type": "document_type",
        "topic": "task__topic",
        "excluded": ExpressionWrapper(Q(excluded_at__isnull=False), output_field=BooleanField()),
        "stratum": KeyTextTransform("stratum", KeyTransform("arm", "allocation")),
        "wall_seconds": RawSQL(WALL_SECONDS_SQL, [], output_field=FloatField()),
        "n_user_turns": _per_participant(user, Count("pk")),
        "n_complete_turns": _per_participant(
            assistant.filter(status="complete", continuation_of__isnull=True), Count("pk")
        ),
        "assistant_tokens": _per_participant(assistant, Sum("completion_tokens")),
        "user_tokens": RawSQL(USER_TOKENS_SQL, [cutoff], output_field=IntegerField()),
        "user_chars": _per_participant(user, Sum(Length("content"))),
        "document_quality": "final_survey__document_quality",
        "overall_interaction": "final_survey__overall_interaction",
    }
    for k in checkpoints:
        exprs[schema.rating_column(k)] = Subquery(ratings.filter(after_turn=k).values("score")[:1])
    columns = list(schema.PARTICIPANTS.columns) + schema.rating_columns(checkpoints)
    rows = Participant.objects.filter(_population(study, pilot), entered_at__lte=cutoff)
    fields = [exprs.get(c.name, c.name) for c in columns]
    return _Source("participants", columns, rows, fields, ["id"])


def _related(
    name: str, model: Any, fields: Sequence[str], order: Sequence[str], where: Q
) -> _Source:
    """A long table: one row per related record, `fields` in the schema's column order."""
    columns = list(schema.TABLES[name].columns)
    assert len(columns) == len(fields), name
    return _Source(name, columns, model.objects.filter(where), list(fields), order)


def _sources(study: Study, checkpoints: list[int], cutoff: datetime, pilot: bool) -> list[_Source]:
    who = _population(study, pilot, "participant__") & Q(created_at__lte=cutoff)
    pid, arm = "participant__public_id", "participant__condition__key"
    return [
        _participants(study, checkpoints, cutoff, pilot),
        _related("messages", Message, [
            "id", pid, arm, "turn_index", "role", "attempt", "status", "content", "model",
            "prompt_ref", "generation_params", "prompt_tokens", "completion_tokens",
            "time_to_first_token", "duration", "error_kind", "finish_reason", "continuation_of",
            "created_at",
        ], ["id"], who),
        _related("turn_ratings", TurnRating, [
            pid, arm, "after_turn", "score", "question_version", "created_at",
        ], ["participant_id", "after_turn"], who),
        _related("final_surveys", FinalSurvey, [
            pid, arm, "document_text", "document_quality", "overall_interaction", "strengths",
            "weaknesses", "extra_answers", "created_at",
        ], ["participant_id"], who),
        _related("events", Event, [
            "id", pid, "kind", "payload", "created_at",
        ], ["id"], who),
        _related("intent_answers", IntentAnswer, [
            pid, "question_index", "question", "answer",
        ], ["participant_id", "question_index"], who),
        _related("document_versions", DocumentVersion, [
            pid, arm, "number", "source", "from_message_id", "turn_index", Length("text"), "text",
            Extract(F("created_at") - F("participant__chat_started_at"), "epoch"), "created_at",
        ], ["participant_id", "number"], who),
    ]  # fmt: skip


class _Writer(Protocol):
    def write(self, rows: list[tuple]) -> None: ...
    def close(self) -> None: ...


class _CsvWriter:
    """RFC 4180 CSV with a header; empty cell = missing, times ISO 8601, booleans true/false.

    Text cells that a spreadsheet would run as a formula get an apostrophe in front
    (`schema.csv_guard`, reversed by the analysis loader); numeric columns are left alone.
    """

    def __init__(self, path: Path, columns: list[schema.Column]) -> None:
        self._file = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow([c.name for c in columns])
        self._format: list[tuple[int, Callable[[Any], Any]]] = [
            (i, _csv_cell) for i, c in enumerate(columns) if c.dtype in ("bool", "datetime")
        ]
        self._format += [
            (i, schema.csv_guard) for i, c in enumerate(columns) if c.dtype in ("string", "json")
        ]

    def write(self, rows: list[tuple]) -> None:
        if self._format:
            rows = [_reformat(row, self._format) for row in rows]
        self._csv.writerows(rows)

    def close(self) -> None:
        self._file.close()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value.isoformat() if isinstance(value, datetime) else value


def _reformat(row: tuple, fns: Sequence[tuple[int, Callable[[Any], Any]]]) -> tuple:
    cells = list(row)
    for i, fn in fns:
        if cells[i] is not None:
            cells[i] = fn(cells[i])
    return tuple(cells)


class _ParquetWriter:
    """One row group per batch, with an explicit Arrow schema from the column types."""

    def __init__(self, path: Path, columns: list[schema.Column]) -> None:
        import pyarrow as pa  # imported here: only exports need it, not every web process
        import pyarrow.parquet as pq

        types = {
            "string": pa.string(),
            "json": pa.string(),
            "int": pa.int64(),
            "float": pa.float64(),
            "bool": pa.bool_(),
            "datetime": pa.timestamp("us", tz="UTC"),
        }
        self._pa = pa
        self._schema = pa.schema([pa.field(c.name, types[c.dtype]) for c in columns])
        self._writer = pq.ParquetWriter(path, self._schema)

    def write(self, rows: list[tuple]) -> None:
        pa = self._pa
        cols: list[Sequence[Any]] = list(zip(*rows, strict=True)) or [[] for _ in self._schema]
        arrays = [pa.array(col, type=f.type) for col, f in zip(cols, self._schema, strict=True)]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self._schema))

    def close(self) -> None:
        self._writer.close()


def _open(fmt: str, path: Path, columns: list[schema.Column]) -> _Writer:
    return _ParquetWriter(path, columns) if fmt == "parquet" else _CsvWriter(path, columns)


def _payload(value: Any) -> str:
    # Platform tokens rebind a browser to a participant: never exported, raw ids or not.
    return _dump_json(reentry.without_tokens(value))


def _rows(source: _Source, raw_ids: bool) -> Iterator[tuple]:
    """The source's rows with every cell in its schema type (UUIDs and JSON become text)."""
    names = [c.name for c in source.columns]
    fns = [(i, _CONVERT[c.dtype]) for i, c in enumerate(source.columns) if c.dtype in _CONVERT]
    if source.name == "participants" and not raw_ids:
        fns.append((names.index("recruiting_id"), pseudonym))
    if source.name == "events":
        fns = [(i, _payload if names[i] == "payload" else fn) for i, fn in fns]
    for row in source.values().iterator(chunk_size=BATCH_ROWS):
        yield _reformat(row, fns)


def _write_table(
    source: _Source, folder: Path, fmt: str, raw_ids: bool, tick: Callable[[int], None]
) -> tuple[Path, int]:
    path = folder / f"{source.name}.{fmt}"
    writer = _open(fmt, path, source.columns)
    written, batch = 0, []
    try:
        for row in _rows(source, raw_ids):
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                writer.write(batch)
                written, batch = written + len(batch), []
                tick(BATCH_ROWS)
        if batch or not written:
            writer.write(batch)
            written += len(batch)
            tick(len(batch))
    finally:
        writer.close()
    return path, written


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse a path that is a file, or a non-empty folder unless `force`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir} is not empty (use --force to replace it).")


def move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temporary folder to `out_dir`, replacing what was there."""
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(old / out_dir.name)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)


def export_study(
    study: Study,
    out_dir: Path,
    *,
    fmt: str = "parquet",
    include_pilot: bool = False,
    raw_ids: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Write the study's tables, data_dictionary.md and manifest.json into `out_dir`."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    out_dir = Path(out_dir).absolute()
    check_out_dir(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    cutoff = datetime.now(UTC)
    checkpoints = rating_checkpoints(study, include_pilot=include_pilot)
    sources = _sources(study, checkpoints, cutoff, include_pilot)
    tick = _ticker(progress, total=sum(s.rows.count() for s in sources))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        counts: dict[str, int] = {}
        names: list[str] = []
        for source in sources:
            path, counts[source.name] = _write_table(source, tmp, fmt, raw_ids, tick)
            names.append(path.name)
        (tmp / "data_dictionary.md").write_text(schema.data_dictionary(checkpoints))
        names.append("data_dictionary.md")
        manifest = _manifest(study, cutoff, fmt, include_pilot, raw_ids, checkpoints, counts)
        manifest["sha256"] = {name: _sha256(tmp / name) for name in names}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        progress(1.0, "export written")
    files = [out_dir / name for name in [*names, "manifest.json"]]
    return ExportResult(path=out_dir, row_counts=counts, files=files)


def _ticker(progress: Progress | None, *, total: int) -> Callable[[int], None]:
    done = 0

    def tick(rows: int) -> None:
        nonlocal done
        done += rows
        if progress:
            progress(min(done / total, 1.0) if total else 1.0, f"exported {done} of {total} rows")

    return tick


def _manifest(
    study: Study,
    cutoff: datetime,
    fmt: str,
    include_pilot: bool,
    raw_ids: bool,
    checkpoints: list[int],
    counts: dict[str, int],
) -> dict[str, Any]:
    people = Participant.objects.filter(_population(study, include_pilot), entered_at__lte=cutoff)
    versions = people.order_by("config_version").values_list("config_version", flat=True)
    return {
        "study": study.slug,
        "title": study.title,
        "exported_at": cutoff.isoformat(),
        "format": fmt,
        "schema_version": schema.SCHEMA_VERSION,
        "config_versions": list(versions.distinct()),
        "include_pilot": include_pilot,
        "raw_ids": raw_ids,
        "rating_checkpoints": checkpoints,
        "row_counts": counts,
    } | ({schema.CSV_GUARD_KEY: schema.CSV_GUARD} if fmt == "csv" else {})


def zip_folder(folder: Path, target: _ZipTarget) -> _ZipTarget:
    """Zip a folder's files, under the folder's name, into a path or an open binary file."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, Path(folder.name) / path.relative_to(folder))
    return target
