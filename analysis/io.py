"""Read and write an export directory: one `<table>.parquet` or `<table>.csv` per table of
analysis/schema.py, plus `data_dictionary.md` and an optional `manifest.json`.

Columns come back with the schema's types whichever format was written: strings as pandas `str`,
ints as nullable `Int64`, floats (and every `rating_turn_<k>`) as float64, bools as nullable
`boolean`, datetimes as UTC, JSON columns as text. Empty cells and empty strings are missing
values in both formats. The apostrophe a platform CSV export puts before formula-like text
(analysis.schema.csv_guard) is taken off again, so CSV and Parquet load the same values.
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.schema import (
    CSV_GUARD,
    CSV_GUARD_KEY,
    PARTICIPANTS,
    RATING_COLUMN_PREFIX,
    SCHEMA_VERSION,
    TABLES,
    Table,
    csv_unguard,
    data_dictionary,
)

# Columns an export may leave out: is_pilot is only written when pilots were included.
# Columns an older export (or one without pilots) may lack; they load as missing values.
OPTIONAL_COLUMNS: dict[str, frozenset[str]] = {
    "participants": frozenset({"is_pilot", "consent_training", "consent_sharing"})
}
PANDAS_DTYPES = {
    "string": "str",
    "json": "str",
    "int": "Int64",
    "float": "float64",
    "bool": "boolean",
}
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


class ExportError(Exception):
    """The directory is not a readable export (missing files or columns, unreadable values)."""


@dataclass
class Export:
    participants: pd.DataFrame
    messages: pd.DataFrame
    turn_ratings: pd.DataFrame
    final_surveys: pd.DataFrame
    events: pd.DataFrame
    intent_answers: pd.DataFrame
    document_versions: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)


def checkpoints(participants: pd.DataFrame) -> list[int]:
    """The rating checkpoints (after_turn values) that have a rating_turn_<k> column, sorted."""
    found = []
    for name in participants.columns:
        suffix = str(name).removeprefix(RATING_COLUMN_PREFIX)
        if str(name).startswith(RATING_COLUMN_PREFIX) and suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


def _column_types(table: Table, frame_columns: Iterable[str]) -> dict[str, str]:
    types = {c.name: c.dtype for c in table.columns}
    if table is PARTICIPANTS:
        types.update({c: "float" for c in frame_columns if str(c).startswith(RATING_COLUMN_PREFIX)})
    return types


def _to_bool(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    text = values.astype("str").str.strip().str.lower()
    result = pd.Series(pd.NA, index=values.index, dtype="boolean")
    result[text.isin(_TRUE)] = True
    result[text.isin(_FALSE)] = False
    return result


def _cast(frame: pd.DataFrame, table: Table, source: str) -> pd.DataFrame:
    types = _column_types(table, frame.columns)
    for name in frame.columns:
        kind = types.get(str(name))
        if kind is None:
            continue
        try:
            if kind == "datetime":
                frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
            elif kind == "bool":
                frame[name] = _to_bool(frame[name])
            elif kind in ("int", "float"):
                numbers = pd.to_numeric(frame[name], errors="raise")
                frame[name] = numbers.astype(PANDAS_DTYPES[kind])
            else:
                # An empty string is a missing value in both formats (CSV cannot tell them apart).
                text = frame[name].astype("str")
                frame[name] = text.mask(text == "")
        except (ValueError, TypeError) as exc:
            raise ExportError(f"{source}: column {name!r} is not {kind}: {exc}") from exc
    return frame


def empty_table(name: str) -> pd.DataFrame:
    """An empty frame with the schema's columns and types, for a table that was not loaded."""
    table = TABLES[name]
    return pd.DataFrame(
        {
            c.name: pd.Series(
                dtype="datetime64[us, UTC]" if c.dtype == "datetime" else PANDAS_DTYPES[c.dtype]
            )
            for c in table.columns
        }
    )


