"""Checks of the loaders' arguments, shared by the classification, tagging and prediction-input loaders.

Each raises :class:`~seqbucket_plugin.errors.LoaderConfigError` for an invalid value."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from seqbucket_plugin.errors import LoaderConfigError

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
            f"{sorted(CLASSIFICATION_SUFFIXES)} or pass format=",
            path=path,
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
