"""Local file loaders: classification tables and CoNLL tagging files as ``datasets.Dataset``.

Every loader returns an Arrow-backed :class:`datasets.Dataset` that is **memory-mapped from a cache
file**, so large files do not live in RAM and later ``Dataset.map``/``filter`` results are cached next
to it (``datasets`` keys them by the dataset fingerprint, which follows the cache file).

How a load works (the same for every format):

1. *read* the file into a :class:`pyarrow.Table` -- pyarrow's parquet / CSV / JSON readers for the
   classification formats, a one-pass line parser that builds flat column lists for the CoNLL formats;
2. *encode* labels / tags to ids and apply the empty-text policy with vectorised ``pyarrow.compute``;
3. *store* the table as an Arrow IPC stream in the cache directory (``<HF_DATASETS_CACHE>/seqbucket_plugin/
   loaders`` unless ``cache_dir`` is given) and return ``Dataset.from_file`` on it.  The cache file name
   is a digest of the resolved path, the file's size and mtime, the loader options and a format
   version, so a later identical call skips steps 1-2 (``LoadReport.from_cache`` is then True) and an
   edited file is read again.  A file rewritten with the same size within one mtime tick is not
   detected -- the same trade-off ``datasets`` makes.

Why not ``Dataset.from_dict`` / ``from_generator`` for the CoNLL formats: ``from_dict`` gives an
in-memory dataset without cache files, so later ``map`` results are not cached on disk.
``from_generator`` does write a fingerprinted cache, but it fingerprints by hashing its
``gen_kwargs`` (which would have to carry the file signature anyway), encodes every example through
``Features.encode_example`` in Python (a dict lookup per token), needs the tag set before the single
pass, and wraps our located :class:`DataFormatError` in a ``DatasetGenerationError``.  Writing the
parsed columns ourselves keeps one pass, vectorised encoding and exact error locations.

Errors (all derive from :class:`~seqbucket_plugin.errors.SeqBucketError` except ``FileNotFoundError``):

* :class:`DataFormatError` -- malformed file: wrong field count, invalid JSON or UTF-8, bad CoNLL-U id,
  missing / wrongly typed label; ``.path`` and ``.line`` (1-based, None for parquet) locate it.
* :class:`MissingColumnError` -- a requested column is absent; lists the columns that exist.
* :class:`UnknownLabelError` -- a label / tag not in a fixed ``label_names``; names it, file and line.
* :class:`EmptyTextError` -- empty text with ``empty_policy="error"``; names file and line.
* :class:`LoaderConfigError` -- an invalid argument (unknown format or policy, bad ``label_names``).

Row numbers in messages are 0-based indices into the file's records (before any row is dropped);
line numbers are 1-based physical lines, the header line included.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from datasets import ClassLabel, Dataset, DatasetDict, Features

from seqbucket_plugin.errors import (
    DataFormatError,
    EmptyTextError,
    MissingColumnError,
    SeqBucketError,
    UnknownLabelError,
)

__all__ = [
    "LoadReport",
    "LoaderConfigError",
    "load_classification",
    "load_classification_splits",
    "load_conll_columns",
    "load_conllu",
    "load_sentences",
    "load_tagging",
    "load_tagging_splits",
    "load_texts",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

CLASSIFICATION_SUFFIXES = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}
_EMPTY_POLICIES = ("drop", "error")
_CONLLU_TAG_FIELDS = {"upos": 3, "xpos": 4}
_CACHE_FORMAT_VERSION = 1
_REPORT_METADATA_KEY = b"seqbucket_plugin.load_report"
_WRITE_BATCH_ROWS = 1000
_JSON_BLOCK_BYTES = 1 << 24  # pyarrow's JSON block; grown to the longest line when needed
_JSON_WHITESPACE = b" \t\r\n"  # what JSON (and pyarrow's reader) treats as blank
_JSON_MAX_DEPTH = 500  # deeper nesting crashes pyarrow's JSON reader (stack overflow) well before 10^4
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_CSV_BLOCK_BYTES = 1 << 20  # pyarrow's default; grown when one record does not fit
_MAX_BLOCK_BYTES = 2**31 - 1  # pyarrow block sizes are int32
_CSV_FIELD_LIMIT = 2**31 - 1
_MAX_IMPLICIT_CLASSES = 1 << 20  # integer labels above this need label_names (names "0".."max" are built)


class LoaderConfigError(SeqBucketError, ValueError):
    """A loader argument is invalid: unknown format or policy, malformed ``label_names``, bad column index."""


@dataclass(frozen=True)
class LoadReport:
    """What a load read and dropped.

    ``rows_read``/``rows_kept`` count examples: table rows for classification, sentences for tagging.
    ``dropped_empty`` counts empty / whitespace-only texts (classification) or sentences without any
    token (tagging).  ``tokens`` is the number of tokens kept (tagging only).  ``skipped_lines`` counts
    lines that are not tokens: ``comment``/``multiword``/``empty_node`` (CoNLL-U), ``docstart`` (columns).
    ``from_cache`` is True when the dataset came from the loader cache without re-reading the file.
    """

    path: str
    format: str
    rows_read: int
    rows_kept: int
    dropped_empty: int = 0
    tokens: int | None = None
    skipped_lines: dict[str, int] = field(default_factory=dict)
    from_cache: bool = False


# --------------------------------------------------------------------------------------------------
# Public API: classification
# --------------------------------------------------------------------------------------------------



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


# --------------------------------------------------------------------------------------------------
# Public API: tagging
# --------------------------------------------------------------------------------------------------



@overload
def load_conllu(
    path: PathLike,
    *,
    tag: str = "upos",
    label_names: Sequence[str] | None = None,
    return_report: Literal[False] = False,
    cache_dir: PathLike | None = None,
) -> Dataset: ...


@overload
def load_conllu(
    path: PathLike,
    *,
    tag: str = "upos",
    label_names: Sequence[str] | None = None,
    return_report: Literal[True],
    cache_dir: PathLike | None = None,
) -> tuple[Dataset, LoadReport]: ...


def load_conllu(
    path: PathLike,
    *,
    tag: str = "upos",
    label_names: Sequence[str] | None = None,
    return_report: bool = False,
    cache_dir: PathLike | None = None,
) -> Dataset | tuple[Dataset, LoadReport]:
    """Load a CoNLL-U file as a memory-mapped ``Dataset`` of sentences.

    Columns: ``tokens`` (list of FORM strings), ``tags`` (list of ids, ``Sequence(ClassLabel)``) from
    UPOS (``tag="upos"``, column 4) or XPOS (``tag="xpos"``, column 5), and ``sentence_id`` (string,
    None for sentences without one) when any sentence has a ``# sent_id = ...`` comment.

    Comment lines (``#``), multi-word token ranges (``3-4``) and empty nodes (``8.1``) are skipped and
    counted; a blank line ends a sentence, and so does the end of the file.  An unspecified tag ``_``
    (common for XPOS in some treebanks) is kept as the literal tag ``"_"``: dropping it would misalign
    tokens and tags, and a tagger has to predict something for those tokens.  Tag names are the sorted
    unique tags unless ``label_names`` is given.  Blocks of comments without tokens are dropped and
    counted in ``LoadReport.dropped_empty`` (with a warning).

    Raises:
        DataFormatError: a token line without exactly 10 tab-separated fields, an id that is not an
            integer / range / decimal, an id out of sequence, an empty FORM or tag, invalid UTF-8.
        UnknownLabelError: a tag not in ``label_names``.
        LoaderConfigError: ``tag`` not ``"upos"``/``"xpos"``, bad ``label_names``.
    """
    if tag not in _CONLLU_TAG_FIELDS:
        raise LoaderConfigError(f"tag must be one of {sorted(_CONLLU_TAG_FIELDS)}, got {tag!r}")
    names = _check_label_names(label_names)
    options = {"tag": tag, "label_names": names}

    def build() -> tuple[pa.Table, Features, LoadReport]:
        parsed = _parse_conllu(Path(path), _CONLLU_TAG_FIELDS[tag])
        return _build_tagging(Path(path), "conllu", parsed, names)

    dataset, report = _cached_load("conllu", path, options, cache_dir, build)
    return (dataset, report) if return_report else dataset



@overload
def load_conll_columns(
    path: PathLike,
    *,
    token_column: int = 0,
    tag_column: int = -1,
    label_names: Sequence[str] | None = None,
    return_report: Literal[False] = False,
    cache_dir: PathLike | None = None,
) -> Dataset: ...


@overload
def load_conll_columns(
    path: PathLike,
    *,
    token_column: int = 0,
    tag_column: int = -1,
    label_names: Sequence[str] | None = None,
    return_report: Literal[True],
    cache_dir: PathLike | None = None,
) -> tuple[Dataset, LoadReport]: ...


def load_conll_columns(
    path: PathLike,
    *,
    token_column: int = 0,
    tag_column: int = -1,
    label_names: Sequence[str] | None = None,
    return_report: bool = False,
    cache_dir: PathLike | None = None,
) -> Dataset | tuple[Dataset, LoadReport]:
    """Load a whitespace-separated CoNLL-2003 style file (one token per line) as a ``Dataset``.

    Columns: ``tokens`` (list of strings from field ``token_column``) and ``tags`` (list of ids,
    ``Sequence(ClassLabel)``, from field ``tag_column``; negative indices count from the end of each
    line).  Fields are split on any whitespace.  ``-DOCSTART-`` lines are skipped and counted; a blank
    line ends a sentence.  Tag names are the sorted unique tags unless ``label_names`` is given.

    Raises:
        DataFormatError: a line with too few fields for ``token_column``/``tag_column`` (or where both
            would be the same field), invalid UTF-8.
        UnknownLabelError: a tag not in ``label_names``.
        LoaderConfigError: bad ``label_names``.
    """
    names = _check_label_names(label_names)
    min_fields = _min_fields(token_column, tag_column)
    options = {"token_column": token_column, "tag_column": tag_column, "label_names": names}

    def build() -> tuple[pa.Table, Features, LoadReport]:
        parsed = _parse_conll_columns(Path(path), token_column, tag_column, min_fields)
        return _build_tagging(Path(path), "conll", parsed, names)

    dataset, report = _cached_load("conll", path, options, cache_dir, build)
    return (dataset, report) if return_report else dataset



@overload
def load_tagging(
    path: PathLike,
    *,
    format: str | None = None,
    tag: str | None = None,
    token_column: int = 0,
    tag_column: int | None = None,
    label_names: Sequence[str] | None = None,
    return_report: Literal[False] = False,
    cache_dir: PathLike | None = None,
) -> Dataset: ...


@overload
def load_tagging(
    path: PathLike,
    *,
    format: str | None = None,
    tag: str | None = None,
    token_column: int = 0,
    tag_column: int | None = None,
    label_names: Sequence[str] | None = None,
    return_report: Literal[True],
    cache_dir: PathLike | None = None,
) -> tuple[Dataset, LoadReport]: ...


def load_tagging(
    path: PathLike,
    *,
    format: str | None = None,
    tag: str | None = None,
    token_column: int = 0,
    tag_column: int | None = None,
    label_names: Sequence[str] | None = None,
    return_report: bool = False,
    cache_dir: PathLike | None = None,
) -> Dataset | tuple[Dataset, LoadReport]:
    """Load a tagging file: ``.conllu`` (or ``format="conllu"``) with :func:`load_conllu` and ``tag``
    (default ``"upos"``), anything else (or ``format="conll"``) with :func:`load_conll_columns` and
    the column indices (default ``tag_column=-1``). Same columns, report and errors as those functions.

    Raises:
        LoaderConfigError: ``tag`` given for a column file, or ``tag_column`` for a CoNLL-U file
            (each applies only to its own format; it would be ignored).
    """
    fmt = format or ("conllu" if Path(path).suffix.lower() == ".conllu" else "conll")
    common = {"label_names": label_names, "return_report": return_report, "cache_dir": cache_dir}
    if fmt == "conllu":
        if tag_column is not None:
            raise LoaderConfigError(f"{os.fspath(path)} is a CoNLL-U file: it takes tag='upos' or 'xpos', not "
                                    f"tag_column={tag_column!r} (a column index of CoNLL column files)")
        return load_conllu(path, tag="upos" if tag is None else tag, **common)
    if fmt == "conll":
        if tag is not None:
            raise LoaderConfigError(f"{os.fspath(path)} is a CoNLL column file: it takes an integer tag_column "
                                    f"(negative counts from the end), not tag={tag!r} (a CoNLL-U field)")
        return load_conll_columns(path, token_column=token_column, tag_column=-1 if tag_column is None else tag_column,
                                  **common)
    raise LoaderConfigError(f"tagging format must be 'conllu' or 'conll', got {fmt!r}")



@overload
def load_tagging_splits(
    train_file: PathLike,
    dev_file: PathLike | None = None,
    test_file: PathLike | None = None,
    *,
    label_names: Sequence[str] | None = None,
    return_report: Literal[False] = False,
    **options: Any,
) -> DatasetDict: ...


@overload
def load_tagging_splits(
    train_file: PathLike,
    dev_file: PathLike | None = None,
    test_file: PathLike | None = None,
    *,
    label_names: Sequence[str] | None = None,
    return_report: Literal[True],
    **options: Any,
) -> tuple[DatasetDict, dict[str, LoadReport]]: ...


def load_tagging_splits(
    train_file: PathLike,
    dev_file: PathLike | None = None,
    test_file: PathLike | None = None,
    *,
    label_names: Sequence[str] | None = None,
    return_report: bool = False,
    **options: Any,
) -> DatasetDict | tuple[DatasetDict, dict[str, LoadReport]]:
    """Load train and optional dev/test tagging files into a ``DatasetDict`` (``train``/``dev``/``test``).

    Dev/test tags are encoded with the training tag names (or ``label_names``), so a tag unseen in
    training raises ``UnknownLabelError``.  ``options`` are passed to :func:`load_tagging`.
    """
    files = {"train": train_file, "dev": dev_file, "test": test_file}
    return _load_splits(load_tagging, _tagging_names, files, label_names, return_report, options)


# --------------------------------------------------------------------------------------------------
# Public API: inputs to predict (no labels, nothing cached)
# --------------------------------------------------------------------------------------------------


def load_texts(
    path: PathLike,
    *,
    text_column: str = "text",
    column_names: Sequence[str] | None = None,
    format: str | None = None,
) -> list[str]:
    """The texts of a file to classify, one per record, in file order, by the readers of
    :func:`load_classification` (no label column needed, nothing written to the cache).

    ``.parquet``/``.csv``/``.tsv``/``.jsonl`` (or ``format=``): the ``text_column`` of each record
    (CSV/TSV: a header row unless ``column_names``); a null text is ``""``. Any other suffix:
    plain text, one text per non-blank line.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MissingColumnError: ``text_column`` is not in the file.
        DataFormatError: a malformed file or a text column that is not strings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {os.fspath(path)}")
    if format is None and path.suffix.lower() not in CLASSIFICATION_SUFFIXES:
        return _plain_lines(path)
    fmt = _classification_format(path, format)
    if not isinstance(text_column, str):
        raise LoaderConfigError(f"text_column must be a string, got {text_column!r}")
    if column_names is not None and fmt not in ("csv", "tsv"):
        raise LoaderConfigError(f"column_names only applies to csv/tsv files, not {fmt}")
    table = _read_classification_table(path, fmt, text_column, column_names)
    _require_columns(table, (text_column,), path)
    text = _text_as_strings(table[text_column], _RowLocator(path, fmt, has_header=column_names is None))
    return [t if t is not None else "" for t in text.to_pylist()]


def load_sentences(path: PathLike) -> list[list[str]]:
    """The sentences of a file to tag, in file order, nothing written to the cache.

    ``.conllu``: the FORM column of each sentence, parsed as :func:`load_conllu` does (comments,
    multi-word ranges and empty nodes skipped); ``.jsonl``: a ``tokens`` list of strings per line;
    any other suffix: plain text, one sentence per non-blank line, split on whitespace.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MissingColumnError: a ``.jsonl`` file without ``tokens``.
        DataFormatError: a malformed file (the message names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {os.fspath(path)}")
    suffix = path.suffix.lower()
    if suffix == ".conllu":
        parsed = _parse_conllu(path, _CONLLU_TAG_FIELDS["upos"])
        bounds = parsed.offsets
        return [parsed.tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if suffix in (".jsonl", ".json"):
        table = _read_jsonl(path)
        _require_columns(table, ("tokens",), path)
        sentences = table["tokens"].to_pylist()
        for row, words in enumerate(sentences):
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                line = next((n for i, n in enumerate(_iter_json_record_lines(path)) if i == row), None)
                raise DataFormatError("'tokens' must be a list of strings", path, line)
        return sentences
    return [line.split() for line in _plain_lines(path)]


def _plain_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return [line.rstrip("\r\n") for line in handle if line.strip()]
    except UnicodeDecodeError as exc:
        raise DataFormatError("invalid UTF-8", path, _first_invalid_utf8_line(path)) from exc


# --------------------------------------------------------------------------------------------------
# Argument checks and splits
# --------------------------------------------------------------------------------------------------


def _classification_format(path: PathLike, format: str | None) -> str:
    if format is not None:
        if not isinstance(format, str):
            raise LoaderConfigError(f"format must be a string, got {format!r}")
        fmt = {"json": "jsonl"}.get(format.lower(), format.lower())
        if fmt not in CLASSIFICATION_SUFFIXES.values():
            raise LoaderConfigError(f"unknown format {format!r}; expected parquet, csv, tsv or jsonl")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in CLASSIFICATION_SUFFIXES:
        raise LoaderConfigError(
            f"cannot infer the format of {os.fspath(path)!r} from its suffix; expected one of "
            f"{sorted(CLASSIFICATION_SUFFIXES)} or pass format="
        )
    return CLASSIFICATION_SUFFIXES[suffix]


def _check_label_names(label_names: Sequence[str] | None) -> list[str] | None:
    if label_names is None:
        return None
    if isinstance(label_names, str):
        raise LoaderConfigError("label_names must be a sequence of strings, not a single string")
    names = list(label_names)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise LoaderConfigError(f"label_names must be non-empty, unique strings; got {names!r}")
    return names


def _min_fields(token_column: int, tag_column: int) -> int:
    """Smallest field count for which both columns exist and are different fields."""
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in (token_column, tag_column)):
        raise LoaderConfigError("token_column and tag_column must be integers")
    # Both columns exist from ``need`` fields on; they name the same field for at most one count n
    # (same sign: never unless equal; opposite signs: only n = positive - negative), so need or need + 1.
    need = max(c + 1 if c >= 0 else -c for c in (token_column, tag_column))
    for n in (need, need + 1):
        if token_column % n != tag_column % n:
            return n
    raise LoaderConfigError(f"token_column={token_column} and tag_column={tag_column} name the same field")


def _classification_names(dataset: Dataset) -> list[str]:
    return list(dataset.features["label"].names)


def _tagging_names(dataset: Dataset) -> list[str]:
    return list(dataset.features["tags"].feature.names)


def _load_splits(
    load: Callable[..., tuple[Dataset, LoadReport]],
    names_of: Callable[[Dataset], list[str]],
    files: dict[str, PathLike | None],
    label_names: Sequence[str] | None,
    return_report: bool,
    options: dict[str, Any],
) -> DatasetDict | tuple[DatasetDict, dict[str, LoadReport]]:
    """Load the given splits in order; the first (train) fixes the label names of the others."""
    splits: dict[str, Dataset] = {}
    reports: dict[str, LoadReport] = {}
    for split, path in files.items():
        if path is None:
            continue
        splits[split], reports[split] = load(path, label_names=label_names, return_report=True, **options)
        if splits[split].num_rows == 0:
            dropped = reports[split].dropped_empty
            why = f" ({dropped} empty example(s) dropped)" if dropped else ""
            raise DataFormatError(f"the {split} file has no examples{why}", path)
        if label_names is None:
            label_names = names_of(splits[split])
    result = DatasetDict(splits)
    return (result, reports) if return_report else result


# --------------------------------------------------------------------------------------------------
# Cache: one Arrow IPC stream per (file signature, options)
# --------------------------------------------------------------------------------------------------


def _cached_load(
    loader: str,
    path: PathLike,
    options: dict[str, Any],
    cache_dir: PathLike | None,
    build: Callable[[], tuple[pa.Table, Features, LoadReport]],
) -> tuple[Dataset, LoadReport]:
    """Return the cached dataset for this file and options, building and storing it on a miss."""
    cache_file = _cache_file(loader, path, options, cache_dir)
    cached = _read_cache(cache_file)
    if cached is None:
        table, features, report = build()
        dataset = _write_cache(cache_file, table, features, report)
    else:
        dataset, report = cached
    report = dataclasses.replace(report, path=os.fspath(path))
    _warn_dropped(report)
    return dataset, report


def _cache_file(loader: str, path: PathLike, options: dict[str, Any], cache_dir: PathLike | None) -> Path:
    stat = os.stat(path)  # FileNotFoundError for a missing file, before anything else
    key = {
        "version": _CACHE_FORMAT_VERSION,
        "loader": loader,
        "path": os.path.realpath(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "options": options,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    root = (
        Path(cache_dir)
        if cache_dir is not None
        else Path(datasets.config.HF_DATASETS_CACHE) / "seqbucket_plugin" / "loaders"
    )
    return root / f"{loader}-{Path(path).stem[:40]}-{digest}.arrow"


def _read_cache(cache_file: Path) -> tuple[Dataset, LoadReport] | None:
    """The cached dataset and its report (marked ``from_cache``), or None on a miss or unreadable file."""
    if not cache_file.is_file():
        return None
    try:
        with pa.memory_map(str(cache_file)) as source:
            metadata = pa.ipc.open_stream(source).schema.metadata or {}
        report = LoadReport(**json.loads(metadata[_REPORT_METADATA_KEY]))
        return Dataset.from_file(str(cache_file)), dataclasses.replace(report, from_cache=True)
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
        logger.warning("ignoring unreadable loader cache file %s", cache_file)
        return None


def _write_cache(cache_file: Path, table: pa.Table, features: Features, report: LoadReport) -> Dataset:
    """Write ``table`` atomically as an Arrow stream carrying ``features`` and ``report``; memory-map it."""
    schema = features.arrow_schema
    report_json = json.dumps(dataclasses.asdict(report)).encode()
    schema = schema.with_metadata({**(schema.metadata or {}), _REPORT_METADATA_KEY: report_json})
    table = table.select(list(features)).cast(schema)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table, max_chunksize=_WRITE_BATCH_ROWS)
        os.replace(tmp, cache_file)  # concurrent writers of the same key produce identical files
    finally:
        tmp.unlink(missing_ok=True)
    return Dataset.from_file(str(cache_file))


def _warn_dropped(report: LoadReport) -> None:
    if report.dropped_empty:
        tagging = report.tokens is not None
        logger.warning(
            "%s: dropped %d of %d %s %s; kept %d",
            report.path,
            report.dropped_empty,
            report.rows_read,
            "sentences" if tagging else "rows",
            "without tokens" if tagging else "with empty or whitespace-only text",
            report.rows_kept,
        )


# --------------------------------------------------------------------------------------------------
# Classification: read, locate rows, encode labels, empty policy
# --------------------------------------------------------------------------------------------------


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


def _json_record_line(raw: bytes, line_no: int) -> bytes:
    """A line without JSON whitespace (and, on line 1, without a UTF-8 BOM); empty when blank."""
    if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.strip(_JSON_WHITESPACE)


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


def _require_columns(table: pa.Table, columns: Sequence[str], path: Path) -> None:
    names = table.column_names
    for column in columns:
        if column not in names:
            raise MissingColumnError(column, names, os.fspath(path), path=path)
    repeated = sorted({column for column in columns if names.count(column) > 1})
    if repeated:
        raise DataFormatError(f"column name(s) {repeated} appear more than once among {names}", path)


def _schema_class_names(schema: pa.Schema, column: str) -> list[str] | None:
    """ClassLabel names stored by ``datasets`` in a parquet file's metadata, if any."""
    if not schema.metadata or b"huggingface" not in schema.metadata:
        return None
    try:
        feature = Features.from_arrow_schema(schema).get(column)
    except (ValueError, TypeError, KeyError):
        return None
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return pc.index(mask, True).as_py()


def _encode_class_labels(
    labels: pa.ChunkedArray, default_names: list[str] | None, fixed: bool, locate: _RowLocator
) -> tuple[pa.ChunkedArray | pa.Array, list[str]]:
    """Label column -> (int64 ids, names).  Integer labels are ids; strings index into the names."""
    path = locate.path
    if pa.types.is_dictionary(labels.type):
        labels = labels.cast(labels.type.value_type)
    kind = labels.type
    if labels.null_count:
        line, row = locate(_first_true(pc.is_null(labels)))
        raise DataFormatError(f"missing label ({row})", path, line)
    if pa.types.is_integer(kind):
        return _encode_int_labels(labels, default_names, locate)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _encode_string_labels(labels, default_names, fixed, locate)
    if pa.types.is_null(kind):  # no rows at all
        return pa.array([], pa.int64()), default_names or []
    if pa.types.is_floating(kind):
        not_integral = pc.not_equal(labels, pc.floor(labels))
        row = _first_true(not_integral) if pc.any(not_integral).as_py() else 0
    else:
        row = 0
    line, where = locate(row)
    raise DataFormatError(
        f"labels must be integers or strings, found {kind} (value {labels[row].as_py()!r} at {where})",
        path,
        line,
    )


def _encode_int_labels(
    ids: pa.ChunkedArray, default_names: list[str] | None, locate: _RowLocator
) -> tuple[pa.ChunkedArray, list[str]]:
    """Integer labels of any width are ids into the names (messages quote the file's own values)."""
    raw = ids
    if pa.types.is_uint64(ids.type):  # values past int64 fail the range checks below anyway
        ids = pc.min_element_wise(ids, pa.scalar(2**63 - 1, pa.uint64()))
    ids = ids.cast(pa.int64())
    if len(ids) == 0:
        return ids, default_names or []
    low, high = pc.min_max(ids).values()
    if low.as_py() < 0:
        line, row = locate(_first_true(pc.less(ids, 0)))
        raise DataFormatError(f"negative integer label {low.as_py()} ({row})", locate.path, line)
    if default_names is None and high.as_py() >= _MAX_IMPLICIT_CLASSES:
        first = _first_true(pc.greater_equal(ids, _MAX_IMPLICIT_CLASSES))
        line, row = locate(first)
        raise DataFormatError(
            f"integer label {raw[first].as_py()} ({row}) is too large for implicit class names '0', '1', ...; "
            f"integer labels above {_MAX_IMPLICIT_CLASSES - 1} need label_names (or use string labels)",
            locate.path,
            line,
        )
    names = default_names or [str(i) for i in range(high.as_py() + 1)]
    if high.as_py() >= len(names):
        first = _first_true(pc.greater_equal(ids, len(names)))
        line, row = locate(first)
        raise UnknownLabelError(
            f"{_where(locate.path, line)}: unknown label {raw[first].as_py()} ({row}); integer labels must be "
            f"ids below {len(names)} for label_names {_preview(names)}",
            path=locate.path, line=line,
        )
    return ids, names


def _encode_string_labels(
    labels: pa.ChunkedArray, default_names: list[str] | None, fixed: bool, locate: _RowLocator
) -> tuple[pa.Array, list[str]]:
    empty = pc.equal(labels, "")
    if pc.any(empty).as_py():
        line, row = locate(_first_true(empty))
        raise DataFormatError(f"missing label (empty string, {row})", locate.path, line)
    names = default_names or sorted(pc.unique(labels).to_pylist())
    ids, first_unknown = _index_in(labels, names)
    if first_unknown is not None:
        line, row = locate(first_unknown)
        source = "label_names" if fixed else "the file's ClassLabel names"
        raise UnknownLabelError(
            f"{_where(locate.path, line)}: unknown label {labels[first_unknown].as_py()!r} ({row}); "
            f"not in {source} {_preview(names)}",
            path=locate.path, line=line,
        )
    return ids, names


def _index_in(values: pa.Array | pa.ChunkedArray, names: list[str]) -> tuple[pa.Array, int | None]:
    """int64 position of each value in ``names`` and the index of the first value not in it (or None)."""
    ids = pc.index_in(values, value_set=pa.array(names, pa.string()))
    first_unknown = _first_true(pc.is_null(ids)) if ids.null_count else None
    return ids.cast(pa.int64()), first_unknown


def _preview(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} names)"


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


