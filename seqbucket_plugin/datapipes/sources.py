"""Pipeline sources over Hugging Face datasets, as ``torchdata.nodes`` nodes.

* :class:`MapDatasetSource` wraps a map-style ``datasets.Dataset`` (Arrow, memory-mapped).
  Iterated, it yields rows in order; it also offers random access by index and the whole
  length column as a numpy array, which lets :class:`~seqbucket_plugin.datapipes.BucketBatcher`
  plan an epoch over indices without touching the rows.
* :class:`IterableDatasetSource` wraps a streaming ``datasets.IterableDataset`` and saves and
  restores its position through the dataset's own ``state_dict``.

Both yield examples as ``dict[str, Any]`` and pass :func:`seqbucket_plugin.testing.check_save_load_state`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from torchdata.nodes import BaseNode

from seqbucket_plugin.errors import MissingColumnError, StateDictError

__all__ = ["IterableDatasetSource", "MapDatasetSource", "from_hf"]


def _columns_to_rows(columns: dict[str, list]) -> list[dict[str, Any]]:
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]


class MapDatasetSource(BaseNode[dict]):
    """A map-style ``datasets.Dataset`` as a resumable node.

    Iteration yields the rows ``0 .. len-1`` as dicts, reading ``read_size`` rows from Arrow at a
    time. The state is the next row index, so restoring is O(1).

    Random access for planners: :meth:`lengths` returns a column as an int64 numpy array and
    :meth:`take` returns the rows at given indices.

    Args:
        dataset: the map-style dataset.
        columns: columns to yield (default: all).
        read_size: rows read from Arrow per call while iterating.
    """

    NEXT_INDEX_KEY = "next_index"

    def __init__(self, dataset: datasets.Dataset, *, columns: Sequence[str] | None = None, read_size: int = 1024):
        super().__init__()
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(f"MapDatasetSource needs a datasets.Dataset, got {type(dataset).__name__}")
        if columns is not None:
            for column in columns:
                if column not in dataset.column_names:
                    raise MissingColumnError(column, dataset.column_names)
            dataset = dataset.select_columns(list(columns))
        self.dataset = dataset
        self._arrow: datasets.Dataset | None = None
        self.read_size = read_size
        self._next_index = 0
        self._buffer: list[dict] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def lengths(self, column: str = "length") -> np.ndarray:
        """The ``column`` of every row as an int64 array of shape ``(len(self),)``, read from Arrow.

        Raises:
            MissingColumnError: when the column does not exist.
        """
        if column not in self.dataset.column_names:
            raise MissingColumnError(column, self.dataset.column_names)
        values = self.dataset.with_format("arrow", columns=[column])[column]
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)

    def take(self, indices: Sequence[int] | np.ndarray) -> list[dict]:
        """The rows at ``indices`` (in that order) as dicts, read in one Arrow call."""
        if len(indices) == 0:
            return []
        return _columns_to_rows(self.dataset[np.asarray(indices, dtype=np.int64)])

    def take_table(self, indices: Sequence[int] | np.ndarray) -> pa.Table:
        """The rows at ``indices`` (in that order) as a ``pyarrow.Table``: no Python objects per
        row (what :func:`~seqbucket_plugin.datapipes.packing.collate_table` pads, vectorised)."""
        if self._arrow is None:  # with_format builds a new Dataset view: once, not per batch
            self._arrow = self.dataset.with_format("arrow")
        return self._arrow[np.asarray(indices, dtype=np.int64)]

    def reset(self, initial_state: dict | None = None):
        super().reset(initial_state)
        self._buffer = []
        if initial_state is None:
            self._next_index = 0
            return
        index = initial_state.get(self.NEXT_INDEX_KEY) if isinstance(initial_state, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= len(self.dataset):
            raise StateDictError(
                f"not a MapDatasetSource state (needs {self.NEXT_INDEX_KEY!r} in [0, {len(self.dataset)}]): "
                f"{initial_state!r}"
            )
        self._next_index = index

    def next(self) -> dict:
        if not self._buffer:
            start = self._next_index
            if start >= len(self.dataset):
                raise StopIteration
            stop = min(start + self.read_size, len(self.dataset))
            self._buffer = _columns_to_rows(self.dataset[start:stop])[::-1]
        self._next_index += 1
        return self._buffer.pop()

    def get_state(self) -> dict:
        return {self.NEXT_INDEX_KEY: self._next_index}


class IterableDatasetSource(BaseNode[dict]):
    """A streaming ``datasets.IterableDataset`` as a resumable node.

    Rows are read ``read_size`` at a time (``dataset.iter(batch_size=read_size)``: one formatted
    batch per call instead of one per row, about 10x less time inside ``datasets``) and yielded
    one by one as dicts. Each epoch calls ``dataset.set_epoch(epoch)`` so that a shuffled stream
    (``IterableDataset.shuffle``) differs from epoch to epoch. A fresh epoch (``reset()``
    without a state) always starts at the beginning of the stream, even if the dataset object was
    iterated before.

    State: the epoch, the dataset's own ``state_dict()`` at the start of the current read and the
    rows already yielded from it, so a restore re-reads at most one read of ``read_size`` rows
    instead of replaying the stream. A state restores only into a source with the same
    ``read_size``. Restores are exact for streams without a ``datasets`` shuffle buffer. With
    ``IterableDataset.shuffle`` they are not: ``datasets`` refills its buffer with new rows on
    restore (the rows it held are not seen again that epoch, as ``datasets`` documents), so the
    re-read differs from the first read and the rows skipped to reach the offset are lost too.
    For exact mid-epoch resumes, leave the stream unshuffled and let
    :class:`~seqbucket_plugin.datapipes.BucketBatcher` shuffle: a restore re-reads its chunk from
    this source and re-plans it from its seed.

    Args:
        dataset: the streaming dataset.
        rank, world_size: when given, the stream is split with
            ``datasets.distributed.split_dataset_by_node`` so that each rank reads its own part.
        read_size: rows per read from the dataset.

    Raises:
        StateDictError (from ``reset``): a state that is not one of this source's, or that was
            saved with another ``read_size`` (or by an earlier version that read row by row).
    """

    EPOCH_KEY = "epoch"
    DATASET_KEY = "dataset_state"
    NUM_YIELDED_KEY = "num_yielded"
    OFFSET_KEY = "offset"
    READ_SIZE_KEY = "read_size"

    def __init__(self, dataset: datasets.IterableDataset, *, rank: int | None = None,
                 world_size: int | None = None, read_size: int = 1000):
        super().__init__()
        if not isinstance(dataset, datasets.IterableDataset):
            raise TypeError(f"IterableDatasetSource needs a datasets.IterableDataset, got {type(dataset).__name__}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if read_size < 1:
            raise ValueError(f"read_size must be >= 1, got {read_size}")
        if world_size is not None and world_size > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        self.dataset = dataset
        self.read_size = read_size
        self._epoch = -1
        self._num_yielded = 0
        self._it = None
        self._rows: list[dict] = []
        self._offset = 0
        self._read_state: dict | None = None  # the dataset's state where the current read began

    def reset(self, initial_state: dict | None = None):
        super().reset(initial_state)
        self._rows, self._offset = [], 0
        if initial_state is None:
            self._epoch += 1
            self._num_yielded = 0
            self.dataset.set_epoch(self._epoch)
            # The dataset object keeps the position of its latest iterator (its state_dict());
            # no starting state (None) is how `datasets` itself begins a stream.
            self._start(None)
            return
        try:
            epoch = int(initial_state[self.EPOCH_KEY])
            num_yielded = int(initial_state[self.NUM_YIELDED_KEY])
            offset = initial_state[self.OFFSET_KEY]
            read_size = initial_state[self.READ_SIZE_KEY]
            dataset_state = initial_state[self.DATASET_KEY]
        except (KeyError, TypeError, ValueError) as error:
            raise StateDictError(f"not a state of IterableDatasetSource: {error!r}") from error
        if read_size != self.read_size:
            raise StateDictError(f"IterableDatasetSource state saved with read_size={read_size}, "
                                 f"this source reads {self.read_size}")
        if type(offset) is not int or not 0 <= offset <= self.read_size:
            raise StateDictError(f"IterableDatasetSource state: offset must be an int in [0, {self.read_size}], "
                                 f"got {offset!r}")
        self._epoch, self._num_yielded = epoch, num_yielded
        self.dataset.set_epoch(epoch)
        self._start(copy.deepcopy(dataset_state))
        if offset:
            self._read()
            if offset > len(self._rows):
                raise StateDictError(f"IterableDatasetSource state: offset {offset} beyond the re-read "
                                     f"{len(self._rows)} rows")
            self._offset = offset

    def _start(self, dataset_state: dict | None) -> None:
        self.dataset.load_state_dict(dataset_state)
        self._read_state = dataset_state
        self._it = iter(self.dataset.iter(batch_size=self.read_size))

    def _read(self) -> None:
        """The next ``read_size`` rows; ``_read_state`` is the dataset's state before them."""
        if self._rows:  # the previous read is done: the live iterator's state is where this one begins
            self._read_state = copy.deepcopy(self.dataset.state_dict())
        self._rows, self._offset = _columns_to_rows(next(self._it)), 0  # type: ignore[arg-type]

    def next(self) -> dict:
        if self._offset >= len(self._rows):
            self._read()
        row = self._rows[self._offset]
        self._offset += 1
        self._num_yielded += 1
        return row

    def get_state(self) -> dict:
        if self._rows and self._offset >= len(self._rows):  # between reads: start the next one afresh
            state, offset = copy.deepcopy(self.dataset.state_dict()), 0
        else:
            state, offset = copy.deepcopy(self._read_state), self._offset
        return {
            self.EPOCH_KEY: self._epoch,
            self.NUM_YIELDED_KEY: self._num_yielded,
            self.DATASET_KEY: state,
            self.OFFSET_KEY: offset,
            self.READ_SIZE_KEY: self.read_size,
        }


def from_hf(dataset: datasets.Dataset | datasets.IterableDataset, **kwargs: Any) -> BaseNode[dict]:
    """The source node for a Hugging Face dataset: map-style or streaming, chosen by its type."""
    if isinstance(dataset, datasets.Dataset):
        return MapDatasetSource(dataset, **kwargs)
    if isinstance(dataset, datasets.IterableDataset):
        return IterableDatasetSource(dataset, **kwargs)
    raise TypeError(
        f"expected a datasets.Dataset or datasets.IterableDataset, got {type(dataset).__name__}; "
        "for a DatasetDict pick a split, e.g. ds['train']"
    )
