"""Multi-process training under ``torchrun``: process group, sharded evaluation, rank-0 output.

:func:`init_distributed` reads the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). With ``WORLD_SIZE`` > 1 it initialises the
default process group (NCCL when the run is on CUDA, ``LOCAL_RANK`` picking the GPU; gloo on the
CPU) and returns a :class:`DistContext`; without those variables (or with ``WORLD_SIZE`` = 1) the
context is a single process and nothing is initialised, so single-process runs are unchanged.

The training pipeline shards itself: a :class:`~seqbucket_plugin.datapipes.BucketBatcher` built
after the group exists takes its rank and world size from it (every rank plans the same epoch,
takes every ``world_size``-th batch; equal batch counts on every rank).

Evaluation is sharded differently, so that the metrics equal a single-process evaluation exactly:
every rank builds the *unsharded* evaluation pipeline (the same length-sorted batches a single
process sees), runs the model on batches ``rank, rank + world_size, ...`` only, and the per-batch
results are gathered and put back in the original batch order (:func:`map_batches`). No example is
repeated and none is counted twice; every rank then computes the same metrics from the same lists.

Multi-node runs need ``--output-dir`` (and the data files) on a filesystem every node sees: rank
0 writes the tokenizer, checkpoints and best model there, the other ranks read them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from seqbucket_plugin.errors import SeqBucketError
from seqbucket_plugin.training.engine import resolve_device

__all__ = ["DistContext", "DebugRecorder", "init_distributed", "map_batches", "world_size_from_env"]

DEBUG_DIR_ENV = "SEQBUCKET_DEBUG_DIR"
DEBUG_CRASH_ENV = "SEQBUCKET_DEBUG_CRASH_AFTER"


def world_size_from_env() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise SeqBucketError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from err


@dataclasses.dataclass
class DistContext:
    """This process's place in the run; ``world_size`` = 1 means a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    initialized: bool = False  # whether init_distributed created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    @contextlib.contextmanager
    def quiet_unless_main(self) -> Iterator[None]:
        """Ranks other than 0 print nothing to stdout (errors still go to stderr)."""
        if self.is_main:
            yield
            return
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield

    def close(self, *, synchronize: bool = False) -> None:
        """Destroy the process group if :func:`init_distributed` created it.

        With ``synchronize`` (a run that ended normally) the ranks first meet at a barrier, so no
        rank tears the group down while another is still in its last collectives. Garbage is
        collected around ``destroy_process_group``: whatever still holds the group (a
        ``DistributedDataParallel`` wrapper caught in a reference cycle, for one) must release it
        while the interpreter is fully alive. Left to interpreter shutdown, the gloo backend's
        worker threads can touch Python objects after finalisation has begun, and a run that
        succeeded aborts on exit ("terminate called without an active exception", SIGABRT).
        """
        if not (self.initialized and dist.is_initialized()):
            return
        if synchronize and self.enabled:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
        self.initialized = False

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(synchronize=exc_type is None)


def init_distributed(device_name: str = "auto") -> DistContext:
    """The run's :class:`DistContext`, initialising the process group under ``torchrun``.

    Without ``WORLD_SIZE`` > 1 this only resolves ``device_name`` (single process, as before).
    Otherwise: the backend is NCCL when the device resolves to CUDA (``cuda:LOCAL_RANK``), else
    gloo on the CPU; the group is initialised from the environment (``env://``).

    Raises:
        SeqBucketError: inconsistent torchrun variables, or CUDA asked for but not available.
    """
    world = world_size_from_env()
    if world <= 1:
        return DistContext(device=resolve_device(device_name))
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as err:
        raise SeqBucketError(f"WORLD_SIZE={world} but RANK/LOCAL_RANK are missing or not integers "
                             "(launch with torchrun)") from err
    if not 0 <= rank < world:
        raise SeqBucketError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SeqBucketError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} "
                                 "CUDA device(s); use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    initialized = False
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs)
        initialized = True
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise SeqBucketError("a process group already exists with a different rank/world size than the environment")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, initialized=initialized)


def map_batches(batches: Iterable, fn: Callable[[Any], Any], ctx: DistContext | None = None) -> list[Any]:
    """``[fn(batch) for batch in batches]``, the batches shared out among the ranks.

    Rank ``r`` runs ``fn`` on batches ``r, r + world_size, ...`` only (the others are skipped
    without running ``fn``); the results are gathered and returned in the original batch order on
    every rank, so anything computed from them equals the single-process result. Every rank must
    iterate the same batches (an unsharded, unshuffled pipeline) and call this together.
    """
    if ctx is None or not ctx.enabled:
        return [fn(batch) for batch in batches]
    mine = [fn(batch) for i, batch in enumerate(batches) if i % ctx.world_size == ctx.rank]
    per_rank = ctx.all_gather_object(mine)
    total = sum(len(r) for r in per_rank)
    return [per_rank[i % ctx.world_size][i // ctx.world_size] for i in range(total)]


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of every tensor of a state dict (names sorted; bytes of the CPU tensors)."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def parameters_sha256(model: nn.Module) -> str:
    """:func:`state_dict_sha256` of ``model.state_dict()``."""
    return state_dict_sha256(model.state_dict())


class DebugRecorder:
    """Test hooks, off unless the environment asks for them (never in normal runs).

    ``SEQBUCKET_DEBUG_DIR``: every rank records the example ids (``extras["idx"]``) of the
    training batches it trains on and, at the end, writes ``debug_rank<r>.json`` there (steps,
    ids, padding repeats, a hash of the final and best weights). ``SEQBUCKET_DEBUG_CRASH_AFTER=N``:
    raise after N training batches (simulates a crash, for resume tests).
    """

    def __init__(self, ctx: DistContext):
        self.ctx = ctx
        self.directory = os.environ.get(DEBUG_DIR_ENV) or None
        crash = os.environ.get(DEBUG_CRASH_ENV)
        self.crash_after = int(crash) if crash else 0
        self.batches = 0
        self.seen: list[int] = []

    @property
    def wants_ids(self) -> bool:
        return self.directory is not None

    def wrap(self, step: Callable) -> Callable:
        if not self.wants_ids and not self.crash_after:
            return step

        def recording_step(model, batch, backward):
            self.batches += 1
            if self.crash_after and self.batches > self.crash_after:
                raise RuntimeError(f"{DEBUG_CRASH_ENV}: simulated crash after {self.crash_after} batches")
            if self.wants_ids and "idx" in batch.extras:
                self.seen.extend(int(i) for i in batch.extras["idx"].tolist())
            return step(model, batch, backward)

        return recording_step

    def dump(self, trainer: Any, final_hash: str, best_hash: str, padding_repeats: int) -> None:
        if not self.directory:
            return
        os.makedirs(self.directory, exist_ok=True)
        record = {"rank": self.ctx.rank, "world_size": self.ctx.world_size, "steps": trainer.state.step,
                  "batches": self.batches, "seen": self.seen, "padding_repeats": padding_repeats,
                  "final_sha256": final_hash, "best_sha256": best_hash}
        path = os.path.join(self.directory, f"debug_rank{self.ctx.rank}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f)
        print(f"debug record written to {path}", file=sys.stderr)
