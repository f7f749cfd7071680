"""BucketBatcher under a real torch.distributed process group (2 CPU processes, gloo)."""

from __future__ import annotations

import collections
import json

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_examples

from seqbucket_plugin.datapipes import BucketBatcher, MapDatasetSource

LENGTHS = np.random.default_rng(5).integers(1, 300, 333)


def _worker(rank: int, world_size: int, store_path: str, out_dir: str) -> None:
    import datasets

    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        source = MapDatasetSource(datasets.Dataset.from_list(make_examples(LENGTHS)))
        batcher = BucketBatcher(source, max_tokens=1000, seed=4)  # rank and world size from the group
        epoch = [[e["id"] for e in batch] for batch in batcher]
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"rank": batcher.rank, "world_size": batcher.world_size, "batches": epoch,
                       "repeats": batcher.stats.padding_repeats}, f)
    finally:
        dist.destroy_process_group()


def test_ranks_from_process_group_share_the_epoch(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"]) for r in results] == [(0, 2), (1, 2)]
    assert len(results[0]["batches"]) == len(results[1]["batches"]), "same number of steps on every rank"
    seen = collections.Counter(i for r in results for batch in r["batches"] for i in batch)
    assert set(seen) == set(range(LENGTHS.size))
    assert sum(seen.values()) - LENGTHS.size == results[0]["repeats"] <= 1
