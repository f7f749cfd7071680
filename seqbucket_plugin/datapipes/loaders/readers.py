"""Readers of classification and prediction-input files into :class:`pyarrow.Table`: parquet, CSV,
TSV and JSON Lines (pyarrow's readers, guarded against the inputs that crash them), and plain text.

A failure is located (file and line) by :mod:`~seqbucket_plugin.datapipes.loaders.locate`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from seqbucket_plugin.datapipes.loaders.locate import (
    _JSON_STRING,
    _delimited_error,
    _first_invalid_utf8_line,
    _json_line_error,
    _json_record_line,
    _jsonl_error,
)
from seqbucket_plugin.errors import DataFormatError, MissingColumnError

_JSON_BLOCK_BYTES = 1 << 24  # pyarrow's JSON block; grown to the longest line when needed
_JSON_MAX_DEPTH = 500  # deeper nesting crashes pyarrow's JSON reader (stack overflow) well before 10^4
_CSV_BLOCK_BYTES = 1 << 20  # pyarrow's default; grown when one record does not fit
_MAX_BLOCK_BYTES = 2**31 - 1  # pyarrow block sizes are int32


def _read_classification_table(
    path: Path, fmt: str, text_column: str, column_names: Sequence[str] | None
) -> pa.Table:
    if fmt == "parquet":
        try:
            table = pq.read_table(path, memory_map=True)
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise
        except (pa.ArrowException, OSError) as exc:  # a corrupt footer raises a plain OSError
            raise DataFormatError(f"cannot read parquet file: {exc}", path) from exc
    elif fmt == "jsonl":
        table = _read_jsonl(path)
    else:
        table = _read_delimited(path, fmt, text_column, column_names)
    _check_utf8(table, path, fmt)
    return table


def _check_utf8(table: pa.Table, path: Path, fmt: str) -> None:
    """The parquet and JSON readers do not validate UTF-8 in strings; a full validation does (in C)."""
    try:
        table.validate(full=True)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:  # the latter: invalid UTF-8 in a column name
        line = None if fmt == "parquet" else _first_invalid_utf8_line(path)
        raise DataFormatError(
            f"invalid data ({exc})" if line is None else "invalid UTF-8", path, line
        ) from exc


def _read_delimited(path: Path, fmt: str, text_column: str, column_names: Sequence[str] | None) -> pa.Table:
    """CSV (quoted fields may span lines) or TSV (no quoting); the text column is always read as strings."""
    delimiter = "," if fmt == "csv" else "\t"
    block_size = _CSV_BLOCK_BYTES
    while True:
        try:
            table = pa_csv.read_csv(
                path,
                read_options=pa_csv.ReadOptions(
                    column_names=None if column_names is None else list(column_names),
                    block_size=block_size,
                ),
                parse_options=pa_csv.ParseOptions(
                    delimiter=delimiter,
                    quote_char='"' if fmt == "csv" else False,
                    newlines_in_values=fmt == "csv",
                ),
                convert_options=pa_csv.ConvertOptions(column_types={text_column: pa.string()}),
            )
            break
        except pa.ArrowInvalid as exc:
            # A record (or the header) longer than a block: read again with blocks that fit it.
            if "straddl" in str(exc) and block_size < _MAX_BLOCK_BYTES:
                block_size = min(block_size * 8, _MAX_BLOCK_BYTES)
                continue
            raise _delimited_error(path, fmt, column_names, exc) from exc
        except UnicodeDecodeError as exc:  # invalid UTF-8 in the header row (decoded in Python)
            raise DataFormatError("invalid UTF-8", path, _first_invalid_utf8_line(path)) from exc
    if any(pa.types.is_binary(t) for t in table.schema.types):  # pyarrow's fallback for invalid UTF-8
        raise DataFormatError("invalid UTF-8", path, _first_invalid_utf8_line(path))
    return table


def _read_jsonl(path: Path) -> pa.Table:
    records, longest = _scan_jsonl(path)
    block_size = max(_JSON_BLOCK_BYTES, longest + 1)
    if block_size > _MAX_BLOCK_BYTES:
        raise DataFormatError(f"a JSON line is longer than {_MAX_BLOCK_BYTES} bytes", path)
    try:
        table = pa_json.read_json(path, read_options=pa_json.ReadOptions(block_size=block_size))
    except pa.ArrowInvalid as exc:
        raise _jsonl_error(path, exc) from exc
    if table.num_rows != records:  # pyarrow also splits records that share a line: not JSON Lines
        raise _jsonl_error(
            path, f"pyarrow read {table.num_rows} records from {records} non-blank lines; "
            "JSON Lines needs exactly one object per line"
        )
    return table


def _scan_jsonl(path: Path) -> tuple[int, int]:
    """One cheap pass before pyarrow: (records, longest line in bytes).

    pyarrow's JSON reader crashes the interpreter (segfault) on a first record ``null`` and on very
    deep nesting, reads several records from one line, and needs a block larger than the longest line.
    So every non-blank line must start with ``{`` and nest at most ``_JSON_MAX_DEPTH`` deep (counted
    exactly only on lines with that many brackets); otherwise a located DataFormatError is raised.
    """
    records = longest = 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            line = _json_record_line(raw, line_no)
            if not line:
                continue
            records += 1
            longest = max(longest, len(raw))
            if line[:1] != b"{":
                raise _json_line_error(line, path, line_no) or DataFormatError(
                    "expected a JSON object per line (JSON Lines)", path, line_no
                )
            if line.count(b"{") + line.count(b"[") > _JSON_MAX_DEPTH and _json_depth(line) > _JSON_MAX_DEPTH:
                raise DataFormatError(f"JSON nested deeper than {_JSON_MAX_DEPTH} levels", path, line_no)
    if records == 0:
        raise DataFormatError("file has no JSON records", path)
    return records, longest


def _json_depth(line: bytes) -> int:
    """The deepest bracket nesting of a JSON text, brackets inside strings not counted."""
    codes = np.frombuffer(_JSON_STRING.sub(b'""', line), dtype=np.uint8)
    steps = np.isin(codes, (ord("{"), ord("["))).astype(np.int64) - np.isin(codes, (ord("}"), ord("]")))
    return int(np.cumsum(steps).max(initial=0))


def _require_columns(table: pa.Table, columns: Sequence[str], path: Path) -> None:
    names = table.column_names
    for column in columns:
        if column not in names:
            raise MissingColumnError(column, names, os.fspath(path), path=path)
    repeated = sorted({column for column in columns if names.count(column) > 1})
    if repeated:
        raise DataFormatError(f"column name(s) {repeated} appear more than once among {names}", path)


def _plain_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return [line.rstrip("\r\n") for line in handle if line.strip()]
    except UnicodeDecodeError as exc:
        raise DataFormatError("invalid UTF-8", path, _first_invalid_utf8_line(path)) from exc
