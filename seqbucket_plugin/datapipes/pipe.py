"""The fluent chain users write: ``Pipe.from_hf(ds).tokenize(tok).bucket_batch(...).pack()``.

A :class:`Pipe` only builds ``torchdata.nodes`` nodes; ``.node`` is the last one (compose it with
any other torchdata node) and ``.loader()`` wraps it in a :class:`torchdata.nodes.Loader`, whose
``state_dict()`` / ``load_state_dict()`` resume mid-epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
from torchdata.nodes import BaseNode, Loader, Mapper, ParallelMapper, PinMemory, Prefetcher

from seqbucket_plugin.datapipes.bucketing import BatchingStats, BucketBatcher
from seqbucket_plugin.datapipes.packing import Collate, Pack
from seqbucket_plugin.datapipes.sources import MapDatasetSource, from_hf
from seqbucket_plugin.datapipes.tokenize import (
    TextTokenizer,
    TokenizeNode,
    tokenize_dataset,
    tokenize_tagged_dataset,
)
from seqbucket_plugin.errors import StateDictError

__all__ = ["Pipe", "PipeLoader"]


class PipeLoader(Loader):
    """A :class:`torchdata.nodes.Loader` that checks a state's shape before accepting it.

    torchdata's ``Loader`` indexes ``state["root"]`` at the next ``iter()``; a state that is not one
    of its own then fails deep inside with a bare ``KeyError``. This one raises
    :class:`~seqbucket_plugin.errors.StateDictError` at ``load_state_dict`` instead; the nodes
    validate their own parts when the state is applied.
    """

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

    def tokenize(self, tokenizer: TextTokenizer, **kwargs: Any) -> Pipe:
        """Tokenize: a cached batched ``Dataset.map`` on map-style data, a :class:`TokenizeNode` otherwise.

        With ``tokens_column=`` the examples are pre-tokenized words with tags (tagging); other
        keyword arguments go to :func:`tokenize_dataset` / :func:`tokenize_tagged_dataset`
        (map-style) or :class:`TokenizeNode` (streaming).
        """
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
        """
        if "pad_id" not in kwargs and self.tokenizer is not None and self.tokenizer.pad_id is not None:
            kwargs["pad_id"] = self.tokenizer.pad_id
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
        """Copy items (e.g. :class:`PackedBatch`) to pinned memory in a background thread (CUDA only)."""
        return self._then(PinMemory(self.node, pin_memory_device=device))

    def loader(self, *, restart_on_stop_iteration: bool = True) -> PipeLoader:
        """A :class:`torchdata.nodes.Loader` over the chain (a :class:`PipeLoader`): iterate it once per epoch."""
        return PipeLoader(self.node, restart_on_stop_iteration=restart_on_stop_iteration)

    @property
    def stats(self) -> BatchingStats | None:
        """The bucketing statistics of the current epoch, once ``bucket_batch`` is in the chain."""
        return None if self.batcher is None else self.batcher.stats

    def __iter__(self):
        return iter(self.loader())
