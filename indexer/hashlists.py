"""Reading hash lists: CSV/TSV with a header, JSON lines, and plain one-hash-per-line text.

Each reader yields, line by line, either a parsed entry or a `LineProblem` naming the file, the
line and the reason, and never stops at the first bad line, so one pass shows everything wrong.
Whether a problem aborts the import is the caller's choice (`--skip-invalid`).

Columns (CSV/TSV header or JSON keys): `hash` (required), `algorithm` (or `--algorithm`),
`external_id` (alias `id`), `metadata` (a JSON object). Any other column is kept in the entry's
metadata, so a list's own fields (source, category, quality…) survive the import. A list whose
header names differ (NCMEC-style `MD5,ID`) is read with a column map, `hash=MD5,external_id=ID`
(`parse_column_map`): the map names, for a field of ours, the list's column that holds it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from hashsvc.errors import HashsvcError, LineProblem
from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.limits import LIMITS, check_external_id, check_metadata
from hashsvc.store import NewEntry

Format = Literal["csv", "tsv", "jsonl", "txt"]
FORMATS: tuple[Format, ...] = ("csv", "tsv", "jsonl", "txt")
_EXTENSIONS: dict[str, Format] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".json": "jsonl", ".txt": "txt", ".lst": "txt",
}
_ALIASES = {"id": "external_id", "externalid": "external_id", "external id": "external_id",
            "signal_type": "algorithm", "type": "algorithm", "signal": "hash"}
_KNOWN = {"hash", "algorithm", "external_id", "metadata"}
ColumnMap = Mapping[str, str]  # our field -> the list's column (as its header spells it)
_MAX_EXTERNAL_ID = LIMITS.external_id_chars


# A good line is its entry (a tuple, the cheapest object there is: lists have millions of lines);
# a bad one is a problem that names its file and line.
Parsed = NewEntry | LineProblem


def detect_format(path: Path, explicit: str | None = None) -> Format:
    if explicit:
        if explicit not in FORMATS:
            raise HashsvcError(f"unknown format {explicit!r} (known: {', '.join(FORMATS)})")
        return explicit
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise HashsvcError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"pass --format ({', '.join(FORMATS)})"
        )
    return fmt


def parse_column_map(text: str) -> dict[str, str]:
    """`hash=MD5,external_id=ID` as {field: column}, or an error saying what is wrong."""
    mapping: dict[str, str] = {}
    for item in text.split(","):
        field, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not column:
            raise HashsvcError(f"invalid --columns item {item.strip()!r}: expected FIELD=COLUMN, "
                               "e.g. hash=MD5,external_id=ID")
        field = _ALIASES.get(field.lower(), field.lower())
        if field not in _KNOWN:
            raise HashsvcError(f"invalid --columns field {field!r}: must be one of "
                               f"{', '.join(sorted(_KNOWN))}")
        if field in mapping:
            raise HashsvcError(f"--columns names {field!r} twice")
        mapping[field] = column
    return mapping


def read_hash_list(
    path: Path, fmt: Format, default_algorithm: str | None = None,
    columns: ColumnMap | None = None, *, data: bytes | None = None,
) -> Iterator[Parsed]:
    """Parse `path`, yielding one item per data line; `columns` renames the list's columns.
    With `data` (a list uploaded to the web console), those bytes are parsed instead, and
    `path` only names the list in messages."""
    if default_algorithm is not None:
        default_algorithm = get_algorithm(default_algorithm).name
    lines = _decoded_lines(path, data)
    if fmt == "txt":
        if columns:
            raise HashsvcError(f"{path}: a plain-text list has no columns to map; --columns is "
                               "for CSV, TSV and JSON lines")
        return _read_text(path, lines, default_algorithm)
    if fmt == "jsonl":
        return _read_jsonl(path, lines, default_algorithm, _renames(columns or {}))
    return _read_delimited(path, lines, default_algorithm, "\t" if fmt == "tsv" else ",",
                           columns or {})


def _renames(columns: ColumnMap) -> dict[str, str]:
    """{column, case-folded: our field}: header names are matched without regard to case."""
    return {column.strip().lower(): field for field, column in columns.items()}


class _LineSource:
    """Yields a file's lines as text, remembering which (1-based) physical line was read last;
    a line that is not UTF-8 becomes a problem instead of aborting the file."""

    def __init__(self, path: Path, data: bytes | None = None) -> None:
        self.path = path
        self.data = data
        self.number = 0
        self.bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        with self.path.open("rb") if self.data is None else io.BytesIO(self.data) as handle:
            for raw in handle:
                self.number += 1
                if self.number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # spreadsheet programs write a UTF-8 byte-order mark
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    self.bad[self.number] = f"not valid UTF-8 ({err.reason} at byte {err.start})"
                    yield "\n"


def _decoded_lines(path: Path, data: bytes | None = None) -> _LineSource:
    if data is None and not path.is_file():
        raise HashsvcError(f"{path}: no such file")
    return _LineSource(path, data)


def _read_text(path: Path, lines: _LineSource, algorithm: str | None) -> Iterator[Parsed]:
    if algorithm is None:
        raise HashsvcError(f"{path}: a plain-text list has no algorithm column; pass --algorithm")
    for text in lines:
        number = lines.number
        if number in lines.bad:
            yield LineProblem(str(path), number, lines.bad.pop(number))
            continue
        value = text.strip()
        if not value or value.startswith("#"):
            continue
        yield _make_entry(path, number, {"hash": value}, algorithm)


def _read_jsonl(
    path: Path, lines: _LineSource, algorithm: str | None, renames: dict[str, str]
) -> Iterator[Parsed]:
    for text in lines:
        number = lines.number
        if number in lines.bad:
            yield LineProblem(str(path), number, lines.bad.pop(number))
            continue
        if not text.strip():
            continue
        try:
            record = _json(text)
        except HashsvcError as err:
            yield LineProblem(str(path), number, err.message)
            continue
        if not isinstance(record, dict):
            yield LineProblem(str(path), number, "expected a JSON object per line")
            continue
        fields = _renamed_keys(record, renames) if renames else {
            _column(k): v for k, v in record.items()}
        yield _make_entry(path, number, fields, algorithm)


def _renamed_keys(record: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """A JSON line's keys as our fields: mapped keys first, so that a mapped key wins over an
    unmapped one that happens to mean the same field."""
    mapped = {renames[k.strip().lower()]: v for k, v in record.items()
              if k.strip().lower() in renames}
    rest = {_column(k): v for k, v in record.items() if k.strip().lower() not in renames}
    return {**rest, **mapped}


def _read_delimited(
    path: Path, lines: _LineSource, algorithm: str | None, delimiter: str, columns: ColumnMap,
) -> Iterator[Parsed]:
    reader = csv.reader(iter(lines), delimiter=delimiter, strict=True)
    try:
        raw_header = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        raise HashsvcError(f"{path}:1: unreadable header: {err}") from None
    header = _mapped_header(path, raw_header, columns)
    if "hash" not in header:
        raise HashsvcError(
            f"{path}:1: the header has no 'hash' column (found: {', '.join(header) or 'nothing'})"
        )
    if algorithm is None and "algorithm" not in header:
        raise HashsvcError(f"{path}:1: no 'algorithm' column; add one or pass --algorithm")
    # Lists with only the known columns (the common case) skip the per-row dict.
    simple = set(header) <= {"hash", "algorithm", "external_id"}
    hash_at = header.index("hash")
    algorithm_at = header.index("algorithm") if "algorithm" in header else None
    external_at = header.index("external_id") if "external_id" in header else None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield LineProblem(str(path), lines.number, f"malformed {_name(delimiter)}: {err}")
            continue
        number = lines.number
        if number in lines.bad:
            yield LineProblem(str(path), number, lines.bad.pop(number))
            continue
        if len(row) != len(header):
            if not any(cell.strip() for cell in row):
                continue
            yield LineProblem(
                str(path), number, f"expected {len(header)} columns, found {len(row)}"
            )
            continue
        if not row[hash_at].strip() and not any(cell.strip() for cell in row):
            continue  # a blank row; checked only when the hash cell is empty, to stay cheap
        if simple:
            yield _make_simple_entry(path, number, row, hash_at, algorithm_at, external_at,
                                     algorithm)
        else:
            yield _make_entry(path, number, dict(zip(header, row, strict=True)), algorithm)


def _mapped_header(path: Path, raw: list[str], columns: ColumnMap) -> list[str]:
    """The header's columns as our fields, after the column map; an error names a mapped
    column the header lacks, or a field two columns would both fill."""
    renames = _renames(columns)
    names = [name.strip() for name in raw]
    header = [renames.get(name.lower()) or _column(name) for name in names]
    found = {name.lower() for name in names}
    for field, column in columns.items():
        if column.strip().lower() not in found:
            raise HashsvcError(f"{path}:1: --columns maps {field} to {column!r}, but the header "
                               f"has no such column (found: {', '.join(names) or 'nothing'})")
        if header.count(field) > 1:
            others = [n for n, h in zip(names, header, strict=True)
                      if h == field and n.lower() != column.strip().lower()]
            raise HashsvcError(f"{path}:1: --columns maps {field} to {column!r}, but column "
                               f"{others[0]!r} also holds {field}; map or rename one of them")
    return header


def _make_simple_entry(
    path: Path, line: int, row: list[str], hash_at: int, algorithm_at: int | None,
    external_at: int | None, default_algorithm: str | None,
) -> Parsed:
    """`_make_entry` for rows of known columns only: same checks, no dict, no metadata."""
    name = row[algorithm_at].strip() if algorithm_at is not None else ""
    try:
        kind = get_algorithm(name or default_algorithm or "")
        value = row[hash_at].strip()
        if not value:
            raise HashsvcError("missing hash")
        external_id = row[external_at].strip() or None if external_at is not None else None
        if external_id is not None and len(external_id) > _MAX_EXTERNAL_ID:
            check_external_id(external_id)  # raises, with the same words as every other path
        return NewEntry(kind.name, kind.parse(value), external_id)
    except HashsvcError as err:
        if not name and not default_algorithm:
            return LineProblem(str(path), line,
                               "missing algorithm (add an 'algorithm' field or pass --algorithm)")
        return LineProblem(str(path), line, err.message)


def _make_entry(
    path: Path, line: int, record: dict[str, Any], default_algorithm: str | None
) -> Parsed:
    try:
        value = record.get("hash")
        if not isinstance(value, str) or not value.strip():
            raise HashsvcError("missing hash")
        name = record.get("algorithm") or default_algorithm
        if not isinstance(name, str):
            raise HashsvcError("missing algorithm (add an 'algorithm' field or pass --algorithm)")
        algorithm = get_algorithm(name.strip())
        hash_bytes = algorithm.parse(value.strip())
        external_id = record.get("external_id")
        if isinstance(external_id, int | float) and not isinstance(external_id, bool):
            external_id = str(external_id)
        elif external_id is not None and not isinstance(external_id, str):
            raise HashsvcError("external id must be a string or a number")
        external_id = check_external_id(external_id)
        metadata = _metadata(record)
    except HashsvcError as err:
        return LineProblem(str(path), line, err.message)
    return NewEntry(algorithm.name, hash_bytes, external_id, metadata)


def _metadata(record: dict[str, Any]) -> dict[str, Any] | None:
    metadata: dict[str, Any] = {}
    raw = record.get("metadata")
    if isinstance(raw, str) and raw.strip():
        raw = _json(raw, "metadata is ")
    if isinstance(raw, dict):
        metadata.update(raw)
    elif raw not in (None, ""):
        raise HashsvcError("metadata must be a JSON object")
    for key, value in record.items():
        if key not in _KNOWN and value not in (None, ""):
            metadata[key] = value
    return check_metadata(metadata)


def _json(text: str, subject: str = "") -> Any:
    """`text` parsed as JSON, or an error a person can act on: json.loads also raises
    RecursionError (nesting near 1,000 deep) and ValueError (an integer over Python's
    4,300-digit conversion limit), which would otherwise end the import with a traceback."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise HashsvcError(f"{subject}not valid JSON: {err.msg} (column {err.colno})") from None
    except RecursionError:
        raise HashsvcError(f"{subject}not readable: nested too deeply (metadata may nest at "
                           f"most {LIMITS.metadata_depth} levels)") from None
    except ValueError:
        raise HashsvcError(f"{subject}not readable: a number with too many digits") from None


def _column(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key.replace(" ", "_").replace("-", "_"))


def _name(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"
