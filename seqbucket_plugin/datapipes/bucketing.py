"""Length bucketing: :class:`BucketBatcher` groups examples of similar length into batches.

How an epoch is planned (all numpy, over lengths only; examples are fetched per batch):

1. Bucket boundaries are estimated once from a random sample of lengths (or given). Each bucket
   holds an equal share of ``length / sqrt(density)``, where density is the share of examples per
   unit of log-length: dense length ranges get narrow buckets that still hold many batches (so
   batches differ from epoch to epoch), sparse ranges get buckets that are narrow in tokens.
   With a token budget, buckets are also split where ``max_tokens // length`` changes among the
   longest rows, so a bucket of long items is not cut to the rows its very longest item allows.
2. Bucket by bucket, shortest first, the rows per batch follow from the bucket's longest item
   (``max_tokens // longest``) or are ``batch_size``. The bucket's items, sorted by length with
   ties broken at random, are dealt into whole batches: each run of ``num_batches`` neighbours
   gives one item to every batch, in a fresh random order every epoch (drawn from
   ``(seed, epoch)``). Batches thus span their bucket evenly and items of nearly equal length
   rarely meet again the next epoch. The few longest items that do not fill a batch roll into
   the next bucket; only the very last batch of an epoch can be partial.
3. The batch order is shuffled (no length-sorted sawtooth); optionally the longest batch goes
   first so an out-of-memory error shows at step 1.

Map-style sources that expose their length column (:class:`~.sources.MapDatasetSource`) are
planned over the whole epoch and fetched by index: the state is ``(epoch, batches yielded)`` and a
restore re-plans from the seed, never replaying data. Other sources are read in chunks of
``buffer_size`` examples (memory O(buffer)); each chunk is planned the same way, and the state
holds the source's state where its oldest held example was read plus the position in the chunk's
plan.

A stream read in the same order every epoch (a list, files read in order) would give every chunk
the same examples every epoch, and neighbours in length would meet again often. So with
``shuffle`` each chunk holds back a random half of the examples it reads for the next chunk (see
:attr:`BucketBatcher.HOLD_BACK`): chunk ``c`` plans the examples the previous chunk held back plus
the rest of its own read, so chunks are random, overlapping windows of the stream that change
every epoch. Who is held back is drawn from ``(seed, epoch, c)``; a restore re-reads the previous
chunk's read from the saved source state and draws again, so resuming stays exact. At most
``buffer_size x world_size`` examples are held at any time.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch.distributed as dist
from torchdata.nodes import BaseNode

from seqbucket_plugin.datapipes.packing import ColumnarBatch, ExampleBatch
from seqbucket_plugin.errors import MissingColumnError, OversizeExampleError, StateDictError

__all__ = ["BatchPlan", "BatchingStats", "BucketBatcher", "estimate_boundaries", "plan_batches"]

OversizePolicy = Literal["error", "skip", "truncate"]
_ROW_CLASSES = 16
_HOLD_STREAM = 2**31 - 2  # rng stream of the hold-back draws (the plans use (epoch, chunk))


def estimate_boundaries(lengths: np.ndarray, num_buckets: int = 66, density_power: float = 0.5) -> np.ndarray:
    """Bucket upper edges (ascending int64) estimated from a sample of lengths.

    Bucket ``k`` holds lengths in ``(edges[k-1], edges[k]]``; lengths above the last edge form the
    last bucket. Each bucket gets an equal share of ``length * density ** -density_power`` where
    density is estimated by a log-length histogram of the sample. ``density_power=0`` gives
    buckets of equal total tokens (lhotse's choice); larger values move buckets from dense,
    short ranges to sparse, long ones.
    """
    sample = np.sort(np.asarray(lengths, dtype=np.float64))
    sample = np.maximum(sample, 1.0)
    if sample.size == 0 or num_buckets <= 1:
        return np.zeros(0, dtype=np.int64)
    log_lengths = np.log2(sample)
    bins = max(4, int(math.ceil((log_lengths[-1] - log_lengths[0]) * 8)))
    counts, edges = np.histogram(log_lengths, bins=bins)
    density = np.convolve(counts.astype(np.float64), np.ones(3) / 3.0, mode="same") + 0.5
    bin_of = np.clip(np.searchsorted(edges, log_lengths, side="right") - 1, 0, bins - 1)
    mass = np.cumsum(sample * density[bin_of] ** -density_power)
    targets = mass[-1] * np.arange(1, num_buckets) / num_buckets
    cut = np.minimum(np.searchsorted(mass, targets), sample.size - 1)
    return np.unique(sample[cut].astype(np.int64))


def _padded(lengths: np.ndarray, multiple: int | None) -> np.ndarray:
    if multiple and multiple > 1:
        return -(-lengths // multiple) * multiple
    return lengths


@dataclasses.dataclass
class BatchPlan:
    """Batches of indices in bucket order (the caller shuffles the order).

    Only the last batch may be partial (fewer rows than its bucket allows); ``last_is_partial``
    says whether it is.
    """

    batches: list[np.ndarray]
    last_is_partial: bool


def _deal(count: int, num_batches: int, rng: np.random.Generator | None) -> np.ndarray:
    """Batch ids for ``count`` length-sorted items dealt into ``num_batches`` equal batches.

    Without ``rng`` batches are contiguous runs (the tightest). With ``rng`` the sorted items are
    cut into strata of ``num_batches`` neighbours (at a random offset) and each stratum gives one
    item to every batch in random order: every batch spans the bucket evenly, and items of
    nearly equal length rarely meet in a batch again the next epoch.
    """
    rows = count // num_batches
    if rng is None:
        return np.arange(count) // rows
    stratum = (np.arange(count) + rng.integers(num_batches)) // num_batches
    order = np.lexsort((rng.random(count), stratum))
    batch_id = np.empty(count, dtype=np.int64)
    batch_id[order] = np.arange(count) % num_batches
    return batch_id


def plan_batches(
    lengths: np.ndarray,
    *,
    boundaries: np.ndarray,
    rng: np.random.Generator | None,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    max_batch_size: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> BatchPlan:
    """Cut ``lengths`` into batches of indices, bucket by bucket, shortest bucket first.

    Exactly one of ``batch_size`` / ``max_tokens``. In each bucket (plus the items rolled over
    from the previous one) the rows per batch are ``batch_size``, or ``max_tokens // longest``
    (the longest rounded up to ``pad_to_multiple_of``, at least 1), capped by ``max_batch_size``.
    The bucket's shortest items fill whole batches, dealt by :func:`_deal`; the few longest
    left over roll into the next, longer bucket. The last bucket ends with one partial batch.
    So every batch satisfies ``rows * max(1, padded longest) <= max_tokens`` provided every single
    example does (callers handle oversize examples first). ``rng=None`` gives the same
    length-sorted batches every time. Cost: one sort per bucket, no Python loop over items.
    """
    if (batch_size is None) == (max_tokens is None):
        raise ValueError("give exactly one of batch_size or max_tokens")
    if lengths.size == 0:
        return BatchPlan([], False)
    if max_tokens is not None:
        # Long rows: a bucket never spans two values of max_tokens // length among the first
        # few, so a bucket of long items is not cut to the rows its very longest item allows.
        boundaries = np.union1d(boundaries, max_tokens // np.arange(1, _ROW_CLASSES + 1))
    bucket = np.searchsorted(boundaries, lengths, side="left")
    ties = rng.random(lengths.size) if rng is not None else np.arange(lengths.size)
    by_bucket = np.lexsort((ties, lengths, bucket))
    starts = np.searchsorted(bucket[by_bucket], np.arange(int(bucket.max()) + 2))
    cost_length = np.maximum(_padded(lengths, pad_to_multiple_of), 1)

    batches: list[np.ndarray] = []
    carry = np.zeros(0, dtype=np.int64)
    last_is_partial = False
    num_buckets = starts.size - 1
    for k in range(num_buckets):
        members = by_bucket[starts[k]:starts[k + 1]]
        if members.size == 0 and carry.size == 0:
            continue
        # Carried items come from the previous bucket, so they are the shortest here.
        items = np.concatenate([carry, members])
        if batch_size is not None:
            rows = batch_size
        else:
            rows = max(1, max_tokens // int(cost_length[items[-1]]))
        if max_batch_size is not None:
            rows = min(rows, max_batch_size)
        full = items.size // rows
        dealt, carry = items[: full * rows], items[full * rows:]
        if full:
            batch_id = _deal(dealt.size, full, rng)
            grouped = dealt[np.argsort(batch_id, kind="stable")]
            batches.extend(grouped.reshape(full, rows))
        if k == num_buckets - 1 and carry.size:
            batches.append(carry)
            last_is_partial = True
    return BatchPlan(batches, last_is_partial)


@dataclasses.dataclass
class BatchingStats:
    """What the batcher did in the current epoch (on this rank), up to the last batch yielded.

    ``padding_efficiency`` = real tokens / (rows x longest row), summed over batches, with the
    longest row rounded up to ``pad_to_multiple_of``. ``batch_size_histogram`` maps rows to the
    number of batches with that many rows. The drop counters cover the epoch's plan so far:
    ``dropped_last`` examples in partial batches removed by ``drop_last``, ``skipped_oversize`` and
    ``truncated_oversize`` examples longer than the budget, ``padding_repeats`` examples repeated so
    that every rank gets the same number of batches.
    """

    epoch: int = 0
    batches: int = 0
    examples: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    dropped_last: int = 0
    skipped_oversize: int = 0
    truncated_oversize: int = 0
    padding_repeats: int = 0
    batch_size_histogram: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def padding_efficiency(self) -> float:
        return 1.0 if self.padded_tokens == 0 else self.real_tokens / self.padded_tokens

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["padding_efficiency"] = self.padding_efficiency
        return out


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BucketBatcher(BaseNode[list[dict]]):
    """Batches examples of similar length: high padding efficiency, random batches every epoch.

    Args:
        source: a node of dict examples, each with an int ``length_key`` (computed at
            tokenization). A source with random access by index (``lengths(key)`` and
            ``take(indices)``, like :class:`~.sources.MapDatasetSource`) takes the fast path.
        batch_size: rows per batch. Exactly one of ``batch_size`` / ``max_tokens``.
        max_tokens: budget per batch counting padding: ``rows x longest <= max_tokens``, with the
            longest rounded up to ``pad_to_multiple_of``.
        max_batch_size: optional cap on rows per batch.
        length_key, input_key: the example keys of the length and of the token ids (used when
            truncating oversize examples; a ``labels`` list of token labels is truncated alike).
        shuffle: random batches and batch order (``seed`` and the epoch decide them). False gives
            the same length-ordered batches every epoch, for evaluation.
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        drop_last: drop a partial last batch (counted in :attr:`stats`).
        num_buckets: number of buckets when boundaries are estimated; more buckets trade
            randomness (batches repeat more across epochs) for efficiency.
        boundaries: explicit bucket upper edges, instead of estimating them.
        buffer_size: the most examples held at once from a source without random access (read in
            chunks; with ``shuffle`` a random share of each chunk's read waits for the next chunk,
            so chunks change every epoch even when the stream's order does not; see
            :attr:`HOLD_BACK`).
        sample_size: lengths sampled at random to estimate boundaries on the map-style path.
        oversize: an example alone over ``max_tokens``: ``"error"`` raises
            :class:`~seqbucket_plugin.errors.OversizeExampleError`, ``"skip"`` drops it,
            ``"truncate"`` cuts it to the budget; skipped and truncated examples are counted.
        longest_first: put the batch with the longest row first in each epoch, so an
            out-of-memory error shows at step 1.
        rank, world_size: this process's share (default: from ``torch.distributed`` when
            initialised). Every rank plans the same epoch and takes every ``world_size``-th
            batch; the batch count is made divisible by splitting batches (or, with fewer
            examples than ranks, by repeating examples, counted), so all ranks take the same
            number of steps. Every rank must see the same source.

    Yields:
        :class:`~.packing.ExampleBatch` (a ``list[dict]``): the examples of a batch, in the
        plan's order (not the dataset's), with ``positions``: each example's dataset row (a
        map-style source) or position in the stream (counted from 0 every epoch). Packed
        batches carry them as ``PackedBatch.positions``; with ``shuffle=False`` batches still come
        shortest first, so results are put back in dataset order by ``positions``.
    """

    EPOCH_KEY = "epoch"
    CHUNK_KEY = "chunk"
    POSITION_KEY = "position"
    SOURCE_KEY = "source"
    STATS_KEY = "stats"
    BOUNDARIES_KEY = "boundaries"
    STREAM_CUT_KEY = "stream_cut"
    #: what the state was planned from (see :meth:`planned_from`); a state of another pipeline is refused
    PLANNED_FROM_KEY = "planned_from"
    #: with ``shuffle``, the share of a chunk's read (of a stream) held back for the next chunk.
    #: The first chunk then plans about ``(1 - HOLD_BACK) x buffer_size`` examples, later ones about
    #: ``buffer_size / (1 + HOLD_BACK)`` (the last: what is left), in random windows of the stream
    #: that differ every epoch; 0 cuts contiguous chunks of ``buffer_size``, the same every epoch.
    HOLD_BACK: float = 0.5

    def __init__(
        self,
        source: BaseNode[dict],
        *,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        max_batch_size: int | None = None,
        length_key: str = "length",
        input_key: str = "input_ids",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        pad_to_multiple_of: int | None = None,
        num_buckets: int = 66,
        boundaries: Sequence[int] | None = None,
        buffer_size: int = 20_000,
        sample_size: int = 100_000,
        oversize: OversizePolicy = "error",
        longest_first: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        if (batch_size is None) == (max_tokens is None):
            raise ValueError("give exactly one of batch_size or max_tokens")
        for name, value in (("batch_size", batch_size), ("max_tokens", max_tokens),
                            ("max_batch_size", max_batch_size), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if oversize not in ("error", "skip", "truncate"):
            raise ValueError(f"oversize must be 'error', 'skip' or 'truncate', got {oversize!r}")
        if buffer_size < 1 or num_buckets < 1:
            raise ValueError("buffer_size and num_buckets must be positive")
        if seed < 0:
            raise ValueError("seed must be a non-negative int")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if rank is None:
            rank, world_size = _dist_rank_world()
        assert world_size is not None
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")

        self.source = source
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.length_key = length_key
        self.input_key = input_key
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.pad_to_multiple_of = pad_to_multiple_of
        self.num_buckets = num_buckets
        self.buffer_size = buffer_size
        self.sample_size = sample_size
        self.oversize = oversize
        self.longest_first = longest_first
        self.rank = rank
        self.world_size = world_size
        self.indexed = callable(getattr(source, "lengths", None)) and callable(getattr(source, "take", None))
        self.columnar = False  # see enable_columnar

        self._boundaries = None if boundaries is None else np.unique(np.asarray(boundaries, dtype=np.int64))
        self._all_lengths: np.ndarray | None = None
        self._epoch = -1
        self._chunk = 0
        self._position = 0
        self._chunk_source_state: dict | None = None  # where the oldest held example was read
        self._read_source_state: dict | None = None  # where this chunk's own read began
        self._read_start = 0  # stream position of this chunk's own read
        self._held: list[dict] = []  # examples held back for the next chunk, and their positions
        self._held_positions = np.zeros(0, dtype=np.int64)
        self._positions = np.zeros(0, dtype=np.int64)  # stream positions of the chunk's items
        self._items: list[dict] = []
        self._lengths = np.zeros(0, dtype=np.int64)
        self._plan: list[np.ndarray] = []
        self._truncate_to = self._budget_length()
        self._exhausted = False
        self._worker, self._num_workers = 0, 1
        self._lengths_digest: tuple[int, str] | None = None
        self.stats = BatchingStats()

    # ------------------------------------------------------------------ planning
    def _budget_length(self) -> int | None:
        """The longest length a single example may have, or None without a token budget."""
        if self.max_tokens is None:
            return None
        multiple = self.pad_to_multiple_of or 1
        return (self.max_tokens // multiple) * multiple

    def _rng(self, *extra: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *extra])

    def _ensure_boundaries(self, lengths: np.ndarray) -> None:
        if self._boundaries is not None:
            return
        if lengths.size > self.sample_size:
            lengths = lengths[self._rng(2**31 - 1).choice(lengths.size, self.sample_size, replace=False)]
        self._boundaries = estimate_boundaries(lengths, self.num_buckets)

    def _fitting(self, lengths: np.ndarray) -> np.ndarray:
        """``lengths`` as the plan sees them: oversize ones dropped (``skip``) or cut (otherwise)."""
        limit = self._budget_length()
        if limit is None:
            return lengths
        if self.oversize == "skip":
            return lengths[np.maximum(_padded(lengths, self.pad_to_multiple_of), 1) <= self.max_tokens]
        return np.minimum(lengths, limit)

    def _plan_for(self, lengths: np.ndarray, epoch: int, chunk: int) -> tuple[list[np.ndarray], BatchingStats]:
        """This rank's batches (indices into ``lengths``) and the plan-level counters."""
        stats = BatchingStats(epoch=epoch)
        keep = np.arange(lengths.size)
        limit = self._budget_length()
        if limit is not None:
            oversize = np.flatnonzero(np.maximum(_padded(lengths, self.pad_to_multiple_of), 1) > self.max_tokens)
            if oversize.size:
                if self.oversize == "error":
                    first = int(oversize[0])
                    raise OversizeExampleError(
                        f"{oversize.size} example(s) do not fit max_tokens={self.max_tokens} even alone "
                        f"(e.g. example {first} of this {'epoch' if self.indexed else 'chunk'} has "
                        f"{self.length_key}={int(lengths[first])}); raise max_tokens, truncate at "
                        "tokenization, or pass oversize='skip' or 'truncate'"
                    )
                if self.oversize == "skip":
                    keep = np.setdiff1d(keep, oversize, assume_unique=True)
                    stats.skipped_oversize = int(oversize.size)
                else:
                    lengths = lengths.copy()
                    lengths[oversize] = limit
                    stats.truncated_oversize = int(oversize.size)
        self._ensure_boundaries(lengths[keep])
        rng = self._rng(epoch, chunk) if self.shuffle else None
        plan = plan_batches(
            lengths[keep], boundaries=self._boundaries, rng=rng, batch_size=self.batch_size,
            max_tokens=self.max_tokens, max_batch_size=self.max_batch_size,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        batches = [keep[b] for b in plan.batches]
        if self.drop_last and plan.last_is_partial:
            stats.dropped_last = int(batches.pop().size)
        if self.world_size > 1:
            batches, stats.padding_repeats = self._divisible(batches)
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        batches = batches[self.rank :: self.world_size]
        if self.longest_first and batches:
            longest = max(range(len(batches)), key=lambda i: (lengths[batches[i]].max(), batches[i].size))
            batches.insert(0, batches.pop(longest))
        return batches, stats

    def _divisible(self, batches: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
        """Split (or, failing that, pad) the batch list to a multiple of ``world_size``."""
        missing = -len(batches) % self.world_size
        repeats = 0
        while missing:
            widest = max(range(len(batches)), key=lambda i: batches[i].size) if batches else None
            if widest is not None and batches[widest].size >= 2:
                batch = batches.pop(widest)
                half = batch.size // 2
                batches.extend([batch[:half], batch[half:]])
            else:
                # Fewer examples than ranks: repeat single examples (counted).
                donor = batches[len(batches) - 1 - (repeats % len(batches))] if batches else None
                if donor is None:
                    break
                batches.append(donor[:1].copy())
                repeats += 1
            missing -= 1
        return batches, repeats

    # ------------------------------------------------------------------ chunks
    def _load_indexed_epoch(self) -> None:
        if self._all_lengths is None:
            self._all_lengths = np.asarray(self.source.lengths(self.length_key), dtype=np.int64)
        self._lengths = self._all_lengths
        self._plan, self.stats = self._plan_for(self._lengths, self._epoch, 0)

    def _holds_back(self) -> bool:
        return self.shuffle and self.buffer_size * self.world_size >= 2 and self.HOLD_BACK > 0

    def _held_back(self, epoch: int, chunk: int, count: int) -> np.ndarray:
        """Which of the ``count`` examples read for ``chunk`` wait for the next chunk (bool)."""
        if not self._holds_back() or count == 0:
            return np.zeros(count, dtype=bool)
        return self._rng(_HOLD_STREAM, epoch, chunk).random(count) < self.HOLD_BACK

    def _read(self, count: int) -> list[dict]:
        items = []
        for _ in range(count):
            try:
                items.append(next(self.source))
            except StopIteration:
                self._exhausted = True
                break
        return items

    def _restore_held(self, source_state: dict) -> None:
        """Restoring chunk ``self._chunk``: reset the source to ``source_state`` (where the previous
        chunk's read began, or this chunk's for the first) and re-read the examples that the
        previous chunk held back, drawn again from the seed. Cost: re-drawing the hold-backs of
        every earlier chunk of the epoch (numpy, no data) and re-reading one read."""
        self.source.reset(source_state)
        self._held, self._held_positions, self._read_start = [], np.zeros(0, dtype=np.int64), 0
        if self._chunk == 0 or not self._holds_back():
            self._read_start = self._chunk * self.buffer_size * self.world_size
            return
        capacity = self.buffer_size * self.world_size
        start, held = 0, 0
        for chunk in range(self._chunk - 1):  # every earlier chunk read its capacity in full
            count = capacity - held
            held = int(self._held_back(self._epoch, chunk, count).sum())
            start += count
        count = capacity - held
        previous = self._read(count)
        if len(previous) < count:
            raise StateDictError(f"the source ended after {len(previous)} of the {count} examples it gave before "
                                 "at this point of the epoch; was it changed?")
        keep = np.flatnonzero(self._held_back(self._epoch, self._chunk - 1, count))
        self._held = [previous[i] for i in keep]
        self._held_positions = start + keep
        self._read_start = start + count

    def _load_chunk(self, source_state: dict | None) -> None:
        """Read the next chunk from the source and plan it (from ``source_state`` when restoring).

        The chunk is what the previous chunk held back plus a read that fills the buffer; with
        :meth:`_holds_back` a random share of that read is held back for the next chunk (none once
        the source ends)."""
        if source_state is not None:
            self._restore_held(source_state)
            self._chunk_source_state = source_state
        else:
            # a restore of this chunk re-reads the previous chunk's read (see _restore_held)
            held_from_previous = self._chunk > 0 and self._holds_back()
            self._chunk_source_state = self._read_source_state if held_from_previous else self.source.state_dict()
        self._read_source_state = self.source.state_dict()
        carried, carried_positions = self._held, self._held_positions
        read = self._read(self.buffer_size * self.world_size - len(carried))
        if read and self.length_key not in read[0]:
            raise MissingColumnError(self.length_key, list(read[0]))
        read_positions = self._read_start + np.arange(len(read))
        if self._boundaries is None and read:
            # from the whole first read (held-back examples too): a larger sample than the chunk
            self._ensure_boundaries(self._fitting(np.fromiter((it[self.length_key] for it in read),
                                                              dtype=np.int64, count=len(read))))
        back = self._held_back(self._epoch, self._chunk, len(read))
        if self._exhausted:
            back[:] = False  # nothing follows: plan everything now
        now = np.flatnonzero(~back)
        items = carried + [read[i] for i in now]
        self._positions = np.concatenate([carried_positions, read_positions[now]])
        held = np.flatnonzero(back)
        self._held, self._held_positions = [read[i] for i in held], read_positions[held]
        self._read_start += len(read)
        self._items = items
        self._lengths = np.fromiter((it[self.length_key] for it in items), dtype=np.int64, count=len(items))
        self._plan, chunk_stats = self._plan_for(self._lengths, self._epoch, self._chunk)
        for name in ("dropped_last", "skipped_oversize", "truncated_oversize", "padding_repeats"):
            setattr(self.stats, name, getattr(self.stats, name) + getattr(chunk_stats, name))

    def _fetch(self, indices: np.ndarray) -> ExampleBatch | ColumnarBatch:
        limit = self._truncate_to
        # map-style: the plan's indices are dataset rows; a stream: indices into the chunk's items
        positions = np.asarray(indices, dtype=np.int64) if self.indexed else self._positions[indices]
        if self.columnar:
            truncate_to = limit if self.oversize == "truncate" else None
            return ColumnarBatch(self.source.take_table(indices), truncate_to=truncate_to, positions=positions)
        if self.indexed:
            examples = self.source.take(indices)
        else:
            examples = [self._items[i] for i in indices]
        if self.oversize == "truncate" and limit is not None:
            examples = [self._truncate(e, limit) if e[self.length_key] > limit else e for e in examples]
        return ExampleBatch(examples, positions)

    def _truncate(self, example: dict, limit: int) -> dict:
        example = dict(example)
        example[self.input_key] = example[self.input_key][:limit]
        if isinstance(example.get("labels"), (list, tuple, np.ndarray)):
            example["labels"] = example["labels"][:limit]
        example[self.length_key] = limit
        return example

    # ------------------------------------------------------------------ node protocol
    def reset(self, initial_state: dict | None = None):
        super().reset(initial_state)
        self._exhausted = False
        if initial_state is None:
            self._epoch += 1
            self._chunk = 0
            self._position = 0
            self.stats = BatchingStats(epoch=self._epoch)
            if self.indexed:
                self._load_indexed_epoch()
            else:
                self.source.reset(None)
                self._held, self._held_positions, self._read_start = [], np.zeros(0, dtype=np.int64), 0
                self._load_chunk(None)
            return
        epoch, chunk, position, stats, boundaries, source_state = self._parse_state(initial_state)
        self._check_planned_from(initial_state.get(self.PLANNED_FROM_KEY))
        if not self.indexed and initial_state.get(self.STREAM_CUT_KEY) != self._stream_cut():
            raise StateDictError(
                f"this stream state was saved with {self.STREAM_CUT_KEY}="
                f"{initial_state.get(self.STREAM_CUT_KEY)!r} (chunks cut another way: an earlier version of "
                f"seqbucket_plugin, or another shuffle setting); this batcher cuts {self._stream_cut()!r}. "
                "Start the epoch again rather than resume inside it.")
        self._epoch, self._chunk = epoch, chunk
        if boundaries is not None:
            self._boundaries = boundaries
        if self.indexed:
            self._load_indexed_epoch()
        else:
            try:
                self._load_chunk(source_state)
            except (KeyError, TypeError, ValueError, IndexError) as error:
                raise StateDictError(f"the source rejected its saved state: {error!r}") from error
        self.stats = stats
        if position > len(self._plan):
            raise StateDictError(f"state position {position} is past the {len(self._plan)} planned batches")
        self._position = position

    def _parse_state(self, state: Any) -> tuple[int, int, int, BatchingStats, np.ndarray | None, Any]:
        """Validate a saved state; every defect raises :class:`StateDictError` naming it."""
        if not isinstance(state, dict):
            raise StateDictError(f"a BucketBatcher state is a dict, got {type(state).__name__}")
        missing = [k for k in (self.EPOCH_KEY, self.CHUNK_KEY, self.POSITION_KEY, self.STATS_KEY,
                               self.BOUNDARIES_KEY, self.SOURCE_KEY) if k not in state]
        if missing:
            raise StateDictError(f"not a BucketBatcher state: missing {missing}")

        def count(value: Any, name: str) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise StateDictError(f"state {name!r} must be a non-negative int, got {value!r}")
            return int(value)

        epoch = count(state[self.EPOCH_KEY], self.EPOCH_KEY)
        chunk = count(state[self.CHUNK_KEY], self.CHUNK_KEY)
        position = count(state[self.POSITION_KEY], self.POSITION_KEY)

        raw_stats = state[self.STATS_KEY]
        if not isinstance(raw_stats, dict):
            raise StateDictError(f"state 'stats' must be a dict, got {type(raw_stats).__name__}")
        fields = {f.name for f in dataclasses.fields(BatchingStats)} - {"batch_size_histogram"}
        unknown = set(raw_stats) - fields - {"batch_size_histogram", "padding_efficiency"}
        if unknown:
            raise StateDictError(f"state 'stats' has unknown keys {sorted(unknown)}")
        histogram = raw_stats.get("batch_size_histogram", {})
        if not isinstance(histogram, dict):
            raise StateDictError("state 'stats.batch_size_histogram' must be a dict of rows -> batches")
        try:
            histogram = {count(int(k), "stats.batch_size_histogram key"): count(v, "stats.batch_size_histogram")
                         for k, v in histogram.items()}
        except ValueError as error:
            raise StateDictError(f"state 'stats.batch_size_histogram' has a bad key: {error}") from error
        stats = BatchingStats(
            **{name: count(raw_stats[name], f"stats.{name}") for name in fields if name in raw_stats},
            batch_size_histogram=histogram,
        )

        boundaries = state[self.BOUNDARIES_KEY]
        if boundaries is not None:
            if not isinstance(boundaries, (list, tuple)) or not all(
                isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 2**62 for b in boundaries
            ):
                raise StateDictError("state 'boundaries' must be a list of non-negative ints")
            boundaries = np.asarray(boundaries, dtype=np.int64)
            if np.any(np.diff(boundaries) <= 0):
                raise StateDictError("state 'boundaries' must be strictly increasing")
        source_state = state[self.SOURCE_KEY]
        if not self.indexed and not isinstance(source_state, dict):
            raise StateDictError(f"state 'source' must be the source's state dict, got {type(source_state).__name__}")
        return epoch, chunk, position, stats, boundaries, source_state

    def next(self) -> ExampleBatch | ColumnarBatch:
        while self._position >= len(self._plan):
            if self.indexed or self._exhausted:
                raise StopIteration
            self._chunk += 1
            self._position = 0
            self._load_chunk(None)
        if self._num_workers > 1:  # a DataLoader worker builds only its own share of the batches
            while self._position < len(self._plan) and self._position % self._num_workers != self._worker:
                self._position += 1
            if self._position >= len(self._plan):
                raise StopIteration
        indices = self._plan[self._position]
        self._position += 1
        batch = self._fetch(indices)
        lengths = np.minimum(self._lengths[indices], self._truncate_to or np.iinfo(np.int64).max)
        stats = self.stats
        stats.batches += 1
        stats.examples += len(batch)
        stats.real_tokens += int(lengths.sum())
        stats.padded_tokens += len(batch) * int(_padded(lengths, self.pad_to_multiple_of).max(initial=0))
        stats.batch_size_histogram[len(batch)] = stats.batch_size_histogram.get(len(batch), 0) + 1
        return batch

    def get_state(self) -> dict:
        return {
            self.EPOCH_KEY: self._epoch,
            self.CHUNK_KEY: self._chunk,
            self.POSITION_KEY: self._position,
            self.SOURCE_KEY: None if self.indexed else self._chunk_source_state,
            self.STREAM_CUT_KEY: None if self.indexed else self._stream_cut(),
            self.BOUNDARIES_KEY: None if self._boundaries is None else self._boundaries.tolist(),
            self.STATS_KEY: self.stats.as_dict(),
            self.PLANNED_FROM_KEY: self.planned_from(),
        }

    def planned_from(self) -> dict[str, Any]:
        """What this batcher plans from, saved with its state: the settings that shape the batches
        (seed, order, budget) and, for a map-style source, the number of examples and a CRC32 of
        their lengths. :meth:`reset` refuses a state whose record differs (a state of another
        pipeline would silently skip or repeat examples). Ranks are not recorded: every rank of a
        run restores the same state."""
        record: dict[str, Any] = {
            "seed": self.seed, "shuffle": self.shuffle, "batch_size": self.batch_size, "max_tokens": self.max_tokens,
            "max_batch_size": self.max_batch_size, "pad_to_multiple_of": self.pad_to_multiple_of,
            "drop_last": self.drop_last, "oversize": self.oversize, "longest_first": self.longest_first,
        }
        if self.indexed:
            record["examples"], record["lengths_crc32"] = self._digest_lengths()
        return record

    def _digest_lengths(self) -> tuple[int, str]:
        if self._lengths_digest is None:
            if self._all_lengths is None:
                self._all_lengths = np.asarray(self.source.lengths(self.length_key), dtype=np.int64)
            data = np.ascontiguousarray(self._all_lengths, dtype=np.int64).tobytes()
            self._lengths_digest = (int(self._all_lengths.size), f"{zlib.crc32(data):08x}")
        return self._lengths_digest

    def _check_planned_from(self, saved: Any) -> None:
        """Refuse a state planned from other data or settings (a state without the record, from
        an earlier version, is accepted as before)."""
        if saved is None:
            return
        if not isinstance(saved, dict):
            raise StateDictError(f"state {self.PLANNED_FROM_KEY!r} must be a dict, got {type(saved).__name__}")
        mine = self.planned_from()
        differ = [f"{key}: saved {saved.get(key)!r}, this batcher {mine.get(key)!r}"
                  for key in sorted(set(saved) | set(mine)) if saved.get(key) != mine.get(key)]
        if differ:
            raise StateDictError("this state was saved by a batcher over other data or settings ("
                                 + "; ".join(differ) + "); restoring it would skip or repeat examples. "
                                 "Load it into the pipeline that saved it, or start the epoch without it.")

    def _stream_cut(self) -> str:
        """How a stream is cut into chunks, saved with the state (a restore must cut the same way)."""
        return f"hold-back {self.HOLD_BACK:g}" if self._holds_back() else "contiguous"

    def enable_columnar(self) -> bool:
        """Yield :class:`ColumnarBatch` es (rows still in Arrow, for :func:`collate_table`) instead
        of lists of dicts, when the source can (a map-style source with ``take_table``). What
        ``Pipe.pack()`` asks for when it directly follows. Returns whether batches are columnar."""
        self.columnar = self.indexed and callable(getattr(self.source, "take_table", None))
        return self.columnar

    @property
    def boundaries(self) -> np.ndarray | None:
        """Bucket upper edges in use (int64, ascending), or None before they are estimated."""
        return None if self._boundaries is None else self._boundaries.copy()

    @property
    def current_epoch(self) -> int:
        """The epoch being iterated, or the one the next ``reset()`` starts when none is in progress."""
        if self._epoch < 0:
            return 0
        return self._epoch if self._position < len(self._plan) else self._epoch + 1

    def set_epoch(self, epoch: int) -> None:
        """Make the next fresh ``reset()`` (the next ``iter()`` of a loader) start epoch ``epoch``,
        whose batches and order are drawn from ``(seed, epoch)``; like
        ``DistributedSampler.set_epoch``. A saved state restores its own epoch regardless."""
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch = epoch - 1
        self._plan = []
        self._position = 0

    def split_workers(self, worker: int, num_workers: int) -> None:
        """Yield only batches ``worker, worker + num_workers, ...`` of each epoch's plan (what a
        ``torch.utils.data`` worker of :meth:`Pipe.as_iterable_dataset` runs); the others are
        skipped before any example is fetched. Map-style sources only."""
        if not self.indexed:
            raise TypeError("only a map-style BucketBatcher can be split across workers")
        if not 0 <= worker < num_workers:
            raise ValueError(f"worker {worker} is not in [0, {num_workers})")
        self._worker, self._num_workers = worker, num_workers

    def num_batches(self, epoch: int = 0) -> int:
        """Batches this rank yields in ``epoch`` (map-style sources only; plans without iterating)."""
        if not self.indexed:
            raise TypeError("a streaming BucketBatcher learns its number of batches only at the end of an epoch")
        if self._all_lengths is None:
            self._all_lengths = np.asarray(self.source.lengths(self.length_key), dtype=np.int64)
        return len(self._plan_for(self._all_lengths, epoch, 0)[0])
