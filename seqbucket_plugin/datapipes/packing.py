"""Collation of a list of examples into a :class:`PackedBatch` ready for ``torch.nn.utils.rnn``.

A :class:`PackedBatch` is padded, sorted by length descending (so
``pack_padded_sequence(..., enforce_sorted=True)`` works without a device-side sort), keeps its
lengths on the CPU, and remembers the permutation that restores the caller's order.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torchdata.nodes import BaseNode

from seqbucket_plugin.constants import IGNORE_INDEX
from seqbucket_plugin.errors import DataFormatError, MissingColumnError

__all__ = ["LABEL_PAD_ID", "Collate", "ColumnarBatch", "ExampleBatch", "Pack", "PackedBatch", "collate_packed",
           "collate_table"]

LABEL_PAD_ID = IGNORE_INDEX  # the label padding: the one IGNORE_INDEX (seqbucket_plugin.constants)
"""Padding value of token labels; ``torch.nn.CrossEntropyLoss`` ignores it by default."""


@dataclasses.dataclass
class PackedBatch:
    """A padded batch of sequences sorted by length, longest first.

    Also read like a mapping, as Hugging Face's ``BatchEncoding`` is: ``batch["input_ids"]``,
    ``batch.keys()`` = ``input_ids``, ``attention_mask``, ``lengths``, ``labels`` (when set) and
    the ``extras`` names (``items()``, ``values()``, ``get()``, ``in`` too), so ``model(**batch)``
    calls a ``forward`` taking those names (the heads' ``forward`` does) and ``dict(batch)`` works.
    It is deliberately not a ``collections.abc.Mapping`` and has no ``len()``: ``DataLoader`` and
    ``pin_memory`` would turn a Mapping into a plain dict and drop the permutations;
    :attr:`batch_size` is the number of rows.

    Attributes:
        input_ids: ``(B, T)`` int64, right-padded with ``pad_id``; ``T`` is the longest length,
            rounded up to ``pad_to_multiple_of`` when that was asked for.
        lengths: ``(B,)`` int64, **always on the CPU** (``pack_padded_sequence`` requires it),
            non-increasing.
        sorted_indices: ``(B,)`` int64 on the CPU; row ``i`` is example ``sorted_indices[i]`` of
            the list that was collated.
        unsorted_indices: ``(B,)`` int64 on the CPU; ``x[unsorted_indices]`` puts rows of any
            per-row result ``x`` back in the order of the list that was collated: **the batch's own
            order before the length sort, not the dataset's**. A :class:`BucketBatcher` hands
            over its examples in a random (``shuffle=True``) or length order (``shuffle=False``,
            shortest batch first), so use :attr:`positions` to map rows to dataset examples.
        labels: ``(B,)`` int64 sequence labels, ``(B, T)`` int64 token labels padded with
            ``-100``, or None.
        extras: other columns, sorted like the rows: numbers as ``(B,)`` tensors, anything else
            as lists.
        pad_id: the padding id used in ``input_ids``.
        positions: ``(B,)`` int64 on the CPU, sorted like the rows: row ``i`` is example
            ``positions[i]`` of the dataset (a map-style source: its row index; a stream: the
            example's position in the stream as the source reads it, from 0 every epoch). Set
            when the batch comes from a :class:`BucketBatcher` (or ``positions=`` was given to
            the collate function); None otherwise.
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    sorted_indices: torch.Tensor
    unsorted_indices: torch.Tensor
    labels: torch.Tensor | None = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    pad_id: int = 0
    positions: torch.Tensor | None = None

    # ---- mapping-style access ---------------------------------------------------------------
    def keys(self) -> list[str]:
        """``input_ids``, ``attention_mask``, ``lengths``, ``labels`` (when set), then the extras."""
        return self._names()

    def values(self) -> list[Any]:
        return [self[k] for k in self._names()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self[k]) for k in self._names()]

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def _names(self) -> list[str]:
        names = ["input_ids", "attention_mask", "lengths"]
        if self.labels is not None:
            names.append("labels")
        return names + [k for k in self.extras if k not in names]

    def __getitem__(self, key: str) -> Any:
        if key == "attention_mask":
            return self.attention_mask
        if key in ("input_ids", "lengths") or (key == "labels" and self.labels is not None):
            return getattr(self, key)
        if key in self.extras:
            return self.extras[key]
        raise KeyError(f"{key!r}: a PackedBatch holds {self._names()}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._names()

    @property
    def attention_mask(self) -> torch.Tensor:
        """``(B, T)`` int64, 1 at real tokens and 0 at padding (Hugging Face's convention), on the
        device of ``input_ids``; :attr:`mask` is the same as bool."""
        return self.mask.long()

    @property
    def batch_size(self) -> int:
        """Rows in the batch (``B``)."""
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int(self.lengths.sum())

    @property
    def padding_efficiency(self) -> float:
        """Real tokens / padded positions (1.0 for an empty batch)."""
        padded = self.input_ids.numel()
        return 1.0 if padded == 0 else self.num_tokens / padded

    @property
    def mask(self) -> torch.Tensor:
        """``(B, T)`` bool, True at real tokens, on the device of ``input_ids``."""
        positions = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        return positions.unsqueeze(0) < self.lengths.to(self.input_ids.device, non_blocking=True).unsqueeze(1)

    def _map_tensors(self, fn) -> PackedBatch:
        extras = {k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in self.extras.items()}
        return dataclasses.replace(
            self,
            input_ids=fn(self.input_ids),
            labels=None if self.labels is None else fn(self.labels),
            extras=extras,
        )

    def to(self, device: torch.device | str | int | torch.dtype | None = None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> PackedBatch:
        """A copy with ``input_ids``, ``labels`` and tensor extras on ``device``, floating-point
        extras (e.g. ``inputs_embeds``) cast to ``dtype``; ids, labels and other integer tensors
        keep their dtype (as ``nn.Module.to`` and ``BatchEncoding.to`` do). ``to(torch.float16)``
        casts without moving.

        ``lengths`` and the permutations stay on the CPU: packing needs CPU lengths, and keeping
        them there avoids a device-to-host synchronisation in every forward.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"PackedBatch.to: dtype must be a floating-point dtype, got {dtype}")

        def move(t: torch.Tensor) -> torch.Tensor:
            cast = dtype if dtype is not None and t.is_floating_point() else None
            return t.to(device=device, dtype=cast, non_blocking=non_blocking)

        return self._map_tensors(move)

    def pin_memory(self) -> PackedBatch:
        """A copy in pinned host memory (what ``torchdata.nodes.PinMemory`` calls)."""
        pinned = self._map_tensors(lambda t: t.pin_memory())
        return dataclasses.replace(
            pinned,
            lengths=self.lengths.pin_memory(),
            sorted_indices=self.sorted_indices.pin_memory(),
            unsorted_indices=self.unsorted_indices.pin_memory(),
            positions=None if self.positions is None else self.positions.pin_memory(),
        )

    def pack(self, embedded: torch.Tensor) -> PackedSequence:
        """Pack ``embedded`` ``(B, T, D)`` (rows in this batch's order) into a ``PackedSequence``.

        Rows of length 0 are left out (PyTorch cannot pack them); they are the last rows, since
        the batch is sorted. Raises ``ValueError`` when every row is empty.
        """
        nonempty = int((self.lengths > 0).sum())
        if nonempty == 0:
            raise ValueError("cannot pack a batch in which every sequence is empty")
        return pack_padded_sequence(
            embedded[:nonempty], self.lengths[:nonempty], batch_first=True, enforce_sorted=True
        )

    def restore_order(self, per_row: torch.Tensor) -> torch.Tensor:
        """``per_row`` (first dimension ``B``, in this batch's order) in the order of the collated
        list (see ``unsorted_indices``; for dataset order use :attr:`positions`)."""
        return per_row.index_select(0, self.unsorted_indices.to(per_row.device, non_blocking=True))


def collate_packed(
    examples: Sequence[dict[str, Any]],
    *,
    pad_id: int = 0,
    pad_to_multiple_of: int | None = None,
    input_key: str = "input_ids",
    length_key: str = "length",
    label_keys: Sequence[str] = ("label", "labels"),
    label_pad_id: int = LABEL_PAD_ID,
    positions: Sequence[int] | np.ndarray | None = None,
) -> PackedBatch:
    """Collate dict examples into a :class:`PackedBatch`.

    Each example needs ``input_key`` (a sequence of ints) and ``length_key`` (its length,
    computed once at tokenization and trusted here). A label under one of ``label_keys`` is an
    int (sequence label) or a sequence of ints as long as the input (token labels). Every other
    key is carried in ``extras``. ``positions`` (one per example, default: ``examples.positions``
    for an :class:`ExampleBatch`) become :attr:`PackedBatch.positions`, sorted like the rows.

    Raises:
        MissingColumnError: an example lacks ``input_key`` or ``length_key``.
        DataFormatError: a length disagrees with its ``input_ids``, or labels are malformed.
    """
    size = len(examples)
    if size == 0:
        raise ValueError("cannot collate an empty list of examples")
    first = examples[0]
    for key in (input_key, length_key):
        if key not in first:
            raise MissingColumnError(key, list(first))
    lengths = np.fromiter((example[length_key] for example in examples), dtype=np.int64, count=size)
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    longest = int(sorted_lengths[0])
    if pad_to_multiple_of and pad_to_multiple_of > 1:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of

    input_ids = np.full((size, longest), pad_id, dtype=np.int64)
    label_key = next((k for k in label_keys if k in first), None)
    token_labels = label_key is not None and not isinstance(first[label_key], numbers.Integral)
    labels = np.full((size, longest), label_pad_id, dtype=np.int64) if token_labels else None
    for row, index in enumerate(order):
        example = examples[index]
        length = int(sorted_lengths[row])
        ids = example[input_key]
        if len(ids) != length:
            raise DataFormatError(
                f"example {index}: {length_key}={length} but {input_key} has {len(ids)} ids; "
                "lengths are computed once at tokenization and must match"
            )
        input_ids[row, :length] = ids
        if labels is not None:
            token_label = example[label_key]
            if len(token_label) != length:
                raise DataFormatError(f"example {index}: {len(token_label)} token labels for {length} ids")
            labels[row, :length] = token_label

    if label_key is None:
        label_tensor = None
    elif token_labels:
        label_tensor = torch.from_numpy(labels)
    else:
        label_tensor = torch.as_tensor([examples[i][label_key] for i in order], dtype=torch.int64)

    extras: dict[str, Any] = {}
    for key in first:
        if key in (input_key, length_key, label_key):
            continue
        values = [examples[i].get(key) for i in order]
        if all(isinstance(v, numbers.Number) and not isinstance(v, bool) for v in values):
            extras[key] = torch.as_tensor(values)
        else:
            extras[key] = values

    sorted_indices = torch.from_numpy(order.astype(np.int64))
    unsorted_indices = torch.empty_like(sorted_indices)
    unsorted_indices[sorted_indices] = torch.arange(size, dtype=torch.int64)
    if positions is None:
        positions = getattr(examples, "positions", None)
    return PackedBatch(
        input_ids=torch.from_numpy(input_ids),
        lengths=torch.from_numpy(sorted_lengths.copy()),
        sorted_indices=sorted_indices,
        unsorted_indices=unsorted_indices,
        labels=label_tensor,
        extras=extras,
        pad_id=pad_id,
        positions=_sorted_positions(positions, order, size),
    )


def _sorted_positions(positions: Any, order: np.ndarray, size: int) -> torch.Tensor | None:
    if positions is None:
        return None
    positions = np.asarray(positions, dtype=np.int64)
    if positions.shape != (size,):
        raise ValueError(f"positions must hold one int per example ({size}), got shape {positions.shape}")
    return torch.from_numpy(positions[order].copy())


class ExampleBatch(list):
    """The list of dict examples a :class:`BucketBatcher` yields, with ``positions``: each
    example's dataset position (see :attr:`PackedBatch.positions`). Compares equal to a plain
    list of the same examples."""

    def __init__(self, examples: Sequence[dict] = (), positions: Sequence[int] | np.ndarray | None = None):
        super().__init__(examples)
        self.positions = None if positions is None else np.asarray(positions, dtype=np.int64)


@dataclasses.dataclass
class ColumnarBatch:
    """A batch still in Arrow form: the rows of ``table`` in batch order, each cut to
    ``truncate_to`` tokens when that is set. What a map-style ``BucketBatcher`` yields inside a
    ``Pipe`` whose next stage packs, so that no Python object is built per row or token."""

    table: pa.Table
    truncate_to: int | None = None
    positions: np.ndarray | None = None
    """Each row's dataset position (see :attr:`PackedBatch.positions`), or None."""

    def __len__(self) -> int:
        return self.table.num_rows


def _list_parts(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(sizes, flat values)`` of a list column: int64 row sizes and the concatenated values."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    sizes = pc.list_value_length(array).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    return sizes, values


def collate_table(
    table: pa.Table,
    *,
    pad_id: int = 0,
    pad_to_multiple_of: int | None = None,
    input_key: str = "input_ids",
    length_key: str = "length",
    label_keys: Sequence[str] = ("label", "labels"),
    label_pad_id: int = LABEL_PAD_ID,
    truncate_to: int | None = None,
    positions: Sequence[int] | np.ndarray | None = None,
) -> PackedBatch:
    """:func:`collate_packed` for rows in a ``pyarrow.Table``, vectorised: the same
    :class:`PackedBatch` (same order, dtypes, padding, labels and extras) from list offsets and
    flat values with one numpy scatter per padded tensor. ``truncate_to`` keeps the first
    ``truncate_to`` tokens (and token labels) of longer rows, as the batcher's ``"truncate"``
    oversize policy does. ``positions`` become :attr:`PackedBatch.positions` (sorted like the rows).

    Raises:
        MissingColumnError: the table lacks ``input_key`` or ``length_key``.
        DataFormatError: a length disagrees with its ``input_ids``, or token labels do not match.
    """
    size = table.num_rows
    if size == 0:
        raise ValueError("cannot collate an empty list of examples")
    dataset_positions = positions  # (the name is reused below for token positions)
    names = table.column_names
    for key in (input_key, length_key):
        if key not in names:
            raise MissingColumnError(key, names)
    lengths = np.asarray(table.column(length_key).to_numpy(), dtype=np.int64)
    id_sizes, ids = _list_parts(table.column(input_key))
    bad = np.flatnonzero(id_sizes != lengths)
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(f"example {i}: {length_key}={lengths[i]} but {input_key} has {id_sizes[i]} ids; "
                              "lengths are computed once at tokenization and must match")
    kept = lengths if truncate_to is None else np.minimum(lengths, truncate_to)
    order = np.argsort(-kept, kind="stable")
    sorted_lengths = kept[order]
    longest = int(sorted_lengths[0])
    if pad_to_multiple_of and pad_to_multiple_of > 1:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    rank = np.empty(size, dtype=np.int64)
    rank[order] = np.arange(size)
    # every kept token: its row in the batch, its position, and where it sits in the flat values
    starts = np.cumsum(lengths) - lengths
    kept_starts = np.cumsum(kept) - kept
    rows = np.repeat(rank, kept)
    positions = np.arange(int(kept.sum())) - np.repeat(kept_starts, kept)
    source = np.repeat(starts, kept) + positions

    def scatter(values: np.ndarray, fill: int) -> np.ndarray:
        out = np.full((size, longest), fill, dtype=np.int64)
        out[rows, positions] = values[source]
        return out

    input_ids = scatter(ids, pad_id)
    label_key = next((k for k in label_keys if k in names), None)
    label_tensor = None
    if label_key is not None:
        column = table.column(label_key)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            label_sizes, label_values = _list_parts(column)
            wrong = np.flatnonzero(label_sizes != lengths)
            if wrong.size:
                i = int(wrong[0])
                raise DataFormatError(f"example {i}: {label_sizes[i]} token labels for {lengths[i]} ids")
            label_tensor = torch.from_numpy(scatter(label_values, label_pad_id))
        else:
            label_tensor = torch.from_numpy(np.asarray(column.to_numpy(), dtype=np.int64)[order])

    extras: dict[str, Any] = {}
    for key in names:
        if key in (input_key, length_key, label_key):
            continue
        column = table.column(key)
        numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        if numeric and column.null_count == 0:
            dtype = torch.int64 if pa.types.is_integer(column.type) else torch.get_default_dtype()
            extras[key] = torch.as_tensor(column.to_numpy()[order], dtype=dtype)
        else:
            values = column.to_pylist()
            extras[key] = [values[i] for i in order]

    sorted_indices = torch.from_numpy(order.astype(np.int64))
    return PackedBatch(
        input_ids=torch.from_numpy(input_ids),
        lengths=torch.from_numpy(sorted_lengths.copy()),
        sorted_indices=sorted_indices,
        unsorted_indices=torch.from_numpy(rank),
        labels=label_tensor,
        extras=extras,
        pad_id=pad_id,
        positions=_sorted_positions(dataset_positions, order, size),
    )


class Collate:
    """:func:`collate_packed` (or :func:`collate_table` for a :class:`ColumnarBatch`) with fixed
    keyword arguments, as a picklable callable (what ``ParallelMapper`` workers run; threads or
    processes)."""

    def __init__(self, **collate_kwargs: Any):
        self.collate_kwargs = collate_kwargs

    def __call__(self, examples: list[dict] | ColumnarBatch) -> PackedBatch:
        if isinstance(examples, ColumnarBatch):
            return collate_table(examples.table, truncate_to=examples.truncate_to, positions=examples.positions,
                                 **self.collate_kwargs)
        return collate_packed(examples, **self.collate_kwargs)


class Pack(BaseNode[PackedBatch]):
    """A node that collates each list of examples from ``source`` into a :class:`PackedBatch`.

    Collation is per batch and atomic, so the state is the source's state. Keyword arguments
    are those of :func:`collate_packed`.
    """

    SOURCE_KEY = "source"

    def __init__(self, source: BaseNode[list[dict]], **collate_kwargs: Any):
        super().__init__()
        self.source = source
        self.collate = Collate(**collate_kwargs)  # its collate_kwargs are the keyword arguments

    def reset(self, initial_state: dict | None = None):
        super().reset(initial_state)
        self.source.reset(None if initial_state is None else initial_state[self.SOURCE_KEY])

    def next(self) -> PackedBatch:
        return self.collate(next(self.source))

    def get_state(self) -> dict:
        return {self.SOURCE_KEY: self.source.state_dict()}
