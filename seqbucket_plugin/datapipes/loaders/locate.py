"""Locating a failed read: which file line a pyarrow error, a record index or a bad value is on.

pyarrow's CSV and JSON readers do not say which line they failed on (their row numbers are per block),
and Arrow tables do not remember lines.  Everything here rescans the file to find the line, and runs
only once a read or a check has failed; a successful load never calls it.  Two exceptions, both cheap:
:func:`_json_record_line` (what counts as a JSON Lines record) is shared with the reader's pre-scan, and a
:class:`_RowLocator` is created on every classification load but scans only when called."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from seqbucket_plugin.errors import DataFormatError

_JSON_WHITESPACE = b" \t\r\n"  # what JSON (and pyarrow's reader) treats as blank
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_CSV_FIELD_LIMIT = 2**31 - 1


def _json_record_line(raw: bytes, line_no: int) -> bytes:
    """A line without JSON whitespace (and, on line 1, without a UTF-8 BOM); empty when blank."""
    if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.strip(_JSON_WHITESPACE)


def _delimited_error(
    path: Path, fmt: str, column_names: Sequence[str] | None, exc: Exception
) -> DataFormatError:
    """Locate a pyarrow CSV failure (whose messages carry no line number) by rescanning the file."""
    bad_utf8 = _first_invalid_utf8_line(path)
    if bad_utf8 is not None:
        return DataFormatError("invalid UTF-8", path, bad_utf8)
    expected = None if column_names is None else len(column_names)
    for line, fields in _iter_delimited_records(path, fmt):
        if expected is None:
            expected = len(fields)
        elif len(fields) != expected:
            return DataFormatError(f"expected {expected} fields, found {len(fields)}", path, line)
    return DataFormatError(f"cannot parse {fmt.upper()} file: {exc}", path)


def _iter_delimited_records(path: Path, fmt: str) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) of each non-empty record, as pyarrow splits them (error path only)."""
    old_limit = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            if fmt == "csv":
                reader = csv.reader(handle, delimiter=",", quotechar='"', doublequote=True)
            else:
                reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            start = 1
            for fields in reader:
                if fields:
                    yield start, fields
                start = reader.line_num + 1
    finally:
        csv.field_size_limit(old_limit)


def _json_line_error(line: bytes, path: Path, line_no: int) -> DataFormatError | None:
    """Why one JSON Lines record is invalid (as far as Python's json can tell), or None if it is fine."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return DataFormatError("invalid UTF-8", path, line_no)
    problem: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys) and not problem:
            duplicate = next(key for key in keys if keys.count(key) > 1)
            problem.append(f"key {duplicate!r} appears twice in one object")
        return dict(items)

    def number(literal: str) -> float:
        value = float(literal)
        if math.isinf(value) and not problem:
            problem.append(f"number {literal[:30]} is out of the float64 range")
        return value

    try:
        record = json.loads(text, object_pairs_hook=pairs, parse_float=number)
    except json.JSONDecodeError as err:
        return DataFormatError(f"invalid JSON ({err.msg}, column {err.colno})", path, line_no)
    except RecursionError:
        return DataFormatError("JSON nested too deeply", path, line_no)
    if not isinstance(record, dict):
        return DataFormatError(
            f"expected a JSON object per line (JSON Lines), found {type(record).__name__}", path, line_no
        )
    if not problem and _JSON_STRING.search(line) and re.search(rb"\\u[dD][89a-fA-F]", line):
        try:  # lone UTF-16 surrogates (\ud800) are valid for Python's json but not for pyarrow
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            problem.append("string with an unpaired UTF-16 surrogate escape")
    return DataFormatError(problem[0], path, line_no) if problem else None


def _jsonl_error(path: Path, exc: Exception | str) -> DataFormatError:
    """Find the line that made pyarrow's JSON reader fail (its row numbers are per block)."""
    first_kind: dict[str, tuple[str, int]] = {}
    records = 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            line = _json_record_line(raw, line_no)
            if not line:
                continue
            error = _json_line_error(line, path, line_no)
            if error is not None:
                return error
            record = json.loads(line)
            records += 1
            for key, value in record.items():
                if value is None:
                    continue
                kind = _json_kind(value)
                seen = first_kind.setdefault(key, (kind, line_no))
                if seen[0] != kind:
                    return DataFormatError(
                        f"field {key!r} is a {kind} here but a {seen[0]} on line {seen[1]}", path, line_no
                    )
    if records == 0:
        return DataFormatError("file has no JSON records", path)
    return DataFormatError(f"cannot parse JSON Lines file: {exc}", path)


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def _first_invalid_utf8_line(path: Path) -> int | None:
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line_no
    return None


class _RowLocator:
    """Maps a 0-based record index to ``(line or None, "row i")``; scans the file only when asked (errors)."""

    def __init__(self, path: Path, fmt: str, has_header: bool):
        self.path, self.fmt, self.has_header = path, fmt, has_header

    def __call__(self, row: int) -> tuple[int | None, str]:
        return self._line_of(row), f"row {row}"

    def _line_of(self, row: int) -> int | None:
        if self.fmt == "parquet":
            return None
        if self.fmt == "jsonl":
            lines = _iter_json_record_lines(self.path)
        else:
            lines = (line for line, _ in _iter_delimited_records(self.path, self.fmt))
        skip = row + (1 if self.fmt != "jsonl" and self.has_header else 0)
        return next((line for i, line in enumerate(lines) if i == skip), None)


def _iter_json_record_lines(path: Path) -> Iterator[int]:
    """Line numbers of the non-blank lines of a JSON Lines file (the records pyarrow reads)."""
    with open(path, "rb") as handle:
        yield from (line_no for line_no, raw in enumerate(handle, 1) if _json_record_line(raw, line_no))


def _where(path: Path, line: int | None) -> str:
    return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
