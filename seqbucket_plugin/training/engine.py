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
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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

__all__ = ["StepOutput", "TrainConfig", "Trainer", "linear_warmup_decay", "resolve_device"]

CHECKPOINT_FILE = "checkpoint.pt"
BEST_MODEL_FILE = "best_model.pt"
LOG_FILE = "log.jsonl"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "rng", "loader", "loop")


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
            raise SeqBucketError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        return torch.device(name)
    raise SeqBucketError(f"unknown device {name!r}; use auto, cpu or cuda")


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


REPORT_TO = ("none", "tensorboard")


def tensorboard_writer(log_dir: str) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` for ``log_dir``.

    Raises:
        SeqBucketError: the ``tensorboard`` package is not installed (the message says how).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise SeqBucketError("--report-to tensorboard needs the tensorboard package: "
                             "pip install 'seqbucket_plugin[tensorboard]'") from err
    return SummaryWriter(log_dir=log_dir)


@dataclass
class StepOutput:
    """What a training step returns: the loss (detached scalar tensor, any device) and the number
    of real tokens the step trained on."""

    loss: torch.Tensor
    tokens: int


@dataclass
class _LoopState:
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


class _Progress:
    """A tqdm bar when stderr is a terminal, else nothing (epoch summaries are printed instead)."""

    def __init__(self, enabled: bool, total: int | None, initial: int, desc: str):
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=desc, leave=True, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def update(self, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(postfix, refresh=False)

    def writing(self) -> contextlib.AbstractContextManager:
        """A context in which printed lines go above the bar instead of into it."""
        if self.bar is None:
            return contextlib.nullcontext()
        return self.bar.external_write_mode()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
        SeqBucketError: an invalid ``grad_sync``, ``grad_accum`` or ``nonfinite`` setting.
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
        if grad_sync not in ("ddp", "manual"):
            raise SeqBucketError(f"grad_sync must be 'ddp' or 'manual', got {grad_sync!r}")
        self.grad_sync = grad_sync
        self.train_model: nn.Module = self.model
        if self.dist is not None and grad_sync == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.grad_accum is None or config.grad_accum < 1:
            raise SeqBucketError(f"--grad-accum must be a positive integer, got {config.grad_accum!r}")
        if config.nonfinite not in ("stop", "skip"):
            raise SeqBucketError(f"nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}")
        if config.report_to not in REPORT_TO:
            raise SeqBucketError(f"report_to must be one of {list(REPORT_TO)}, got {config.report_to!r}")
        if config.grad_accum > 1 and not steps_per_epoch:
            raise SeqBucketError("--grad-accum > 1 needs the number of batches per epoch (a map-style dataset)")
        self.loader = train_loader
        self.train_step = train_step
        self.evaluate_fn = evaluate
        self.config = config
        self.output_dir = os.fspath(output_dir)
        self.device = device
        self.steps_per_epoch = steps_per_epoch
        self.batch_stats = batch_stats
        self._print = log if self.is_main else (lambda message: None)
        self._bar: _Progress | None = None
        self.writer = None
        self.fingerprint = fingerprint
        self.last_saved_step: int | None = None
        os.makedirs(self.output_dir, exist_ok=True)

        self.total_steps = self._total_steps()
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or "embedding" in name else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
        )
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
        self.state = _LoopState()
        if config.report_to == "tensorboard" and self.is_main:
            self.writer = tensorboard_writer(os.path.join(self.output_dir, "tensorboard"))

    # ------------------------------------------------------------------ helpers
    def log(self, message: str) -> None:
        """Print ``message`` (rank 0), above the progress bar when one is shown."""
        with self._bar.writing() if self._bar is not None else contextlib.nullcontext():
            self._print(message)

    def _report(self, prefix: str, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def _total_steps(self) -> int:
        per_epoch = -(-(self.steps_per_epoch or 0) // self.config.grad_accum)  # optimizer steps per epoch
        total = per_epoch * self.config.epochs if per_epoch else 0
        if self.config.max_steps > 0:
            total = min(total, self.config.max_steps) if total else self.config.max_steps
        return max(1, total)

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

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
        if problems:
            raise ResumeMismatchError(
                f"--resume: {path} belongs to a different run; nothing was changed in {self.output_dir}.\n  "
                + "\n  ".join(problems)
                + "\nResume with the data, tokenizer and settings of that run, or start a new --output-dir.")
        for note in notes:
            self.log(f"--resume: {note}")
        if world > 1:
            ranks = ckpt.get("ranks")
            if not isinstance(ranks, list) or len(ranks) != world:
                raise CheckpointError(f"the per-rank states of the {world} processes are missing", path)
            own = ranks[self.dist.rank]
            ckpt["rng"], ckpt["loader"], ckpt["loop"] = own["rng"], own["loader"], own["loop"]
        return ckpt

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
        self.state = _LoopState(**ckpt["loop"])
        self.last_saved_step = self.state.step
        if not self.is_main:
            return
        # the log holds exactly the evaluations of the restored history
        with open(os.path.join(self.output_dir, LOG_FILE), "w", encoding="utf-8") as f:
            for record in self.state.history:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, train_loss: float, tokens_per_s: float, efficiency: float | None, elapsed: float) -> bool:
        """Evaluate on dev, log, keep the best model; True when training should stop early."""
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                metrics = self.evaluate_fn(self.model)
        except torch.OutOfMemoryError as err:
            raise BatchOutOfMemoryError(
                f"out of {self.device} memory during the dev evaluation at step {self.state.step}: evaluation "
                f"batches use the training token budget; lower --max-tokens") from err
        self.model.train()
        if self.config.metric not in metrics:
            raise SeqBucketError(f"evaluate() returned {sorted(metrics)}, without the metric {self.config.metric!r}")
        value = float(metrics[self.config.metric])
        if self.dist is not None:  # the train figures of all ranks; the metrics are already global
            loss_total, n, tps, eff = self.dist.all_reduce_sum(
                [train_loss * self.state.loss_n, self.state.loss_n, tokens_per_s, efficiency or 0.0])
            train_loss = loss_total / n if n else float("nan")
            tokens_per_s = tps
            efficiency = None if efficiency is None else eff / self.dist.world_size
        s = self.state
        improved = value > s.best_metric
        if improved:
            s.best_metric, s.best_step, s.bad_evals = value, s.step, 0
            if self.is_main:
                atomic_save(self.model.state_dict(), self.best_model_path)
        else:
            s.bad_evals += 1
        record = {"step": s.step, "epoch": s.epoch, "train_loss": round(train_loss, 6),
                  **{f"dev_{k}": v for k, v in metrics.items()},
                  "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": round(tokens_per_s, 1),
                  "padding_efficiency": None if efficiency is None else round(efficiency, 4),
                  "skipped_nonfinite": s.skipped_nonfinite, "elapsed_s": round(elapsed, 2), "best": improved}
        s.history.append(record)
        self._report("dev", metrics, s.step)
        self._report("train", {"loss": train_loss, "tokens_per_s": tokens_per_s}, s.step)
        if self.is_main:
            with open(os.path.join(self.output_dir, LOG_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        shown = ", ".join(f"dev {k} {v:.4f}" for k, v in metrics.items())
        self.log(f"step {s.step} (epoch {s.epoch + 1}): train loss {train_loss:.4f}, {shown}, "
                 f"{tokens_per_s:,.0f} tokens/s" + (f", padding efficiency {efficiency:.1%}" if efficiency else "")
                 + (" *" if improved else ""))
        return self.config.patience > 0 and s.bad_evals >= self.config.patience

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> list[dict]:
        """Train until ``epochs``/``max_steps``/early stopping; returns the evaluation history.

        With ``resume`` and an existing checkpoint, continues from it (a missing checkpoint
        starts from scratch with a message). The best model is in ``best_model.pt``.
        """
        cfg, s = self.config, self.state
        found = os.path.isfile(self.checkpoint_path)
        if self.dist is not None:  # rank 0 decides, so every rank takes the same branch
            found = bool(self.dist.broadcast_object(found))
        if resume and found:
            self.load_checkpoint()
            s = self.state
            self.log(f"resumed from {CHECKPOINT_FILE}: step {s.step}, epoch {s.epoch + 1}"
                     + (" (epoch finished)" if s.epoch_done else f", batch {s.epoch_step}"))
        else:
            if resume:
                self.log(f"--resume: no {CHECKPOINT_FILE} in the output directory yet, starting from scratch")
            if self.is_main:
                open(os.path.join(self.output_dir, LOG_FILE), "w").close()
        if s.epoch_done:  # resumed from an epoch-end checkpoint
            s.epoch += 1
            s.epoch_step = 0
            s.epoch_batch = 0
            s.epoch_done = False
            s.loss_sum, s.loss_n, s.tokens = 0.0, 0, 0
        self.model.train()
        self.train_model.train()
        start_time = time.perf_counter()
        elapsed_before = s.history[-1]["elapsed_s"] if s.history else 0.0
        while not s.stopped and s.epoch < cfg.epochs and not self._out_of_steps():
            self._run_epoch(start_time, elapsed_before)
        return s.history

    def _out_of_steps(self) -> bool:
        return self.config.max_steps > 0 and self.state.step >= self.config.max_steps

    def _run_epoch(self, start_time: float, elapsed_before: float) -> None:
        cfg, s = self.config, self.state
        steps = -(-self.steps_per_epoch // cfg.grad_accum) if self.steps_per_epoch else None
        if cfg.max_steps > 0:  # the bar ends where --max-steps stops the run
            left = cfg.max_steps - (s.step - s.epoch_step)
            steps = left if steps is None else min(steps, left)
        bar = _Progress(cfg.progress and self.is_main, steps, s.epoch_step, f"epoch {s.epoch + 1}/{cfg.epochs}")
        self._bar = bar
        # the epoch's running loss lives on the device (read only for logs); restored sums come first
        loss_sum = torch.zeros((), device=self.device)
        train_time = 0.0
        new_tokens = 0

        def mean_loss() -> float:
            n = s.loss_n
            return (s.loss_sum + float(loss_sum)) / n if n else float("nan")

        accum = cfg.grad_accum
        group_left = 0  # batches still to add to the current accumulation group
        t_prev = time.perf_counter()
        for batch in self.loader:  # tokens/s counts loading + step time, not evaluation/checkpoints
            batch = batch.to(self.device, non_blocking=True)
            if group_left == 0:
                self.optimizer.zero_grad(set_to_none=True)
                group_left = accum if accum == 1 else min(accum, self.steps_per_epoch - s.epoch_batch)
                group_size = max(1, group_left)
                group_loss = torch.zeros((), device=self.device)
                group_batches = group_tokens = 0
            group_left -= 1
            s.epoch_batch += 1
            final = group_left <= 0
            backward = self._backward if group_size == 1 else self._scaled_backward(group_size)
            sync = contextlib.nullcontext()
            if not final and self.train_model is not self.model:
                sync = self.train_model.no_sync()
            with sync:
                out = self._run_step(batch, backward)
            group_loss += out.loss.detach().float()
            group_batches += 1
            group_tokens += out.tokens
            if not final:
                continue
            group_left = 0
            if self.dist is not None and self.grad_sync == "manual":
                self._all_reduce_grads()
            grad_norm = None
            if cfg.clip_norm > 0:
                self.scaler.unscale_(self.optimizer)
                grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
            if not self._finite(group_loss, grad_norm):
                self._skip_nonfinite(batch, group_loss, grad_norm)
                t_prev = time.perf_counter()
                continue
            s.nonfinite_streak = 0
            loss_sum += group_loss
            s.loss_n += group_batches
            s.tokens += group_tokens
            new_tokens += group_tokens
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            s.step += 1
            s.epoch_step += 1
            train_time += time.perf_counter() - t_prev
            tps = new_tokens / train_time if train_time > 0 else 0.0
            eff = self._efficiency()
            if bar.bar is not None:
                bar.update(loss=f"{mean_loss():.4f}", tok_s=f"{tps:,.0f}",
                           pad_eff=f"{eff:.1%}" if eff is not None else "-")
            if cfg.log_every > 0 and s.step % cfg.log_every == 0:
                lr = self.scheduler.get_last_lr()[0]
                self.log(f"step {s.step} (epoch {s.epoch + 1}): train loss {mean_loss():.4f}, lr {lr:.3g}, "
                         f"{tps:,.0f} tokens/s")
                self._report("train", {"loss": mean_loss(), "lr": lr, "tokens_per_s": tps}, s.step)
            if cfg.eval_every > 0 and s.step % cfg.eval_every == 0:
                if self._evaluate(mean_loss(), tps, eff, elapsed_before + time.perf_counter() - start_time):
                    s.stopped = True
            if s.stopped or self._out_of_steps():
                break
            if cfg.save_every > 0 and s.step % cfg.save_every == 0:
                s.loss_sum += float(loss_sum)
                loss_sum.zero_()
                self.save_checkpoint()
            t_prev = time.perf_counter()
        bar.close()
        self._bar = None
        s.loss_sum += float(loss_sum)
        loss_sum.zero_()
        if s.epoch_batch == 0:
            raise SeqBucketError("the training pipeline yielded no batch: is the training set empty?")
        if group_left > 0:  # cannot happen with a correct batch count; never step on half a group
            raise SeqBucketError(f"the training pipeline yielded fewer batches than the "
                                 f"{self.steps_per_epoch} announced per epoch")
        tps = new_tokens / train_time if train_time > 0 else 0.0
        evaluated_here = bool(s.history) and s.history[-1]["step"] == s.step
        if not evaluated_here:
            if self._evaluate(mean_loss(), tps, self._efficiency(),
                              elapsed_before + time.perf_counter() - start_time):
                s.stopped = True
        epoch_tokens, epoch_tps = s.tokens, tps
        if self.dist is not None:  # the whole run's figures, as in log.jsonl
            epoch_tokens, epoch_tps = self.dist.all_reduce_sum([float(s.tokens), tps])
        self.log(f"epoch {s.epoch + 1} done: {s.epoch_step} steps, {int(epoch_tokens):,} tokens, "
                 f"{epoch_tps:,.0f} tokens/s in training steps"
                 + (f" (all {self.dist.world_size} processes)" if self.dist is not None else ""))
        s.epoch_done = True
        self.save_checkpoint()
        s.epoch += 1
        s.epoch_step = 0
        s.epoch_batch = 0
        s.epoch_done = False
        s.loss_sum, s.loss_n, s.tokens = 0.0, 0, 0

    def _run_step(self, batch: Any, backward: Callable[[torch.Tensor], None]) -> StepOutput:
        """One training step; a CUDA out-of-memory error becomes a :class:`BatchOutOfMemoryError`."""
        try:
            return self.train_step(self.train_model if self.grad_sync == "ddp" else self.model, batch, backward)
        except torch.OutOfMemoryError as err:
            raise BatchOutOfMemoryError(oom_message(batch, self.device, self.state.step + 1)) from err

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
            raise NonFiniteLossError(f"{what}. The weights were not updated with it and {saved}. Lower --lr, "
                                     f"check the data, or pass --nonfinite skip to skip such steps (counted).")
        s.skipped_nonfinite += 1
        s.nonfinite_streak += 1
        self.log(f"{what}: optimizer step skipped ({s.skipped_nonfinite} skipped so far)")
        if cfg.nonfinite_patience > 0 and s.nonfinite_streak >= cfg.nonfinite_patience:
            raise NonFiniteLossError(f"{s.nonfinite_streak} optimizer steps in a row had a non-finite loss "
                                     f"(last: {what}); stopping. {saved}.")

    def _scaled_backward(self, n: int) -> Callable[[torch.Tensor], None]:
        def backward(loss: torch.Tensor) -> None:
            self._backward(loss / n)

        return backward

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

    def _efficiency(self) -> float | None:
        if self.batch_stats is None:
            return None
        stats = self.batch_stats()
        return None if stats is None or not stats.batches else float(stats.padding_efficiency)

    def load_best(self) -> None:
        """Load ``best_model.pt`` into the model (no-op when there is none)."""
        if os.path.isfile(self.best_model_path):
            self.model.load_state_dict(load_checkpoint(self.best_model_path, map_location=self.device))


def oom_message(batch: Any, device: torch.device, step: int) -> str:
    """The message of a batch that did not fit in memory: its shape and a ``--max-tokens`` that
    would fit (70% of the failed batch's padded tokens, a multiple of 64)."""
    shape = tuple(getattr(batch, "input_ids", torch.empty(0)).shape)
    if len(shape) < 2:
        return f"out of {device} memory in training step {step}; lower --max-tokens or --batch-size"
    rows, cols = shape[0], shape[1]
    padded = rows * cols
    lengths = getattr(batch, "lengths", None)
    real = f", {int(lengths.sum()):,} real" if isinstance(lengths, torch.Tensor) else ""
    fits = max(64, int(padded * 0.7) // 64 * 64)
    return (f"out of {device} memory in training step {step} on a batch of {rows} rows x {cols} tokens "
            f"({padded:,} padded tokens{real}). Lower the token budget: --max-tokens {fits} keeps every batch "
            f"at most {fits:,} padded tokens (--max-length shortens the longest examples; --longest-first "
            f"shows such an error at step 1).")
