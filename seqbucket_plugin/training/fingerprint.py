"""What a run is made of, in a few digests, so that ``--resume`` never mixes two different runs.

A checkpoint stores the run's *fingerprint*: a digest of the tokenized training and dev sets, of
the tokenizer (and any other vocabulary), the label names and the settings that shape the data
pipeline and the model. Resuming compares it with the fingerprint of the run being started and
refuses, listing every difference, when they disagree (:func:`fingerprint_differences`). Loop
settings a user may legitimately change when continuing a run (more epochs, another device, a
different checkpoint interval) are reported as notes, not errors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["RESUMABLE_SETTINGS", "dataset_fingerprint", "fingerprint_differences", "run_fingerprint", "settings_of",
           "text_fingerprint"]

# settings that may change between a run and its resume (reported, not refused); file paths are
# not compared at all: the content of the data is
RESUMABLE_SETTINGS = frozenset({"epochs", "max_steps", "patience", "eval_every", "save_every", "device",
                                "threads", "progress", "amp", "nonfinite", "nonfinite_patience", "log_every",
                                "report_to"})
IGNORED_SETTINGS = frozenset({"output_dir", "resume", "overwrite", "predict", "predictions", "config", "train_file",
                              "dev_file", "test_file"})


def _hash_column(digest: Any, column: pa.ChunkedArray) -> None:
    while pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        sizes = pc.fill_null(pc.list_value_length(column), -1)  # a null list differs from an empty one
        digest.update(np.ascontiguousarray(sizes.to_numpy(), dtype=np.int64).tobytes())
        column = pc.list_flatten(column)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
        digest.update(np.ascontiguousarray(column.to_numpy()).tobytes())
    else:
        for value in column.to_pylist():
            digest.update(repr(value).encode("utf-8") + b"\0")


def dataset_fingerprint(dataset: Any, columns: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> str:
    """SHA-256 of a ``datasets.Dataset``'s rows, in order, over ``columns`` (default: every column
    of integer or list-of-integer type, e.g. ``input_ids``, ``length``, labels, except ``exclude``).

    Depends on the values only (not on the Arrow chunking, the cache files or a ``select``/
    ``shuffle`` indices mapping). Numeric columns are hashed as whole arrays (no Python loop per
    row); other columns value by value. Raises ``KeyError`` naming the existing columns for an unknown one.
    """
    table = dataset.with_format("arrow")[:]
    if columns is None:
        def integer_like(t: pa.DataType) -> bool:
            while pa.types.is_list(t) or pa.types.is_large_list(t):
                t = t.value_type
            return pa.types.is_integer(t)
        columns = [f.name for f in table.schema if integer_like(f.type) and f.name not in set(exclude)]
    digest = hashlib.sha256(f"rows={table.num_rows}".encode())
    for name in sorted(columns):
        if name not in table.column_names:
            raise KeyError(f"column {name!r} not found; available columns: {table.column_names}")
        digest.update(b"\0column\0" + name.encode("utf-8") + b"\0")
        _hash_column(digest, table.column(name))
    return digest.hexdigest()


def text_fingerprint(*parts: str | bytes) -> str:
    """SHA-256 of strings (e.g. a tokenizer's JSON), each part delimited."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def settings_of(options: Mapping[str, Any]) -> dict[str, Any]:
    """The settings part of a fingerprint: ``options`` without file paths and run plumbing,
    as JSON-able values."""
    return {k: json.loads(json.dumps(v, default=str)) for k, v in sorted(options.items())
            if k not in IGNORED_SETTINGS}


def run_fingerprint(options: Mapping[str, Any], *, train: Any, dev: Any = None, vocabularies: Iterable[str] = (),
                    labels: Iterable[str] = ()) -> dict[str, Any]:
    """The fingerprint a recipe stores in its checkpoints: digests of the tokenized ``train`` and
    ``dev`` datasets and of the ``vocabularies`` (e.g. a tokenizer's JSON), the label names and
    the settings in ``options`` (see :func:`settings_of`). The ``idx`` column (example ids the
    recipes add for debugging) is not part of the data."""
    return {
        "train_data": dataset_fingerprint(train, exclude=("idx",)),
        "dev_data": None if dev is None else dataset_fingerprint(dev, exclude=("idx",)),
        "tokenizer": text_fingerprint(*vocabularies),
        "labels": list(labels),
        "settings": settings_of(options),
    }


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Compare the fingerprint stored in a checkpoint with the current run's.

    Returns ``(errors, notes)``: one readable line per difference that forbids resuming (data,
    tokenizer, labels, pipeline or model settings) and per harmless change
    (:data:`RESUMABLE_SETTINGS`).
    """
    errors: list[str] = []
    notes: list[str] = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if key == "settings":
            old, new = old or {}, new or {}
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    line = f"--{name.replace('_', '-')}: {old.get(name)!r} in the checkpoint, {new.get(name)!r} now"
                    (notes if name in RESUMABLE_SETTINGS else errors).append(line)
        elif old != new:
            if isinstance(old, str) and isinstance(new, str) and len(old) == 64:
                errors.append(f"{key.replace('_', ' ')}: differs (sha256 {old[:12]}... in the checkpoint, "
                              f"{new[:12]}... now)")
            else:
                errors.append(f"{key.replace('_', ' ')}: {old!r} in the checkpoint, {new!r} now")
    return errors, notes
