"""The fluent chain users write: ``Pipe.from_hf(ds).tokenize(tok).bucket_batch(...).pack()``.

A :class:`Pipe` only builds ``torchdata.nodes`` nodes; ``.node`` is the last one (compose it with
any other torchdata node) and ``.loader()`` wraps it in a :class:`torchdata.nodes.Loader`, whose
``state_dict()`` / ``load_state_dict()`` resume mid-epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import torch
import torch.utils.data
from torchdata.nodes import BaseNode, Loader, Mapper, ParallelMapper, PinMemory, Prefetcher

from seqbucket_plugin.datapipes.bucketing import BatchingStats, BucketBatcher
from seqbucket_plugin.datapipes.packing import Collate, Pack
from seqbucket_plugin.datapipes.sources import MapDatasetSource, from_hf
from seqbucket_plugin.datapipes.tokenize import (
    TextTokenizer,
    TokenizeNode,
    as_text_tokenizer,
    resolve_pad_id,
    tokenize_dataset,
    tokenize_tagged_dataset,
)
from seqbucket_plugin.errors import StateDictError, WorkerSplitError

__all__ = ["Pipe", "PipeIterableDataset", "PipeLoader", "WorkerSplitError"]


def _batches_per_epoch(batcher: BucketBatcher | None, what: str) -> int:
    """This rank's batches in the epoch being iterated (or the next one, between epochs)."""
    if batcher is None:
        raise TypeError(f"len() of a {what} needs bucket_batch(...) in the chain (it counts batches)")
    if not batcher.indexed:
        raise TypeError(f"len() of a streaming {what}: a stream's number of batches is known only at its end")
    return batcher.num_batches(batcher.current_epoch)


