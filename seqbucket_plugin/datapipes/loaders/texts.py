"""Inputs to predict (no labels, nothing cached): :func:`load_texts` and :func:`load_sentences`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from seqbucket_plugin.datapipes.loaders.arguments import (
    _CONLLU_TAG_FIELDS,
    CLASSIFICATION_SUFFIXES,
    PathLike,
    _classification_format,
)
from seqbucket_plugin.datapipes.loaders.classification import _text_as_strings
from seqbucket_plugin.datapipes.loaders.conll import _parse_conllu
from seqbucket_plugin.datapipes.loaders.locate import _iter_json_record_lines, _RowLocator
from seqbucket_plugin.datapipes.loaders.readers import (
    _plain_lines,
    _read_classification_table,
    _read_jsonl,
    _require_columns,
)
from seqbucket_plugin.errors import DataFormatError, LoaderConfigError

__all__ = ["load_sentences", "load_texts"]


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
