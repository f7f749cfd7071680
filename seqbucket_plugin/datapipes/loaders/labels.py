"""Label encoding: a label column (integers or strings) to int64 ids and class names, vectorised."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Features

from seqbucket_plugin.datapipes.loaders.locate import _RowLocator, _where
from seqbucket_plugin.errors import DataFormatError, UnknownLabelError

_MAX_IMPLICIT_CLASSES = 1 << 20  # integer labels above this need label_names (names "0".."max" are built)


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
