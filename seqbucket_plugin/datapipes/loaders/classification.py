"""Public classification loaders: :func:`load_classification` and :func:`load_classification_splits`,
and the table they build (canonical ``text``/``label`` columns, label ids, empty-text policy)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features

from seqbucket_plugin.datapipes.loaders.arguments import (
    _EMPTY_POLICIES,
    PathLike,
    _check_label_names,
    _classification_format,
)
from seqbucket_plugin.datapipes.loaders.cache import _cached_load
from seqbucket_plugin.datapipes.loaders.labels import _encode_class_labels, _first_true, _schema_class_names
from seqbucket_plugin.datapipes.loaders.locate import _RowLocator, _where
from seqbucket_plugin.datapipes.loaders.readers import _read_classification_table, _require_columns
from seqbucket_plugin.datapipes.loaders.report import LoadReport
from seqbucket_plugin.datapipes.loaders.splits import _load_splits
from seqbucket_plugin.errors import DataFormatError, EmptyTextError, LoaderConfigError

__all__ = ["load_classification", "load_classification_splits"]


@overload
def load_classification(
    path: PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    column_names: Sequence[str] | None = None,
    format: str | None = None,
    label_names: Sequence[str] | None = None,
    empty_policy: str = "drop",
    return_report: Literal[False] = False,
    cache_dir: PathLike | None = None,
) -> Dataset: ...


@overload
def load_classification(
    path: PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    column_names: Sequence[str] | None = None,
    format: str | None = None,
    label_names: Sequence[str] | None = None,
    empty_policy: str = "drop",
    return_report: Literal[True],
    cache_dir: PathLike | None = None,
) -> tuple[Dataset, LoadReport]: ...


def load_classification(
    path: PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    column_names: Sequence[str] | None = None,
    format: str | None = None,
    label_names: Sequence[str] | None = None,
    empty_policy: str = "drop",
    return_report: bool = False,
    cache_dir: PathLike | None = None,
) -> Dataset | tuple[Dataset, LoadReport]:
    """Load a text-classification file as a memory-mapped ``Dataset``.

    Formats (``format=`` or the suffix): ``parquet`` (``.parquet``), ``csv`` (``.csv``, RFC 4180 quoting,
    quoted newlines allowed), ``tsv`` (``.tsv``, no quoting: tabs/newlines cannot occur in fields) and
    ``jsonl`` (``.jsonl``/``.json``, JSON Lines: one object per line, blank lines ignored).  CSV/TSV
    files have a header row unless ``column_names`` is given, in which case the first line is data.

    Returns a dataset with columns ``text`` (string) and ``label`` (int64 ids, a ``ClassLabel``
    feature), renamed from ``text_column``/``label_column``; other columns are kept as they are.

    Labels: integer labels are the ids themselves (names ``"0"``..``str(max)``, the file's own
    ``ClassLabel`` names for a parquet file written by ``datasets``, or ``label_names``); string labels
    map to ids through ``label_names`` or, when not given, the sorted unique labels.  Pass the
    training ``label_names`` when loading dev/test files.

    Empty or whitespace-only (or null) texts are dropped and counted (``empty_policy="drop"``, a
    warning is logged) or raise ``EmptyTextError`` (``"error"``).

    Returns ``(dataset, LoadReport)`` when ``return_report`` is True.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MissingColumnError: ``text_column`` or ``label_column`` is not in the file.
        UnknownLabelError: a label is not in ``label_names`` (or an int label is out of its range).
        EmptyTextError: an empty text and ``empty_policy="error"``.
        DataFormatError: malformed file (wrong field count, invalid JSON line, invalid UTF-8), a missing
            label, a label that is neither integer nor string (float, bool), a non-string text column,
            or a non-canonical column already named ``text``/``label``.
        LoaderConfigError: unknown ``format``/``empty_policy``, bad ``label_names``, ``column_names``
            for a format without a header.
    """
    fmt = _classification_format(path, format)
    for name, value in (("text_column", text_column), ("label_column", label_column)):
        if not isinstance(value, str):
            raise LoaderConfigError(f"{name} must be a string, got {value!r}")
    if column_names is not None and (
        isinstance(column_names, str) or not all(isinstance(c, str) for c in column_names)
    ):
        raise LoaderConfigError(f"column_names must be a sequence of strings, got {column_names!r}")
    if empty_policy not in _EMPTY_POLICIES:
        raise LoaderConfigError(f"empty_policy must be one of {_EMPTY_POLICIES}, got {empty_policy!r}")
    if column_names is not None and fmt not in ("csv", "tsv"):
        raise LoaderConfigError(f"column_names only applies to csv/tsv files, not {fmt}")
    names = _check_label_names(label_names)
    options = {
        "format": fmt,
        "text_column": text_column,
        "label_column": label_column,
        "column_names": None if column_names is None else list(column_names),
        "label_names": names,
        "empty_policy": empty_policy,
    }

    def build() -> tuple[pa.Table, Features, LoadReport]:
        return _build_classification(
            Path(path), fmt, text_column, label_column, column_names, names, empty_policy
        )

    dataset, report = _cached_load("classification", path, options, cache_dir, build)
    return (dataset, report) if return_report else dataset


@overload
def load_classification_splits(
    train_file: PathLike,
    dev_file: PathLike | None = None,
    test_file: PathLike | None = None,
    *,
    label_names: Sequence[str] | None = None,
    return_report: Literal[False] = False,
    **options: Any,
) -> DatasetDict: ...


@overload
def load_classification_splits(
    train_file: PathLike,
    dev_file: PathLike | None = None,
    test_file: PathLike | None = None,
    *,
    label_names: Sequence[str] | None = None,
    return_report: Literal[True],
    **options: Any,
) -> tuple[DatasetDict, dict[str, LoadReport]]: ...


def load_classification_splits(
    train_file: PathLike,
    dev_file: PathLike | None = None,
    test_file: PathLike | None = None,
    *,
    label_names: Sequence[str] | None = None,
    return_report: bool = False,
    **options: Any,
) -> DatasetDict | tuple[DatasetDict, dict[str, LoadReport]]:
    """Load train and optional dev/test files into a ``DatasetDict`` with keys ``train``/``dev``/``test``.

    Each file's format follows its own suffix (or ``format=``).  The dev/test splits are encoded with
    the training split's label names (or ``label_names`` when given), so a label unseen in training
    raises ``UnknownLabelError``.  ``options`` are passed to :func:`load_classification`.
    """
    files = {"train": train_file, "dev": dev_file, "test": test_file}
    return _load_splits(
        load_classification, _classification_names, files, label_names, return_report, options
    )


def _classification_names(dataset: Dataset) -> list[str]:
    return list(dataset.features["label"].names)


def _build_classification(
    path: Path,
    fmt: str,
    text_column: str,
    label_column: str,
    column_names: Sequence[str] | None,
    label_names: list[str] | None,
    empty_policy: str,
) -> tuple[pa.Table, Features, LoadReport]:
    table = _read_classification_table(path, fmt, text_column, column_names)
    _require_columns(table, (text_column, label_column), path)
    locate = _RowLocator(path, fmt, has_header=column_names is None)
    default_names = label_names or _schema_class_names(table.schema, label_column)
    ids, names = _encode_class_labels(table[label_column], default_names, label_names is not None, locate)
    text = _text_as_strings(table[text_column], locate)
    table = _canonical_columns(table, text_column, label_column, text, ids, path)
    kept, dropped = _apply_empty_policy(table, empty_policy, locate)
    features = Features.from_arrow_schema(kept.schema.remove_metadata())
    features["label"] = ClassLabel(names=names)
    report = LoadReport(
        path=os.fspath(path),
        format=fmt,
        rows_read=table.num_rows,
        rows_kept=kept.num_rows,
        dropped_empty=dropped,
    )
    return kept, features, report


def _text_as_strings(text: pa.ChunkedArray, locate: _RowLocator) -> pa.ChunkedArray:
    if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
        return text
    if pa.types.is_null(text.type):  # every text missing: the empty policy handles them
        return text.cast(pa.string())
    non_null = pc.is_valid(text)
    line, row = locate(_first_true(non_null) if pc.any(non_null).as_py() else 0)
    raise DataFormatError(f"texts must be strings, found {text.type} ({row})", locate.path, line)


def _canonical_columns(
    table: pa.Table, text_column: str, label_column: str, text: pa.ChunkedArray, ids: pa.Array, path: Path
) -> pa.Table:
    """Rename the text/label columns to ``text``/``label`` (replacing them by ``text``/``ids``)."""
    for canonical, chosen in (("text", text_column), ("label", label_column)):
        if canonical != chosen and canonical in table.column_names:
            raise DataFormatError(
                f"cannot rename {chosen!r} to {canonical!r}: the file already has a {canonical!r} column",
                path,
            )
    replacements = {text_column: ("text", text), label_column: ("label", ids)}
    names = [replacements.get(name, (name,))[0] for name in table.column_names]
    columns = [replacements[name][1] if name in replacements else table[name] for name in table.column_names]
    return pa.table(columns, names=names)


def _apply_empty_policy(table: pa.Table, policy: str, locate: _RowLocator) -> tuple[pa.Table, int]:
    """Drop (and count) rows whose text is null, empty or whitespace-only, or raise for the first one."""
    text = table["text"]
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), True)
    count = pc.sum(empty).as_py() or 0
    if count == 0:
        return table, 0
    if policy == "error":
        line, row = locate(_first_true(empty))
        raise EmptyTextError(
            f"{_where(locate.path, line)}: empty or whitespace-only text ({row}; {count} such rows); "
            'use empty_policy="drop" to skip them',
            path=locate.path, line=line,
        )
    return table.filter(pc.invert(empty)), count