def _unguard(frame: pd.DataFrame, table: Table) -> None:
    """Take off the apostrophes a guarded CSV export put before formula-like text cells."""
    for column in table.columns:
        if column.dtype in ("string", "json") and column.name in frame.columns:
            frame[column.name] = frame[column.name].map(csv_unguard, na_action="ignore")


def _read_table(directory: Path, name: str, guarded: bool) -> pd.DataFrame:
    table = TABLES[name]
    parquet, csv = directory / f"{name}.parquet", directory / f"{name}.csv"
    try:
        if parquet.exists():
            source, frame = parquet.name, pd.read_parquet(parquet)
        else:
            # Empty cells are missing; "NA" or "None" typed by a participant stay text.
            source = csv.name
            frame = pd.read_csv(
                csv, dtype=str, keep_default_na=False, na_values=[""], low_memory=False
            )
            if guarded:
                _unguard(frame, table)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{name}: cannot read {source}: {exc}") from exc
    missing = [
        c for c in table.names if c not in frame.columns and c not in OPTIONAL_COLUMNS.get(name, ())
    ]
    if missing:
        raise ExportError(f"{source} lacks required column(s): {', '.join(missing)}")
    if name == "participants" and "is_pilot" not in frame.columns:
        frame["is_pilot"] = False
    return _cast(frame, table, source)


def has_table(path: str | Path, name: str) -> bool:
    """Whether the export directory holds this table (as Parquet or CSV)."""
    directory = Path(path)
    return (directory / f"{name}.parquet").exists() or (directory / f"{name}.csv").exists()


def load_export(path: str | Path, *, tables: Iterable[str] | None = None) -> Export:
    """Read an export directory; only `tables` (default: all) are read, the rest are empty."""
    directory = Path(path)
    if not directory.is_dir():
        raise ExportError(f"{directory} is not a directory")
    wanted = list(TABLES) if tables is None else list(tables)
    unknown = [t for t in wanted if t not in TABLES]
    if unknown:
        raise ExportError(f"unknown table(s): {', '.join(unknown)}")
    absent = [
        f"{t}.parquet or {t}.csv"
        for t in wanted
        if not (directory / f"{t}.parquet").exists() and not (directory / f"{t}.csv").exists()
    ]
    if absent:
        raise ExportError(f"{directory} is not a complete export; missing: {', '.join(absent)}")
    manifest: dict[str, Any] = {}
    manifest_path = directory / "manifest.json"
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise ExportError(f"manifest.json is not valid JSON: {exc}") from exc
    # Only the platform's CSV exports guard formula-like cells; other CSVs are read as they are.
    guarded = isinstance(manifest, dict) and manifest.get(CSV_GUARD_KEY) == CSV_GUARD
    frames = {
        name: _read_table(directory, name, guarded) if name in wanted else empty_table(name)
        for name in TABLES
    }
    return Export(**frames, manifest=manifest)


def _ordered(frame: pd.DataFrame, table: Table) -> pd.DataFrame:
    first = [c for c in table.names if c in frame.columns]
    ratings = sorted(
        (c for c in frame.columns if str(c).startswith(RATING_COLUMN_PREFIX) and c not in first),
        key=lambda c: int(str(c).removeprefix(RATING_COLUMN_PREFIX)),
    )
    rest = [c for c in frame.columns if c not in first and c not in ratings]
    return frame[first + ratings + rest]


def write_export(
    tables: Mapping[str, pd.DataFrame], path: str | Path, fmt: str = "parquet"
) -> Path:
    """Write tables as an export directory (for tests, benchmarks and synthetic studies)."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', not {fmt!r}")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, frame in tables.items():
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}")
        ordered = _ordered(frame, TABLES[name])
        if fmt == "parquet":
            ordered.to_parquet(directory / f"{name}.parquet", index=False)
        else:
            ordered.to_csv(
                directory / f"{name}.csv", index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ"
            )
        rows[name] = len(frame)
    found = checkpoints(tables["participants"]) if "participants" in tables else []
    (directory / "data_dictionary.md").write_text(data_dictionary(found))
    manifest = {"schema_version": SCHEMA_VERSION, "format": fmt, "rows": rows, "checkpoints": found}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory
