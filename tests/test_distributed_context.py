"""DistContext tear-down: the barrier on a normal exit only, and the group released while the
interpreter is alive (a gloo group freed during interpreter shutdown can abort the process)."""

from __future__ import annotations

import gc
import types
import weakref
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from seqbucket_plugin.training.distributed import DistContext


@pytest.fixture
def group(tmp_path):
    """A real one-process gloo group, always destroyed afterwards."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_close_releases_a_ddp_wrapper_caught_in_a_reference_cycle(group):
    gc.disable()  # no collection behind the test's back: only close() may free the cycle
    try:
        holder = types.SimpleNamespace(ddp=DistributedDataParallel(nn.Linear(3, 2)))
        holder.myself = holder
        holder.ddp(torch.ones(4, 3)).sum().backward()
        ddp = weakref.ref(holder.ddp)
        del holder
        assert ddp() is not None
        DistContext(initialized=True).close(synchronize=True)
        assert ddp() is None, "the DDP wrapper (and with it the gloo group) outlived close()"
        assert not dist.is_initialized()
    finally:
        gc.enable()


@pytest.mark.parametrize("fails", [False, True])
def test_barrier_before_destroy_only_when_the_run_ended_normally(group, monkeypatch, fails):
    barriers = []
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(1))
    ctx = DistContext(world_size=2, initialized=True)  # "enabled"; the real group has one process
    with pytest.raises(RuntimeError) if fails else nullcontext():
        with ctx:
            if fails:
                raise RuntimeError("rank failed")
    assert barriers == ([] if fails else [1]), "a failed rank must not wait at a barrier the others never reach"
    assert not dist.is_initialized() and not ctx.initialized


def test_close_leaves_a_group_it_did_not_create(group):
    DistContext(initialized=False).close(synchronize=True)
    assert dist.is_initialized()