# --------------------------------------------------------------------------------------------------
# Tagging: one-pass line parsers, vectorised tag encoding
# --------------------------------------------------------------------------------------------------


@dataclass
class _ParsedTagging:
    """Flat token/tag columns of a tagging file; sentence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``."""

    tokens: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    token_lines: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=lambda: [0])
    sentence_ids: list[str | None] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    dropped_empty: int = 0

    def end_sentence(self, sentence_id: str | None, had_lines: bool) -> None:
        if len(self.tokens) > self.offsets[-1]:
            self.offsets.append(len(self.tokens))
            self.sentence_ids.append(sentence_id)
        elif had_lines:
            self.dropped_empty += 1


def _open_text(path: Path):
    return open(path, encoding="utf-8-sig")  # a leading BOM must not hide the first comment


def _parse_conllu(path: Path, tag_field: int) -> _ParsedTagging:
    """One pass over a CoNLL-U file; raises DataFormatError with the line of the first malformed line."""
    out = _ParsedTagging(skipped={"comment": 0, "multiword": 0, "empty_node": 0})
    tokens, tags, token_lines = out.tokens, out.tags, out.token_lines
    sentence_id: str | None = None
    in_block = False
    try:
        with _open_text(path) as handle:
            for line_no, raw in enumerate(handle, 1):
                line = raw.rstrip("\r\n")
                if not line or line.isspace():
                    if in_block:
                        out.end_sentence(sentence_id, True)
                        sentence_id, in_block = None, False
                    continue
                in_block = True
                if line[0] == "#":
                    out.skipped["comment"] += 1
                    sentence_id = _sent_id(line) or sentence_id
                    continue
                fields = line.split("\t")
                if len(fields) != 10:
                    raise DataFormatError(
                        f"expected 10 tab-separated fields, found {len(fields)}", path, line_no
                    )
                token_id = fields[0]
                if not (token_id.isascii() and token_id.isdigit()):
                    out.skipped[_non_integer_id_kind(token_id, path, line_no)] += 1
                    continue
                expected = len(tokens) - out.offsets[-1] + 1
                if int(token_id) != expected:
                    raise DataFormatError(
                        f"token id {token_id} out of sequence, expected {expected}", path, line_no
                    )
                form, tag = fields[1], fields[tag_field]
                if not form or not tag:
                    raise DataFormatError("empty FORM or tag field (use '_' for unspecified)", path, line_no)
                tokens.append(form)
                tags.append(tag)
                token_lines.append(line_no)
    except UnicodeDecodeError as exc:
        raise DataFormatError("invalid UTF-8", path, _first_invalid_utf8_line(path)) from exc
    if in_block:
        out.end_sentence(sentence_id, True)
    return out