class PipeLoader(Loader):
    """A :class:`torchdata.nodes.Loader` that checks a state's shape before accepting it.

    torchdata's ``Loader`` indexes ``state["root"]`` at the next ``iter()``; a state that is not one
    of its own then fails deep inside with a bare ``KeyError``. This one raises
    :class:`~seqbucket_plugin.errors.StateDictError` at ``load_state_dict`` instead; the nodes
    validate their own parts when the state is applied.
    """

    batcher: BucketBatcher | None = None
    """The pipe's batcher (set by :meth:`Pipe.loader`); ``len()`` and ``set_epoch`` use it."""

    def __len__(self) -> int:
        """This rank's batches per epoch (map-style pipes with a batcher; ``TypeError`` otherwise)."""
        return _batches_per_epoch(self.batcher, "loader")

    def set_epoch(self, epoch: int) -> None:
        """Make the next epoch (the next ``iter()``) epoch ``epoch``: its shuffling and batches are
        those of ``(seed, epoch)``, as ``DistributedSampler.set_epoch`` does. Without it epochs
        count 0, 1, 2... by themselves."""
        if self.batcher is None:
            raise TypeError("set_epoch needs bucket_batch(...) in the chain")
        self.batcher.set_epoch(epoch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or not {"root", "num_yielded"} <= set(state_dict):
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise StateDictError(f"not a loader state (needs 'root' and 'num_yielded'): got {keys}")
        super().load_state_dict(state_dict)


class Pipe:
    """A chain of pipeline nodes, built one stage at a time. Each method returns a new ``Pipe``."""

    def __init__(self, node: BaseNode, *, tokenizer: TextTokenizer | None = None,
                 batcher: BucketBatcher | None = None):
        self.node = node
        self.tokenizer = tokenizer
        self.batcher = batcher

    def _then(self, node: BaseNode, **changes: Any) -> Pipe:
        state = {"tokenizer": self.tokenizer, "batcher": self.batcher, **changes}
        return Pipe(node, **state)

    @classmethod
    def from_hf(cls, dataset: datasets.Dataset | datasets.IterableDataset, **kwargs: Any) -> Pipe:
        """Start from a map-style or streaming Hugging Face dataset (see :func:`~.sources.from_hf`)."""
        return cls(from_hf(dataset, **kwargs))

    @classmethod
    def from_node(cls, node: BaseNode) -> Pipe:
        """Start from any ``torchdata.nodes`` node yielding dict examples."""
        return cls(node)

    def tokenize(self, tokenizer: TextTokenizer | Any, **kwargs: Any) -> Pipe:
        """Tokenize: a cached batched ``Dataset.map`` on map-style data, a :class:`TokenizeNode` otherwise.

        ``tokenizer``: a :class:`TextTokenizer`, a ``tokenizers.Tokenizer`` or a ``transformers``
        fast tokenizer (see :func:`~.tokenize.as_text_tokenizer`). With ``tokens_column=`` the
        examples are pre-tokenized words with tags (tagging); other keyword arguments
        (``keep_columns=`` included, with the same meaning on both) go to
        :func:`tokenize_dataset` / :func:`tokenize_tagged_dataset` (map-style) or
        :class:`TokenizeNode` (streaming).
        """
        tokenizer = as_text_tokenizer(tokenizer)
        if isinstance(self.node, MapDatasetSource):
            if "tokens_column" in kwargs:
                tokenized = tokenize_tagged_dataset(self.node.dataset, tokenizer, **kwargs)
            else:
                tokenized = tokenize_dataset(self.node.dataset, tokenizer, **kwargs)
            return self._then(MapDatasetSource(tokenized), tokenizer=tokenizer)
        return self._then(TokenizeNode(self.node, tokenizer, **kwargs), tokenizer=tokenizer)

    def bucket_batch(self, **kwargs: Any) -> Pipe:
        """Group examples of similar length into batches (:class:`BucketBatcher` arguments)."""
        batcher = BucketBatcher(self.node, **kwargs)
        return self._then(batcher, batcher=batcher)

    def pack(self, *, num_workers: int = 0, method: str = "thread", **kwargs: Any) -> Pipe:
        """Collate each batch into a :class:`PackedBatch`; ``pad_id`` defaults to the tokenizer's.

        ``num_workers`` > 0 collates in a ``torchdata.nodes.ParallelMapper`` of that many threads
        or processes (``method``), in order and with the same resumable state as in-line
        collation. On a small CPU in-line collation is usually faster (see the benchmarks).

        Raises:
            MissingPadTokenError: the pipe's tokenizer has no padding token and no ``pad_id`` was
                given (never padded silently with a real token's id).
        """
        if self.tokenizer is not None or "pad_id" in kwargs:
            kwargs["pad_id"] = resolve_pad_id(self.tokenizer, kwargs.get("pad_id"))
        if self.batcher is not None:
            kwargs.setdefault("pad_to_multiple_of", self.batcher.pad_to_multiple_of)
            if self.node is self.batcher:  # nothing in between reads the examples: stay in Arrow
                self.batcher.enable_columnar()
                kwargs.setdefault("input_key", self.batcher.input_key)
                kwargs.setdefault("length_key", self.batcher.length_key)
        if num_workers > 0:
            return self._then(ParallelMapper(self.node, Collate(**kwargs), num_workers=num_workers, method=method,
                                             in_order=True))
        return self._then(Pack(self.node, **kwargs))

    def map(self, fn: Callable[[Any], Any], *, num_workers: int = 0, method: str = "thread",
            in_order: bool = True) -> Pipe:
        """Apply ``fn`` to every item, in ``num_workers`` threads or processes (order kept by default)."""
        if num_workers == 0:
            return self._then(Mapper(self.node, fn))
        return self._then(ParallelMapper(self.node, fn, num_workers=num_workers, method=method, in_order=in_order))

    def prefetch(self, prefetch_factor: int = 2) -> Pipe:
        """Prepare the next ``prefetch_factor`` items in a background thread."""
        return self._then(Prefetcher(self.node, prefetch_factor=prefetch_factor))

    def pin_memory(self, device: str = "") -> Pipe:
        """Copy items (e.g. :class:`PackedBatch`) to pinned memory in a background thread.

        Without CUDA there is no pinned memory: like ``torch.utils.data.DataLoader(pin_memory=True)``
        this warns (a ``UserWarning``) and passes the batches through unchanged.
        """
        if not torch.cuda.is_available():
            warnings.warn("pin_memory() without CUDA: batches are passed through unpinned", UserWarning,
                          stacklevel=2)
            return self._then(self.node)
        return self._then(PinMemory(self.node, pin_memory_device=device))

    def loader(self, *, restart_on_stop_iteration: bool = True) -> PipeLoader:
        """A :class:`torchdata.nodes.Loader` over the chain (a :class:`PipeLoader`): iterate it once per epoch.

        ``len(loader)`` is this rank's batches per epoch (map-style); ``loader.set_epoch(n)``
        chooses the next epoch's shuffling."""
        loader = PipeLoader(self.node, restart_on_stop_iteration=restart_on_stop_iteration)
        loader.batcher = self.batcher
        return loader

    def __len__(self) -> int:
        """This rank's batches per epoch: map-style pipes with ``bucket_batch``.

        Raises:
            TypeError: a streaming pipe (its length is known only at its end), or no batcher.
        """
        return _batches_per_epoch(self.batcher, "pipe")

    def set_epoch(self, epoch: int) -> None:
        """The next epoch iterated is ``epoch`` (its shuffling is that of ``(seed, epoch)``), like
        ``DistributedSampler.set_epoch``; see :meth:`BucketBatcher.set_epoch`."""
        if self.batcher is None:
            raise TypeError("set_epoch needs bucket_batch(...) in the chain")
        self.batcher.set_epoch(epoch)

    def as_iterable_dataset(self) -> PipeIterableDataset:
        """A ``torch.utils.data.IterableDataset`` over the pipe, for a ``DataLoader`` you already have.

        Use it with ``DataLoader(ds, batch_size=None, num_workers=N)`` (the pipe already batches).
        With ``N`` workers, worker ``w`` builds only batches ``w, w + N, w + 2N...`` of the epoch's
        plan (the others are skipped before any row is read), so the ``DataLoader``, which takes
        one item from each worker in turn, yields every batch exactly once and in the same order
        as the pipe itself. Call ``ds.set_epoch(epoch)`` before each epoch (as with
        ``DistributedSampler``): workers are fresh copies, so they cannot count epochs themselves.

        Raises (when iterated in a worker):
            WorkerSplitError: a streaming pipe with more than one worker (every worker would read
                the whole stream); shard the stream instead, or use ``num_workers=0`` (or
                :meth:`pack`'s own ``num_workers``).
        """
        return PipeIterableDataset(self)

    @property
    def stats(self) -> BatchingStats | None:
        """The bucketing statistics of the current epoch, once ``bucket_batch`` is in the chain."""
        return None if self.batcher is None else self.batcher.stats

    def __iter__(self):
        return iter(self.loader())


class PipeIterableDataset(torch.utils.data.IterableDataset):
    """The ``torch.utils.data`` view of a :class:`Pipe` (see :meth:`Pipe.as_iterable_dataset`)."""

    def __init__(self, pipe: Pipe):
        super().__init__()
        self.pipe = pipe
        self._epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """The next iteration (in every worker) is epoch ``epoch``."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        """This rank's batches per epoch (all workers together)."""
        return len(self.pipe)

    def __iter__(self) -> Iterator[Any]:
        batcher = self.pipe.batcher
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        if workers > 1:
            if batcher is None or not batcher.indexed:
                raise WorkerSplitError(
                    "a streaming pipe (or one without bucket_batch) cannot be split across "
                    f"{workers} DataLoader workers without duplicates: every worker would read the whole "
                    "stream. Shard the stream (datasets.distributed.split_dataset_by_node), or use "
                    "num_workers=0 (pack(num_workers=...) collates in parallel inside the pipe)")
            batcher.split_workers(worker, workers)
        if self._epoch is not None and batcher is not None:
            batcher.set_epoch(self._epoch)
            self._epoch += 1  # in-process (num_workers=0, persistent workers): the next one follows
        loader = PipeLoader(self.pipe.node)
        yield from loader
