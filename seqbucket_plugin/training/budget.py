"""The largest token budget that fits a device: bisection with real training steps.

The idea of NeMo's OOMptimizer, for recurrent models: memory per step grows with the padded tokens
of a batch, and the worst batch for a budget ``max_tokens`` is one of the longest bucket,
``rows = max_tokens // longest`` rows (at most ``max_batch_size``) of the longest training length.
:func:`find_max_tokens` runs real forward + backward + optimizer steps on such batches, doubling
the rows until a step raises ``torch.OutOfMemoryError`` or its peak memory passes a cap, then
bisects between the last fit and the first failure, and keeps a safety margin:

    max_tokens = max(longest, floor((1 - margin) x largest fitting rows x longest / multiple) x multiple)

When every batch up to the row cap (``max_batch_size``) fits, memory does not bound the budget:
``max_tokens = max_rows x longest`` (no margin: no batch of the epoch has more rows or tokens).

On CUDA the cap is ``memory_fraction`` (0.9) of the device's memory and the peak is
``torch.cuda.max_memory_reserved`` of the trial (cached blocks freed and the peak reset before
each trial, so one trial's cache does not count against the next). Elsewhere there is no reliable
peak to read, so a :class:`MemoryProbe` must be given (tests inject one, and an out-of-memory
error). The model is a throw-away copy built for the search (its optimizer state counts, as in
training); the caller's model is never touched.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from seqbucket_plugin.errors import BudgetSearchError

__all__ = ["BudgetSearch", "CudaMemoryProbe", "MemoryProbe", "Trial", "amp_autocast", "dataset_worst_case_batches",
           "find_max_tokens", "longest_rows_batches"]


class MemoryProbe(Protocol):
    """What the search reads about memory. ``cap``: the most bytes a trial may use (None: only an
    out-of-memory error stops the search). ``start()`` runs before each trial (free cached memory,
    reset the peak), ``peak()`` after it (the trial's peak bytes, or None when unknown)."""

    cap: int | None

    def start(self) -> None: ...

    def peak(self) -> int | None: ...


class CudaMemoryProbe:
    """The CUDA caching allocator's view: cap = ``memory_fraction`` x the device's total memory;
    peak = ``torch.cuda.max_memory_reserved`` since :meth:`start` (which empties the cache)."""

    def __init__(self, device: torch.device, memory_fraction: float = 0.9):
        if not 0 < memory_fraction <= 1:
            raise BudgetSearchError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
        self.device = device
        self.total = int(torch.cuda.get_device_properties(device).total_memory)
        self.cap = int(self.total * memory_fraction)

    def start(self) -> None:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_reserved(self.device))


@dataclasses.dataclass
class Trial:
    """One training step of the search: ``rows`` x ``length`` tokens; ``fits``; ``peak`` bytes
    (None when unknown or after an out-of-memory error); ``error``: why it did not fit."""

    rows: int
    length: int
    fits: bool
    peak: int | None
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.rows * self.length


@dataclasses.dataclass
class BudgetSearch:
    """The result of :func:`find_max_tokens`.

    Attributes:
        max_tokens: the budget to train with (bound by memory: the margin kept, a multiple of
            ``multiple``, at least ``longest``; bound by the row cap: ``max_rows x longest``).
        largest_fit: rows x longest of the largest batch that fitted.
        smallest_failure: rows x longest of the smallest batch that did not fit, or None when the
            search stopped at ``max_rows`` (``bound`` says which).
        longest: the worst-case row length used.
        bound: ``"memory"`` (a failure was found), ``"max_rows"`` (every batch up to the row cap
            fitted: the budget is bound by ``max_batch_size`` or ``limit``, not by memory).
        margin, cap: as given / read from the probe (bytes, or None).
        trials: every step run, in order.
        device: where the steps ran.
    """

    max_tokens: int
    largest_fit: int
    smallest_failure: int | None
    longest: int
    bound: str
    margin: float
    cap: int | None
    trials: list[Trial]
    device: str

    def summary(self) -> str:
        """One line for a recipe's start-up print and ``config.json``'s reasons."""
        cap = f", cap {self.cap / 2**30:.1f} GiB" if self.cap else ""
        peak = max((t.peak for t in self.trials if t.fits and t.peak), default=None)
        used = f", peak {peak / 2**30:.2f} GiB" if peak else ""
        if self.bound == "memory":
            limit = (f"{self.largest_fit:,} tokens fit and {self.smallest_failure:,} did not "
                     f"({self.largest_fit // self.longest} vs {self.smallest_failure // self.longest} rows)")
            kept = f"{self.margin:.0%} margin kept"
        else:
            limit = (f"every batch up to the row cap fits ({self.largest_fit // self.longest} rows, "
                     f"{self.largest_fit:,} tokens)")
            kept = "the row cap (max_rows) bounds every batch, not memory"
        return (f"{self.max_tokens:,} tokens, the largest budget that fits {self.device}: worst-case batches of "
                f"the longest length {self.longest}, {limit}{cap}{used}; {kept} ({len(self.trials)} training steps)")

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["summary"] = self.summary()
        return out