def _sent_id(comment: str) -> str | None:
    """The value of a ``# sent_id = X`` comment, else None."""
    key, sep, value = comment[1:].partition("=")
    return value.strip() if sep and key.strip() == "sent_id" else None


def _non_integer_id_kind(token_id: str, path: Path, line_no: int) -> str:
    """``multiword`` for ``3-4``, ``empty_node`` for ``8.1``; DataFormatError for anything else."""
    for separator, kind in (("-", "multiword"), (".", "empty_node")):
        first, sep, second = token_id.partition(separator)
        if sep and all(part.isascii() and part.isdigit() for part in (first, second)):
            return kind
    raise DataFormatError(
        f"token id {token_id!r} is not an integer, a range (3-4) or an empty node (8.1)", path, line_no
    )


def _parse_conll_columns(path: Path, token_column: int, tag_column: int, min_fields: int) -> _ParsedTagging:
    """One pass over a whitespace-separated one-token-per-line file (CoNLL-2003 style)."""
    out = _ParsedTagging(skipped={"docstart": 0})
    tokens, tags, token_lines = out.tokens, out.tags, out.token_lines
    negative = token_column < 0 or tag_column < 0
    first_width: int | None = None
    first_line = 0
    try:
        with _open_text(path) as handle:
            for line_no, line in enumerate(handle, 1):
                fields = line.split()
                if not fields:
                    out.end_sentence(None, False)
                    continue
                if fields[0] == "-DOCSTART-":
                    out.skipped["docstart"] += 1
                    continue
                if len(fields) < min_fields:
                    raise DataFormatError(
                        f"expected at least {min_fields} whitespace-separated fields "
                        f"(token_column={token_column}, tag_column={tag_column}), found {len(fields)}",
                        path,
                        line_no,
                    )
                if negative:  # a line with a column missing would shift a column counted from the end
                    if first_width is None:
                        first_width, first_line = len(fields), line_no
                    elif len(fields) != first_width:
                        raise DataFormatError(
                            f"found {len(fields)} whitespace-separated fields, but line {first_line} has "
                            f"{first_width}; with token_column={token_column}, tag_column={tag_column} counted from "
                            "the end, a missing column would take another column's value",
                            path,
                            line_no,
                        )
                tokens.append(fields[token_column])
                tags.append(fields[tag_column])
                token_lines.append(line_no)
    except UnicodeDecodeError as exc:
        raise DataFormatError("invalid UTF-8", path, _first_invalid_utf8_line(path)) from exc
    out.end_sentence(None, False)
    return out


