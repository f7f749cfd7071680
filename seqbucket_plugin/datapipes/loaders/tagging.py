"""Public tagging loaders: :func:`load_conllu`, :func:`load_conll_columns`, :func:`load_tagging` and
:func:`load_tagging_splits`, and the table they build from the parsed columns (tag ids, sentence ids)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features

from seqbucket_plugin.datapipes.loaders.arguments import (
    _CONLLU_TAG_FIELDS,
    PathLike,
    _check_label_names,
    _min_fields,
)
from seqbucket_plugin.datapipes.loaders.cache import _cached_load
from seqbucket_plugin.datapipes.loaders.conll import _parse_conll_columns, _parse_conllu, _ParsedTagging
from seqbucket_plugin.datapipes.loaders.labels import _index_in, _preview
from seqbucket_plugin.datapipes.loaders.locate import _where
from seqbucket_plugin.datapipes.loaders.report import LoadReport
from seqbucket_plugin.datapipes.loaders.splits import _load_splits
from seqbucket_plugin.errors import LoaderConfigError, UnknownLabelError

__all__ = ["load_conll_columns", "load_conllu", "load_tagging", "load_tagging_splits"]


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
                                    f"tag_column={tag_column!r} (a column index of CoNLL column files)", path=path)
        return load_conllu(path, tag="upos" if tag is None else tag, **common)
    if fmt == "conll":
        if tag is not None:
            raise LoaderConfigError(f"{os.fspath(path)} is a CoNLL column file: it takes an integer tag_column "
                                    f"(negative counts from the end), not tag={tag!r} (a CoNLL-U field)", path=path)
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


def _tagging_names(dataset: Dataset) -> list[str]:
    return list(dataset.features["tags"].feature.names)


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
