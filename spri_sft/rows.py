"""Read the rows of a local JSONL, JSON, CSV or Parquet file: the one reader for every input file.

`read_rows(path)` yields `Row(where, value)`: `where` is the place a message about that row
names after the file (`3` for line 3 of a JSONL or CSV file, `item 3` of a JSON list,
`row 3` of a Parquet file), so every error reads `FILE:WHERE: what is wrong`. Text files are
UTF-8, with or without a byte-order mark (spreadsheet programs write one at the start of a
CSV, which would otherwise become part of the first column's name). A `.json` file may hold
a list of objects, `{"key": [objects]}`, or JSON lines.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from spri_sft.errors import UserError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class Row(NamedTuple):
    where: str  # the line, item or row, as a message names it after `FILE:`
    value: Any


def read_rows(path: str | Path, what: str = "file") -> Iterator[Row]:
    """The rows of `path` in file order; `what` names the file in messages ("prompts file")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path)
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: unsupported {what} type '{suffix}' (use {', '.join(SUFFIXES)})")
    text = _read_text(path)
    if suffix == ".jsonl":
        return _jsonl_rows(path, text)
    if suffix == ".json":
        return _json_rows(path, text)
    return _csv_rows(path, text)


def read_jsonl(path: str | Path, what: str = "file", malformed_hint: str = "") -> Iterator[Row]:
    """The rows of a JSON-lines file whatever its name (e.g. records.jsonl), read a line at a time (such a
    file may be larger than memory should hold); `malformed_hint` ends the message about a malformed line
    (how such a line comes about, what to do)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    return _streamed_jsonl_rows(path, malformed_hint)


def _streamed_jsonl_rows(path: Path, malformed_hint: str) -> Iterator[Row]:
    offset = 0  # bytes read before this line, for the place of a byte that is not UTF-8
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):  # a binary file's lines end at b"\n" only, as _jsonl_rows' do
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}: not UTF-8 text (byte {offset + err.start}: {err.reason})") from None
            offset += len(raw)
            row = _jsonl_row(path, number, line.removesuffix("\n"), malformed_hint)
            if row is not None:
                yield row


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is dropped
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def _jsonl_rows(path: Path, text: str, malformed_hint: str = "") -> Iterator[Row]:
    # Lines end at "\n" only: str.splitlines would also cut at U+2028 and the like, which JSON strings may hold raw.
    for number, line in enumerate(text.split("\n"), 1):
        row = _jsonl_row(path, number, line, malformed_hint)
        if row is not None:
            yield row


def _jsonl_row(path: Path, number: int, line: str, malformed_hint: str) -> Row | None:
    """The row of line `number`; None for a blank line."""
    if not line.strip():
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        hint = f"; {malformed_hint}" if malformed_hint else ""
        raise UserError(f"{path}:{number}: malformed JSON line ({err.msg} at column {err.colno}){hint}") from None
    return Row(str(number), value)


def _json_rows(path: Path, text: str) -> Iterator[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.lineno > 1 and _first_line_is_json(text):  # JSON lines in a .json file
            yield from _jsonl_rows(path, text)
            return
        raise UserError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} style files
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects, got a JSON {type(data).__name__}")
    for index, value in enumerate(data):
        yield Row(f"item {index}", value)


def _first_line_is_json(text: str) -> bool:
    first = next((line for line in text.split("\n") if line.strip()), "")
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def _csv_rows(path: Path, text: str) -> Iterator[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for value in reader:
            if None in value:  # more cells than the header names
                raise UserError(
                    f"{path}:{reader.line_num}: {len(value[None])} more cell(s) than the header has columns"
                )
            yield Row(str(reader.line_num), value)
    except csv.Error as err:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001  (pyarrow raises several kinds for a damaged file)
        raise UserError(f"{path}: unreadable Parquet file ({type(err).__name__}: {err})") from None
    for index, value in enumerate(table.to_pylist()):
        yield Row(f"row {index}", value)