def _build_tagging(
    path: Path, fmt: str, parsed: _ParsedTagging, label_names: list[str] | None
) -> tuple[pa.Table, Features, LoadReport]:
    """Parsed flat columns -> table with ``tokens``, ``tags`` (ids) and, if any, ``sentence_id``."""
    flat_tags = pa.array(parsed.tags, pa.string())
    names = label_names or sorted(pc.unique(flat_tags).to_pylist())
    tag_ids, first_unknown = _index_in(flat_tags, names)
    if first_unknown is not None:
        raise UnknownLabelError(
            f"{_where(path, parsed.token_lines[first_unknown])}: unknown tag {parsed.tags[first_unknown]!r}; "
            f"not in label_names {_preview(names)}",
            path=path, line=parsed.token_lines[first_unknown],
        )
    offsets = pa.array(parsed.offsets, pa.int32())
    columns = {
        "tokens": pa.ListArray.from_arrays(offsets, pa.array(parsed.tokens, pa.string())),
        "tags": pa.ListArray.from_arrays(offsets, tag_ids),
    }
    features = Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "tags": datasets.Sequence(ClassLabel(names=names)),
        }
    )
    if any(sid is not None for sid in parsed.sentence_ids):
        columns["sentence_id"] = pa.array(parsed.sentence_ids, pa.string())
        features["sentence_id"] = datasets.Value("string")
    sentences = len(parsed.offsets) - 1
    report = LoadReport(
        path=os.fspath(path),
        format=fmt,
        rows_read=sentences + parsed.dropped_empty,
        rows_kept=sentences,
        dropped_empty=parsed.dropped_empty,
        tokens=len(parsed.tokens),
        skipped_lines=dict(parsed.skipped),
    )
    return pa.table(columns), features, report
