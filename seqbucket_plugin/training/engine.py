"""The training loop shared by the recipes.

:class:`Trainer` runs AdamW with gradient clipping and a linear warm-up / linear decay schedule,
evaluates on the dev set (every ``eval_every`` steps and at the end of every epoch), keeps the
best model, stops early after ``patience`` evaluations without improvement, shows a progress bar
per epoch (loss, tokens/s, padding efficiency) and appends one JSON line per evaluation to
``log.jsonl``. On CUDA it uses mixed precision (bf16 where supported, else fp16 with a gradient
scaler); batches stay on the CPU until the step moves them (``non_blocking`` from pinned memory).

Resume: ``checkpoint.pt`` in the output directory holds the model, optimizer, scheduler (and
gradient scaler), every RNG state, the training loader's ``state_dict()`` and the loop counters and
history. It is written atomically every ``save_every`` steps and at the end of every epoch.
``fit(resume=True)`` restores it and continues mid-epoch; on the CPU the finished run has exactly
the weights and metrics of an uninterrupted one (the pipeline, dropout masks and optimizer follow
the same sequence). Dev evaluation never draws random numbers.

Gradient accumulation: with ``grad_accum`` = N each optimizer step adds the gradients of N
batches (each loss scaled by 1/N; the last group of an epoch may be shorter and is scaled by its
own size). ``step``/``max_steps``/``eval_every``/``save_every`` count optimizer steps.

Several processes (``dist``, a :class:`~seqbucket_plugin.training.distributed.DistContext` with
``world_size`` > 1): the model is wrapped in ``DistributedDataParallel`` for the training steps
(``no_sync()`` on the non-final batches of an accumulation group; ``grad_sync="manual"``
all-reduces the gradients after the group instead, for steps that do not call the model's
``forward``, such as truncated BPTT). ``evaluate`` gets the unwrapped model and must return the
same metrics on every rank (early stopping and the best model follow from them, so every rank
takes the same decisions); the logged train loss, tokens/s and padding efficiency are reduced over
the ranks. Only rank 0 writes ``log.jsonl``, ``best_model.pt`` and ``checkpoint.pt``; the
checkpoint stores the world size and every rank's RNG, loader and loop states (gathered to rank 0;
the loop states differ only in the running train loss and token count), and a resume restores each
rank's own and refuses a different world size.

Faults: a resume first checks the checkpoint (checksums, plain data only, the keys of a training
checkpoint) and the run's fingerprint (training and dev data, tokenizer, labels, settings; see
:mod:`~seqbucket_plugin.training.fingerprint`): anything that differs is a
:class:`~seqbucket_plugin.errors.ResumeMismatchError` listing every difference, raised before
anything in the output directory is written. A NaN or infinite loss never reaches the weights:
with ``nonfinite="stop"`` (default) training stops with a
:class:`~seqbucket_plugin.errors.NonFiniteLossError` naming the step and batch; with ``"skip"`` the
optimizer step is skipped and counted (``skipped_nonfinite`` in the log), and ``nonfinite_patience``
skips in a row stop the run. A batch that does not fit in CUDA memory raises a
:class:`~seqbucket_plugin.errors.BatchOutOfMemoryError` with its shape and a budget that would fit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from seqbucket_plugin.errors import (
    BatchOutOfMemoryError,
    CheckpointError,
    NonFiniteLossError,
    ResumeMismatchError,
    SeqBucketError,
)
from seqbucket_plugin.training.checkpoint import (
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from seqbucket_plugin.training.fingerprint import fingerprint_differences
from seqbucket_plugin.training.loop_state import AccumGroup, EpochMeter, LoopState
from seqbucket_plugin.training.progress import ProgressBar
from seqbucket_plugin.training.run_log import LOG_FILE, REPORT_TO, RunLog  # noqa: F401 (LOG_FILE: a file of the output directory)

__all__ = ["StepOutput", "TrainConfig", "Trainer", "linear_warmup_decay", "resolve_device"]

CHECKPOINT_FILE = "checkpoint.pt"
BEST_MODEL_FILE = "best_model.pt"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "rng", "loader", "loop")
NONFINITE_POLICIES = ("stop", "skip")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cpu"``; ``"cuda"`` (or ``"cuda:N"``).

    Raises:
        SeqBucketError: CUDA was asked for but is not available, or the name is unknown.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SeqBucketError(f"resolve_device({name!r}): CUDA is not available on this machine "
                                 f"(use 'cpu', or 'auto' for CUDA when there is one)")
        return torch.device(name)
    raise SeqBucketError(f"resolve_device({name!r}): unknown device; use 'auto', 'cpu' or 'cuda'")


def linear_warmup_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear 0 -> 1 over ``warmup_steps``, then linear 1 -> 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return max(0.0, 1.0 - (step - warmup_steps) / span)

    return factor


@dataclass
class TrainConfig:
    """Loop settings (see the recipes' ``--help`` for the command-line names).

    ``metric`` is the dev metric to maximise (a key returned by the evaluate function);
    ``max_steps`` > 0 caps the optimizer steps over all epochs; ``eval_every`` = 0 evaluates
    only at epoch ends; ``save_every`` = 0 checkpoints only at epoch ends; ``patience`` = 0
    disables early stopping. ``nonfinite``: ``"stop"`` or ``"skip"`` a NaN/inf loss (see the
    module docs); ``nonfinite_patience`` skipped steps in a row stop the run (0: never).
    """

    epochs: int = 5
    max_steps: int = 0
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    clip_norm: float = 1.0
    patience: int = 3
    eval_every: int = 0
    save_every: int = 50
    metric: str = "accuracy"
    amp: bool = True
    progress: bool = True
    seed: int = 0
    grad_accum: int = 1
    nonfinite: str = "stop"
    nonfinite_patience: int = 10
    log_every: int = 0
    """Print (and report) the running train loss, learning rate and tokens/s every N optimizer
    steps (0: only at evaluations)."""
    report_to: str = "none"
    """``"tensorboard"``: also write the train figures and dev metrics as TensorBoard scalars
    under ``<output_dir>/tensorboard`` (needs the ``tensorboard`` package); ``"none"``: don't."""


def check_settings(config: TrainConfig, steps_per_epoch: int | None, grad_sync: str) -> None:
    """Raise a :class:`~seqbucket_plugin.errors.SeqBucketError` naming the first invalid setting."""
    if grad_sync not in ("ddp", "manual"):
        raise SeqBucketError(f"Trainer(grad_sync=...) must be 'ddp' or 'manual', got {grad_sync!r}")
    if config.grad_accum is None or config.grad_accum < 1:
        raise SeqBucketError(f"TrainConfig.grad_accum must be a positive integer, got {config.grad_accum!r}")
    if config.nonfinite not in NONFINITE_POLICIES:
        raise SeqBucketError(f"TrainConfig.nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}")
    if config.report_to not in REPORT_TO:
        raise SeqBucketError(f"TrainConfig.report_to must be one of {list(REPORT_TO)}, got {config.report_to!r}")
    if config.grad_accum > 1 and not steps_per_epoch:
        raise SeqBucketError("TrainConfig.grad_accum > 1 needs Trainer(steps_per_epoch=...), the number of "
                             "batches per epoch (known for a map-style dataset)")


@dataclass
class StepOutput:
    """What a training step returns: the loss (detached scalar tensor, any device) and the number
    of real tokens the step trained on."""

    loss: torch.Tensor
    tokens: int


class Trainer:
    """Trains ``model`` on the batches of ``train_loader``; evaluates with ``evaluate``.

    Args:
        model: the module (moved to ``device`` here).
        train_loader: a ``torchdata.nodes.Loader`` (``Pipe(...).loader()``) yielding
            :class:`~seqbucket_plugin.datapipes.PackedBatch` es (CPU tensors); one pass = one epoch.
            Its ``state_dict()`` goes into the checkpoint.
        train_step: ``train_step(model, batch, backward) -> StepOutput``. ``batch`` is already on
            ``device``; the step computes the loss under autocast and calls ``backward(loss)``
            (possibly several times, e.g. once per chunk with truncated BPTT).
        evaluate: ``evaluate(model) -> dict[str, float]`` on the dev set (the model is in eval
            mode, under ``torch.no_grad``); must contain ``config.metric``.
        config: :class:`TrainConfig`.
        output_dir: where ``checkpoint.pt``, ``best_model.pt`` and ``log.jsonl`` go.
        device: a ``torch.device``.
        steps_per_epoch: batches per epoch (for the schedule and progress bar), if known.
        batch_stats: optional callable returning the current epoch's
            :class:`~seqbucket_plugin.datapipes.BatchingStats` (for padding efficiency).
        log: where one-line messages go (default ``print``).
        dist: a :class:`~seqbucket_plugin.training.distributed.DistContext`; None or a world
            size of 1 is a single process (see the module docs for several).
        grad_sync: ``"ddp"`` (DistributedDataParallel) or ``"manual"`` (all-reduce after backward).
        fingerprint: what this run is made of (see
            :mod:`~seqbucket_plugin.training.fingerprint`), stored in the checkpoint and compared
            on resume; None skips the comparison.

    Raises:
        SeqBucketError: an invalid ``grad_sync``, ``grad_accum``, ``nonfinite`` or ``report_to``
            setting (see :func:`check_settings`).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Any,
        train_step: Callable[[nn.Module, Any, Callable[[torch.Tensor], None]], StepOutput],
        evaluate: Callable[[nn.Module], dict[str, float]],
        config: TrainConfig,
        output_dir: str | os.PathLike,
        device: torch.device,
        *,
        steps_per_epoch: int | None = None,
        batch_stats: Callable[[], Any] | None = None,
        log: Callable[[str], None] = print,
        dist: Any = None,
        grad_sync: str = "ddp",
        fingerprint: dict[str, Any] | None = None,
    ):
        self.model = model.to(device)
        self.dist = dist if dist is not None and dist.world_size > 1 else None
        self.is_main = self.dist is None or self.dist.is_main
        check_settings(config, steps_per_epoch, grad_sync)
        self.grad_sync = grad_sync
        self.train_model: nn.Module = self._wrap_for_ddp(device)
        self.loader = train_loader
        self.train_step = train_step
        self.evaluate_fn = evaluate
        self.config = config
        self.output_dir = os.fspath(output_dir)
        self.device = device
        self.steps_per_epoch = steps_per_epoch
        self.batch_stats = batch_stats
        self._print = log if self.is_main else (lambda message: None)
        self._bar: ProgressBar | None = None
        self.fingerprint = fingerprint
        self.last_saved_step: int | None = None
        os.makedirs(self.output_dir, exist_ok=True)

        self.total_steps = self._total_steps()
        self.optimizer = self._adamw(model)
        warmup = int(round(config.warmup_ratio * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_warmup_decay(warmup, self.total_steps))
        self.use_amp = bool(config.amp) and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        # The autocast context of a forward pass (mixed precision on CUDA, nothing on the CPU): a
        # factory that does not refer back to the trainer, so a step that captures it (as the
        # recipes' steps do) makes no reference cycle and the trainer, its DDP wrapper and its
        # loaders are freed as soon as the caller drops them.
        self.autocast: Callable[[], contextlib.AbstractContextManager] = (
            functools.partial(torch.autocast, device_type="cuda", dtype=self.amp_dtype) if self.use_amp
            else contextlib.nullcontext)
        self.state = LoopState()
        self.run_log = RunLog(self.output_dir, enabled=self.is_main, report_to=config.report_to)
        self._started = time.perf_counter()
        self._elapsed_before = 0.0

    # ------------------------------------------------------------------ set-up
    def _wrap_for_ddp(self, device: torch.device) -> nn.Module:
        """The module the training steps run: ``DistributedDataParallel`` around the model with
        several processes and ``grad_sync="ddp"``, else the model itself."""
        if self.dist is None or self.grad_sync != "ddp":
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def _adamw(self, model: nn.Module) -> torch.optim.AdamW:
        """AdamW with weight decay on the matrices, none on biases, norms and embeddings."""
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or "embedding" in name else decay).append(p)
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.config.lr,
        )

    def _total_steps(self) -> int:
        per_epoch = -(-(self.steps_per_epoch or 0) // self.config.grad_accum)  # optimizer steps per epoch
        total = per_epoch * self.config.epochs if per_epoch else 0
        if self.config.max_steps > 0:
            total = min(total, self.config.max_steps) if total else self.config.max_steps
        return max(1, total)

    # ------------------------------------------------------------------ messages
    def log(self, message: str) -> None:
        """Print ``message`` (rank 0), above the progress bar when one is shown."""
        with self._bar.writing() if self._bar is not None else contextlib.nullcontext():
            self._print(message)

    @property
    def writer(self) -> Any:
        """The TensorBoard ``SummaryWriter`` (``report_to="tensorboard"``, rank 0), else None."""
        return self.run_log.writer

    def _elapsed(self) -> float:
        """Seconds of training so far, over all the runs this one resumed."""
        return self._elapsed_before + time.perf_counter() - self._started

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.output_dir, CHECKPOINT_FILE)

    @property
    def best_model_path(self) -> str:
        return os.path.join(self.output_dir, BEST_MODEL_FILE)

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically (see the module docs for its content)."""
        state = asdict(self.state)
        state["best_metric"] = float(state["best_metric"])
        rng = capture_rng_state(cuda=self.device.type == "cuda")
        loader = self.loader.state_dict()
        extra: dict[str, Any] = {}
        if self.dist is not None:  # every rank's own RNG, loader and loop states (its running loss), to rank 0
            extra["ranks"] = self.dist.all_gather_object({"rng": rng, "loader": loader, "loop": state})
            if not self.is_main:
                self.last_saved_step = self.state.step
                return
        atomic_save({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "loader": loader,
            "loop": state,
            "world_size": 1 if self.dist is None else self.dist.world_size,
            "fingerprint": self.fingerprint,
            **extra,
        }, self.checkpoint_path)
        self.last_saved_step = self.state.step

    def read_checkpoint(self) -> dict:
        """Load and check ``checkpoint.pt`` without changing anything (model, files, state).

        Raises:
            FileNotFoundError: there is no checkpoint in the output directory.
            CheckpointError: truncated, corrupt, refused (not plain data) or not a training checkpoint.
            ResumeMismatchError: written by a run with another world size, data, tokenizer, labels
                or settings (every difference listed).
        """
        path = self.checkpoint_path
        ckpt = load_checkpoint(path, map_location=self.device)
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise CheckpointError(f"not a seqbucket_plugin training checkpoint (no {', '.join(missing)})", path)
        problems, notes = self._resume_differences(ckpt)
        if problems:
            raise ResumeMismatchError(
                f"cannot resume (Trainer.fit(resume=True)): {path} belongs to a different run; nothing was "
                f"changed in {self.output_dir}.\n  " + "\n  ".join(problems)
                + "\nResume with the data, tokenizer and settings of that run, or train into a new output_dir.")
        for note in notes:
            self.log(f"fit(resume=True): {note}")
        if self.dist is not None:
            self._take_own_rank_state(ckpt)
        return ckpt

    def _resume_differences(self, ckpt: dict) -> tuple[list[str], list[str]]:
        """``(problems, notes)``: what forbids resuming from ``ckpt`` (world size, fingerprint) and
        the harmless changes."""
        saved_world = int(ckpt.get("world_size", 1))
        world = 1 if self.dist is None else self.dist.world_size
        problems = []
        if saved_world != world:
            problems.append(f"number of processes: {saved_world} in the checkpoint, {world} now (resume with "
                            f"torchrun --nproc_per_node x --nnodes = {saved_world})")
        notes: list[str] = []
        if self.fingerprint is not None and ckpt.get("fingerprint") is not None:
            errors, notes = fingerprint_differences(ckpt["fingerprint"], self.fingerprint)
            problems += errors
        elif self.fingerprint is not None:
            notes = ["the checkpoint holds no fingerprint (written by an older version): the data, tokenizer "
                     "and settings could not be compared"]
        return problems, notes

    def _take_own_rank_state(self, ckpt: dict) -> None:
        """Put this rank's RNG, loader and loop states (saved by rank 0 for every rank) in ``ckpt``."""
        world = self.dist.world_size
        ranks = ckpt.get("ranks")
        if not isinstance(ranks, list) or len(ranks) != world:
            raise CheckpointError(f"the per-rank states of the {world} processes are missing", self.checkpoint_path)
        own = ranks[self.dist.rank]
        ckpt["rng"], ckpt["loader"], ckpt["loop"] = own["rng"], own["loader"], own["loop"]

    def load_checkpoint(self) -> None:
        """Restore everything :meth:`save_checkpoint` wrote (after :meth:`read_checkpoint`'s checks).

        Raises:
            FileNotFoundError, CheckpointError, ResumeMismatchError: see :meth:`read_checkpoint`.
        """
        ckpt = self.read_checkpoint()
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise CheckpointError(f"written for a different model ({str(err).splitlines()[0]} ...): resume "
                                  f"with the model settings of that run", self.checkpoint_path) from err
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.loader.load_state_dict(ckpt["loader"])
        restore_rng_state(ckpt["rng"])
        self.state = LoopState(**ckpt["loop"])
        self.last_saved_step = self.state.step
        self.run_log.rewrite(self.state.history)  # the log holds exactly the evaluations of the restored history

    def load_best(self) -> None:
        """Load ``best_model.pt`` into the model (no-op when there is none)."""
        if os.path.isfile(self.best_model_path):
            self.model.load_state_dict(load_checkpoint(self.best_model_path, map_location=self.device))

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, train_loss: float, tokens_per_s: float, efficiency: float | None) -> bool:
        """Evaluate on dev, keep the best model, record the evaluation; True when the patience is
        used up (training should stop early)."""
        elapsed = self._elapsed()
        metrics = self._dev_metrics()
        if self.dist is not None:  # the train figures of all ranks; the metrics are already global
            train_loss, tokens_per_s, efficiency = self._global_train_figures(train_loss, tokens_per_s, efficiency)
        improved = self.state.select(float(metrics[self.config.metric]))
        if improved and self.is_main:
            atomic_save(self.model.state_dict(), self.best_model_path)
        self._record_evaluation(metrics, train_loss, tokens_per_s, efficiency, elapsed, improved)
        return self.config.patience > 0 and self.state.bad_evals >= self.config.patience

    def _dev_metrics(self) -> dict[str, float]:
        """``evaluate(model)`` in eval mode under ``torch.no_grad`` (and autocast)."""
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                metrics = self.evaluate_fn(self.model)
        except torch.OutOfMemoryError as err:
            raise BatchOutOfMemoryError(
                f"out of {self.device} memory during the dev evaluation at step {self.state.step}: evaluation "
                f"batches use the training token budget; lower the pipeline's max_tokens") from err
        self.model.train()
        if self.config.metric not in metrics:
            raise SeqBucketError(f"evaluate() returned {sorted(metrics)}, without TrainConfig.metric "
                                 f"{self.config.metric!r}")
        return metrics

    def _global_train_figures(self, train_loss: float, tokens_per_s: float, efficiency: float | None
                              ) -> tuple[float, float, float | None]:
        """The train loss (mean), tokens/s (sum) and padding efficiency (mean) over the ranks."""
        loss_total, n, tps, eff = self.dist.all_reduce_sum(
            [train_loss * self.state.loss_n, self.state.loss_n, tokens_per_s, efficiency or 0.0])
        train_loss = loss_total / n if n else float("nan")
        return train_loss, tps, None if efficiency is None else eff / self.dist.world_size

    def _record_evaluation(self, metrics: dict[str, float], train_loss: float, tokens_per_s: float,
                           efficiency: float | None, elapsed: float, improved: bool) -> None:
        """Add the evaluation to the history, ``log.jsonl`` and TensorBoard, and print it."""
        s = self.state
        record = {"step": s.step, "epoch": s.epoch, "train_loss": round(train_loss, 6),
                  **{f"dev_{k}": v for k, v in metrics.items()},
                  "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": round(tokens_per_s, 1),
                  "padding_efficiency": None if efficiency is None else round(efficiency, 4),
                  "skipped_nonfinite": s.skipped_nonfinite, "elapsed_s": round(elapsed, 2), "best": improved}
        s.history.append(record)
        self.run_log.report("dev", metrics, s.step)
        self.run_log.report("train", {"loss": train_loss, "tokens_per_s": tokens_per_s}, s.step)
        self.run_log.append(record)
        shown = ", ".join(f"dev {k} {v:.4f}" for k, v in metrics.items())
        self.log(f"step {s.step} (epoch {s.epoch + 1}): train loss {train_loss:.4f}, {shown}, "
                 f"{tokens_per_s:,.0f} tokens/s" + (f", padding efficiency {efficiency:.1%}" if efficiency else "")
                 + (" *" if improved else ""))

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> list[dict]:
        """Train until ``epochs``/``max_steps``/early stopping; returns the evaluation history.

        With ``resume`` and an existing checkpoint, continues from it (a missing checkpoint
        starts from scratch with a message). The best model is in ``best_model.pt``.
        """
        self._start(resume)
        if self.state.epoch_done:  # resumed from an epoch-end checkpoint
            self.state.next_epoch()
        self.model.train()
        self.train_model.train()
        self._started = time.perf_counter()
        self._elapsed_before = self.state.history[-1]["elapsed_s"] if self.state.history else 0.0
        while not self.state.stopped and self.state.epoch < self.config.epochs and not self._out_of_steps():
            self._run_epoch()
        return self.state.history

    def _start(self, resume: bool) -> None:
        """Restore the checkpoint (``resume`` and there is one) or start a new ``log.jsonl``."""
        found = os.path.isfile(self.checkpoint_path)
        if self.dist is not None:  # rank 0 decides, so every rank takes the same branch
            found = bool(self.dist.broadcast_object(found))
        if resume and found:
            self.load_checkpoint()
            s = self.state
            self.log(f"resumed from {CHECKPOINT_FILE}: step {s.step}, epoch {s.epoch + 1}"
                     + (" (epoch finished)" if s.epoch_done else f", batch {s.epoch_step}"))
            return
        if resume:
            self.log(f"fit(resume=True): no {CHECKPOINT_FILE} in the output directory yet, starting from scratch")
        self.run_log.rewrite()

    def _out_of_steps(self) -> bool:
        return self.config.max_steps > 0 and self.state.step >= self.config.max_steps

    def _run_epoch(self) -> None:
        """Train on one pass over the loader (or what is left of it after a resume), then end the epoch."""
        self._bar = self._epoch_bar()
        meter = EpochMeter(loss_sum=torch.zeros((), device=self.device))
        group: AccumGroup | None = None
        for batch in self.loader:
            batch = batch.to(self.device, non_blocking=True)
            if group is None:
                group = self._new_group()
            self._train_on(batch, group)
            if not group.complete:
                continue
            stepped = self._optimizer_step(batch, group, meter)
            group = None
            if stepped and self._after_step(meter):
                break
        self._end_epoch(meter, group)

    def _epoch_bar(self) -> ProgressBar:
        """The epoch's progress bar, in optimizer steps, ending where ``max_steps`` stops the run."""
        cfg, s = self.config, self.state
        steps = -(-self.steps_per_epoch // cfg.grad_accum) if self.steps_per_epoch else None
        if cfg.max_steps > 0:
            left = cfg.max_steps - (s.step - s.epoch_step)
            steps = left if steps is None else min(steps, left)
        return ProgressBar(cfg.progress and self.is_main, steps, s.epoch_step, f"epoch {s.epoch + 1}/{cfg.epochs}")

    # ------------------------------------------------------------------ one optimizer step
    def _new_group(self) -> AccumGroup:
        """Clear the gradients for the next optimizer step's batches (``grad_accum`` of them, fewer
        at the end of an epoch)."""
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.config.grad_accum
        left = accum if accum == 1 else min(accum, self.steps_per_epoch - self.state.epoch_batch)
        return AccumGroup(size=max(1, left), left=left, loss=torch.zeros((), device=self.device))

    def _train_on(self, batch: Any, group: AccumGroup) -> None:
        """Run the training step on one batch of ``group``: its gradients add up (scaled by
        1/size); DDP synchronises them on the group's last batch only."""
        group.left -= 1
        self.state.epoch_batch += 1
        backward = self._backward if group.size == 1 else self._scaled_backward(group.size)
        sync = contextlib.nullcontext()
        if not group.complete and self.train_model is not self.model:
            sync = self.train_model.no_sync()
        with sync:
            out = self._run_step(batch, backward)
        group.loss += out.loss.detach().float()
        group.batches += 1
        group.tokens += out.tokens

    def _run_step(self, batch: Any, backward: Callable[[torch.Tensor], None]) -> StepOutput:
        """One training step; a CUDA out-of-memory error becomes a :class:`BatchOutOfMemoryError`."""
        try:
            return self.train_step(self.train_model if self.grad_sync == "ddp" else self.model, batch, backward)
        except torch.OutOfMemoryError as err:
            raise BatchOutOfMemoryError(oom_message(batch, self.device, self.state.step + 1)) from err

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def _scaled_backward(self, n: int) -> Callable[[torch.Tensor], None]:
        def backward(loss: torch.Tensor) -> None:
            self._backward(loss / n)

        return backward

    def _optimizer_step(self, batch: Any, group: AccumGroup, meter: EpochMeter) -> bool:
        """Clip and apply the group's gradients; False when a non-finite loss skipped the step
        (see :meth:`_skip_nonfinite`)."""
        cfg, s = self.config, self.state
        if self.dist is not None and self.grad_sync == "manual":
            self._all_reduce_grads()
        grad_norm = None
        if cfg.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
        if not self._finite(group.loss, grad_norm):
            self._skip_nonfinite(batch, group.loss, grad_norm)
            meter.restart_clock()
            return False
        s.nonfinite_streak = 0
        meter.loss_sum += group.loss
        s.loss_n += group.batches
        s.tokens += group.tokens
        meter.new_tokens += group.tokens
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        s.step += 1
        s.epoch_step += 1
        meter.add_step_time()
        return True

    def _all_reduce_grads(self) -> None:
        """Average the gradients over the ranks (one flat all-reduce; missing grads count as 0)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch_dist.all_reduce(flat)
        flat /= self.dist.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def _finite(self, group_loss: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
        """Whether the loss (and, without a gradient scaler, the gradient norm) of the optimizer
        step is finite, agreed over the ranks. One device-to-host read per optimizer step."""
        finite = torch.isfinite(group_loss)
        if grad_norm is not None and not self.scaler.is_enabled():  # the scaler handles inf gradients itself
            finite = finite & torch.isfinite(grad_norm)
        ok = bool(finite)
        if self.dist is not None:
            ok = self.dist.all_reduce_sum([0.0 if ok else 1.0])[0] == 0
        return ok

    def _skip_nonfinite(self, batch: Any, group_loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """Apply the non-finite policy: raise (``"stop"``) or drop this optimizer step and count it."""
        s, cfg = self.state, self.config
        shape = tuple(getattr(batch, "input_ids", torch.empty(0)).shape)
        what = (f"non-finite training loss ({float(group_loss)}"
                + (f", gradient norm {float(grad_norm)}" if grad_norm is not None else "")
                + f") at step {s.step + 1}, epoch {s.epoch + 1}, batch {s.epoch_batch} of the epoch"
                + (f" (input_ids {shape[0]} x {shape[1]})" if len(shape) == 2 else ""))
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():  # reset the scaler's per-step bookkeeping; back off as on an inf step
            self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
        saved = ("no checkpoint has been written yet" if self.last_saved_step is None
                 else f"{CHECKPOINT_FILE} (step {self.last_saved_step}) is intact")
        if cfg.nonfinite == "stop":
            raise NonFiniteLossError(f"{what}. The weights were not updated with it and {saved}. Lower "
                                     f"TrainConfig.lr, check the data, or set TrainConfig.nonfinite='skip' to "
                                     f"skip such steps (counted).")
        s.skipped_nonfinite += 1
        s.nonfinite_streak += 1
        self.log(f"{what}: optimizer step skipped ({s.skipped_nonfinite} skipped so far)")
        if cfg.nonfinite_patience > 0 and s.nonfinite_streak >= cfg.nonfinite_patience:
            raise NonFiniteLossError(f"{s.nonfinite_streak} optimizer steps in a row had a non-finite loss "
                                     f"(last: {what}); stopping. {saved}.")

    # ------------------------------------------------------------------ after a step, after an epoch
    def _after_step(self, meter: EpochMeter) -> bool:
        """Show, log, evaluate and checkpoint as the settings ask after an optimizer step; True
        when the epoch ends here (early stopping or ``max_steps``)."""
        cfg, s = self.config, self.state
        tps = meter.tokens_per_s()
        eff = self._efficiency()
        if self._bar is not None and self._bar.shown:
            self._bar.update(loss=f"{meter.mean_loss(s):.4f}", tok_s=f"{tps:,.0f}",
                             pad_eff=f"{eff:.1%}" if eff is not None else "-")
        if cfg.log_every > 0 and s.step % cfg.log_every == 0:
            self._log_train(meter.mean_loss(s), tps)
        if cfg.eval_every > 0 and s.step % cfg.eval_every == 0:
            if self._evaluate(meter.mean_loss(s), tps, eff):
                s.stopped = True
        if s.stopped or self._out_of_steps():
            return True
        if cfg.save_every > 0 and s.step % cfg.save_every == 0:
            meter.fold(s)
            self.save_checkpoint()
        meter.restart_clock()
        return False

    def _log_train(self, mean_loss: float, tokens_per_s: float) -> None:
        """The ``log_every`` line: running train loss, learning rate, tokens/s (and TensorBoard)."""
        s = self.state
        lr = self.scheduler.get_last_lr()[0]
        self.log(f"step {s.step} (epoch {s.epoch + 1}): train loss {mean_loss:.4f}, lr {lr:.3g}, "
                 f"{tokens_per_s:,.0f} tokens/s")
        self.run_log.report("train", {"loss": mean_loss, "lr": lr, "tokens_per_s": tokens_per_s}, s.step)

    def _efficiency(self) -> float | None:
        if self.batch_stats is None:
            return None
        stats = self.batch_stats()
        return None if stats is None or not stats.batches else float(stats.padding_efficiency)

    def _end_epoch(self, meter: EpochMeter, group: AccumGroup | None) -> None:
        """Close the bar, evaluate (unless the last step just did), print the epoch's summary,
        checkpoint and move to the next epoch."""
        s = self.state
        self._bar.close()
        self._bar = None
        meter.fold(s)
        if s.epoch_batch == 0:
            raise SeqBucketError("the training pipeline yielded no batch: is the training set empty?")
        if group is not None:  # cannot happen with a correct batch count; never step on half a group
            raise SeqBucketError(f"the training pipeline yielded fewer batches than the "
                                 f"{self.steps_per_epoch} announced per epoch (Trainer(steps_per_epoch=...))")
        tps = meter.tokens_per_s()
        if not s.evaluated_now():
            if self._evaluate(meter.mean_loss(s), tps, self._efficiency()):
                s.stopped = True
        self._log_epoch(tps)
        s.epoch_done = True
        self.save_checkpoint()
        s.next_epoch()

    def _log_epoch(self, tokens_per_s: float) -> None:
        s = self.state
        epoch_tokens, epoch_tps = s.tokens, tokens_per_s
        if self.dist is not None:  # the whole run's figures, as in log.jsonl
            epoch_tokens, epoch_tps = self.dist.all_reduce_sum([float(s.tokens), tokens_per_s])
        self.log(f"epoch {s.epoch + 1} done: {s.epoch_step} steps, {int(epoch_tokens):,} tokens, "
                 f"{epoch_tps:,.0f} tokens/s in training steps"
                 + (f" (all {self.dist.world_size} processes)" if self.dist is not None else ""))


def oom_message(batch: Any, device: torch.device, step: int) -> str:
    """The message of a batch that did not fit in memory: its shape and a ``max_tokens`` budget
    that would fit (70% of the failed batch's padded tokens, a multiple of 64)."""
    shape = tuple(getattr(batch, "input_ids", torch.empty(0)).shape)
    if len(shape) < 2:
        return (f"out of {device} memory in training step {step}; lower the pipeline's max_tokens or "
                f"batch_size (bucket_batch)")
    rows, cols = shape[0], shape[1]
    padded = rows * cols
    lengths = getattr(batch, "lengths", None)
    real = f", {int(lengths.sum()):,} real" if isinstance(lengths, torch.Tensor) else ""
    fits = max(64, int(padded * 0.7) // 64 * 64)
    return (f"out of {device} memory in training step {step} on a batch of {rows} rows x {cols} tokens "
            f"({padded:,} padded tokens{real}). Lower the token budget: bucket_batch(max_tokens={fits}) keeps "
            f"every batch at most {fits:,} padded tokens (tokenize(max_length=...) shortens the longest "
            f"examples; bucket_batch(longest_first=True) shows such an error at step 1).")
