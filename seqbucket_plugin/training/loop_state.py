"""The counters of :class:`~seqbucket_plugin.training.Trainer`'s loop.

:class:`LoopState` is what a checkpoint stores (plain data: ``dataclasses.asdict`` of it);
:class:`EpochMeter` the figures of the epoch in progress that are only read for logs;
:class:`AccumGroup` the batches of one optimizer step (gradient accumulation).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

__all__ = ["AccumGroup", "EpochMeter", "LoopState"]


@dataclass
class LoopState:
    """Where the loop is, what it selected and the running train figures, checkpointed."""

    epoch: int = 0
    step: int = 0
    epoch_step: int = 0
    epoch_batch: int = 0
    epoch_done: bool = False
    best_metric: float = -math.inf
    best_step: int = -1
    bad_evals: int = 0
    stopped: bool = False
    loss_sum: float = 0.0
    loss_n: int = 0
    tokens: int = 0
    skipped_nonfinite: int = 0
    nonfinite_streak: int = 0
    history: list[dict] = field(default_factory=list)

    def next_epoch(self) -> None:
        """Move to the start of the next epoch (its counters and running train figures at 0)."""
        self.epoch += 1
        self.epoch_step = 0
        self.epoch_batch = 0
        self.epoch_done = False
        self.loss_sum, self.loss_n, self.tokens = 0.0, 0, 0

    def select(self, value: float) -> bool:
        """Count an evaluation whose metric is ``value``: True (and the new best) when it improves
        on the best so far, else one more evaluation without improvement."""
        if value > self.best_metric:
            self.best_metric, self.best_step, self.bad_evals = value, self.step, 0
            return True
        self.bad_evals += 1
        return False

    def evaluated_now(self) -> bool:
        """Whether the last evaluation was at the current step."""
        return bool(self.history) and self.history[-1]["step"] == self.step


@dataclass
class EpochMeter:
    """The running train figures of the epoch in progress.

    The loss of the optimizer steps since the last checkpoint stays on the device (read only for
    logs, :meth:`fold` adds it to the state's); tokens/s counts loading and step time, not
    evaluations or checkpoints."""

    loss_sum: torch.Tensor
    train_time: float = 0.0
    new_tokens: int = 0
    t_prev: float = field(default_factory=time.perf_counter)

    def mean_loss(self, state: LoopState) -> float:
        """The epoch's mean train loss per batch so far (one device-to-host read)."""
        n = state.loss_n
        return (state.loss_sum + float(self.loss_sum)) / n if n else float("nan")

    def fold(self, state: LoopState) -> None:
        """Move the loss on the device into ``state.loss_sum`` (before a checkpoint)."""
        state.loss_sum += float(self.loss_sum)
        self.loss_sum.zero_()

    def tokens_per_s(self) -> float:
        return self.new_tokens / self.train_time if self.train_time > 0 else 0.0

    def restart_clock(self) -> None:
        """The next step's time starts now."""
        self.t_prev = time.perf_counter()

    def add_step_time(self) -> None:
        self.train_time += time.perf_counter() - self.t_prev


@dataclass
class AccumGroup:
    """The batches of one optimizer step: ``size`` in all, ``left`` still to come."""

    size: int
    left: int
    loss: torch.Tensor
    batches: int = 0
    tokens: int = 0

    @property
    def complete(self) -> bool:
        return self.left <= 0