def longest_rows_batches(lengths: np.ndarray | Any, select: Callable[[np.ndarray], Any]) -> Callable[[int], Any]:
    """A ``make_batch(rows)`` for :func:`find_max_tokens` from real data: the ``rows`` longest
    examples (the longest repeated when there are fewer), turned into a batch by ``select``
    (indices -> batch; e.g. ``dataset.select(indices)`` collated as the training pipeline does)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    if order.size == 0:
        raise BudgetSearchError("no training examples to build a worst-case batch from")

    def make_batch(rows: int) -> Any:
        take = order[:rows] if rows <= order.size else np.concatenate([order, np.full(rows - order.size, order[0])])
        return select(take)

    return make_batch


def _trial(model: nn.Module, optimizer: torch.optim.Optimizer, make_batch: Callable[[int], Any],
           step: Callable, rows: int, length: int, device: torch.device, probe: MemoryProbe | None) -> Trial:
    if probe is not None:
        probe.start()
    try:
        batch = make_batch(rows)
        batch = batch.to(device) if hasattr(batch, "to") else batch
        optimizer.zero_grad(set_to_none=True)
        step(model, batch, lambda loss: loss.backward())
        optimizer.step()
        peak = probe.peak() if probe is not None else None
    except torch.OutOfMemoryError as err:
        del err
        optimizer.zero_grad(set_to_none=True)
        return Trial(rows, length, False, None, "out of memory")
    finally:
        batch = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    cap = probe.cap if probe is not None else None
    if cap is not None and peak is not None and peak > cap:
        return Trial(rows, length, False, peak, f"peak {peak:,} bytes over the cap of {cap:,}")
    return Trial(rows, length, True, peak)


def find_max_tokens(
    build_model: Callable[[], nn.Module],
    make_batch: Callable[[int], Any],
    step: Callable[[nn.Module, Any, Callable[[torch.Tensor], None]], Any],
    device: torch.device | str,
    *,
    longest: int,
    max_rows: int | None = None,
    limit: int = 2**22,
    margin: float = 0.1,
    multiple: int = 64,
    tolerance: float = 0.05,
    probe: MemoryProbe | None = None,
    memory_fraction: float = 0.9,
    log: Callable[[str], None] | None = None,
) -> BudgetSearch:
    """The largest ``max_tokens`` whose worst-case batch trains on ``device`` within memory.

    Args:
        build_model: makes a fresh model (moved to ``device`` here; dropped afterwards).
        make_batch: ``rows -> batch`` on the CPU (anything with ``.to(device)``), ``rows`` rows of
            the ``longest`` length: the worst case of a bucketed epoch (see
            :func:`longest_rows_batches`).
        step: ``step(model, batch, backward)`` as the training loop calls it (forward under the
            run's autocast, then ``backward(loss)``); an AdamW step follows each trial.
        device: where to run (CUDA, or anything with an explicit ``probe``).
        longest: the worst-case row length (tokens, after truncation).
        max_rows: at most this many rows (``max_batch_size``); default ``limit // longest``.
        limit: at most this many tokens per batch.
        margin: share of the largest fitting budget given up for safety (fragmentation, other
            shapes of the same size, a different batch of the same length).
        multiple: the result is a multiple of this (and at least ``longest``).
        tolerance: bisection stops when the failing and fitting row counts are this close (relative).
        probe: reads the peak memory of each trial and the cap (default on CUDA:
            :class:`CudaMemoryProbe` with ``memory_fraction``); required on other devices.
        log: called with one line per trial.

    Returns:
        :class:`BudgetSearch`.

    Raises:
        BudgetSearchError: not CUDA and no ``probe``; bad arguments; or one row of ``longest``
            does not fit.
    """
    device = torch.device(device)
    if longest < 1:
        raise BudgetSearchError(f"longest must be a positive length, got {longest}")
    if not 0 <= margin < 1 or tolerance <= 0 or multiple < 1:
        raise BudgetSearchError("need 0 <= margin < 1, tolerance > 0 and multiple >= 1")
    if probe is None:
        if device.type != "cuda":
            raise BudgetSearchError(
                f"the largest-budget search measures GPU memory; on {device.type} there is no memory cap to "
                "search against (give a MemoryProbe, or a token budget of your own)")
        probe = CudaMemoryProbe(device, memory_fraction)
    top = max(1, min(max_rows or limit // longest, limit // longest))
    say = log or (lambda message: None)

    model = build_model().to(device)
    model.train()
    held = {"model": model, "optimizer": torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                                           lr=1e-12)}
    del model
    trials: list[Trial] = []

    def run(rows: int) -> bool:
        trial = _trial(held["model"], held["optimizer"], make_batch, step, rows, longest, device, probe)
        trials.append(trial)
        peak = "" if trial.peak is None else f", peak {trial.peak / 2**20:,.0f} MiB"
        say(f"  {rows} rows x {longest} = {trial.tokens:,} tokens: "
            f"{'fits' if trial.fits else 'does not fit (' + str(trial.error) + ')'}{peak}")
        return trial.fits

    try:
        if not run(1):
            raise BudgetSearchError(
                f"not even one row of the longest training length ({longest} tokens) trains on {device}: "
                "lower the longest length (max_length) or the model size")
        low, high = 1, None
        while high is None and low < top:  # doubling
            rows = min(top, low * 2)
            if run(rows):
                low = rows
            else:
                high = rows
        while high is not None and high - low > max(1, int(tolerance * low)):  # bisection
            mid = (low + high) // 2
            if run(mid):
                low = mid
            else:
                high = mid
    finally:
        held.clear()  # the throw-away model and its optimizer state
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    largest = low * longest
    if high is None:  # bound by the row cap, not by memory: every batch of the epoch has at most `top` rows
        budget = largest
    else:
        budget = max(longest, int(math.floor(largest * (1 - margin) / multiple)) * multiple)
    return BudgetSearch(
        max_tokens=budget, largest_fit=largest, smallest_failure=None if high is None else high * longest,
        longest=longest, bound="memory" if high is not None else "max_rows", margin=margin,
        cap=getattr(probe, "cap", None), trials=trials, device=str(device))


def dataset_worst_case_batches(dataset: Any, pad_id: int, transform: Callable[[Any], Any] | None = None,
                               length_key: str = "length") -> Callable[[int], Any]:
    """``make_batch(rows)`` over a tokenized ``datasets.Dataset``: its ``rows`` longest examples
    collated into a :class:`~seqbucket_plugin.datapipes.PackedBatch` (CPU) as the pipeline's
    ``pack`` does, then ``transform`` (the recipe's per-batch ``map`` step, e.g. character ids).
    The lengths are read at the first call, not before."""
    from seqbucket_plugin.datapipes import collate_packed

    def select(indices: np.ndarray) -> Any:
        batch = collate_packed(list(dataset.select(indices.tolist())), pad_id=pad_id)
        return transform(batch) if transform is not None else batch

    made: list[Callable[[int], Any]] = []

    def make_batch(rows: int) -> Any:
        if not made:
            made.append(longest_rows_batches(np.asarray(dataset[length_key]), select))
        return made[0](rows)

    return make_batch


def amp_autocast(enabled: bool, device: torch.device) -> Callable[[], Any]:
    """The autocast factory the :class:`~seqbucket_plugin.training.Trainer` uses: bf16 (fp16 where
    bf16 is unsupported) on CUDA when ``enabled``, nothing elsewhere."""
    import contextlib
    import functools

    if not (enabled and device.type == "cuda"):
        return contextlib.nullcontext
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return functools.partial(torch.autocast, device_type="cuda", dtype=dtype)
