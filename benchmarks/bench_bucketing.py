"""Bucket batching on real IMDB train lengths, side by side with the peers, in one run.

    python benchmarks/bench_bucketing.py            # everything (about 2 minutes on 2 cores)
    python benchmarks/bench_bucketing.py --quick    # skip the 1M-row timings

Lengths: IMDB train (``../shared/data/imdb`` from the project root), lower-cased, split on
whitespace and punctuation (the ``tokenizers`` ``Whitespace`` pre-tokenizer): 25,000 reviews,
7.1 M tokens, mean 284, p99 1,099, max 2,850.

For each method, two epochs are drawn and measured:
* efficiency: real tokens / sum over batches of (rows x longest row);
* pair repeat: sort each epoch-0 batch by (length, id), take adjacent pairs, share of them that
  share a batch again in epoch 1 (0 = fresh batches every epoch);
* lag-1: autocorrelation of consecutive batches' longest lengths (a sorted sawtooth shows here);
* batches / ceil(real tokens / max_tokens) and the largest rows x longest / max_tokens.
Then timings: planning a 1M-row length column, restoring mid-epoch, per-batch overhead, collation.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imdb"
sys.path.insert(0, str(ROOT))


def imdb_lengths() -> np.ndarray:
    import pyarrow.parquet as pq
    from tokenizers.pre_tokenizers import Whitespace

    texts = pq.read_table(DATA / "train.parquet", columns=["text"]).column("text").to_pylist()
    split = Whitespace().pre_tokenize_str
    return np.array([len(split(t.lower())) for t in texts], dtype=np.int64)


def measure(lengths: np.ndarray, epoch0: list, epoch1: list, max_tokens: int | None) -> dict:
    flat = np.concatenate(epoch0)
    where = np.empty(lengths.size, np.int64)
    for j, batch in enumerate(epoch1):
        where[batch] = j
    pairs = repeats = 0
    real = padded = 0
    worst = 0.0
    for batch in epoch0:
        ordered = batch[np.lexsort((batch, lengths[batch]))]
        pairs += ordered.size - 1
        repeats += int((where[ordered[:-1]] == where[ordered[1:]]).sum())
        real += int(lengths[batch].sum())
        padded += batch.size * int(lengths[batch].max())
        if max_tokens:
            worst = max(worst, batch.size * int(lengths[batch].max()) / max_tokens)
    longest = np.array([lengths[b].max() for b in epoch0], dtype=np.float64)
    out = {
        "efficiency": real / padded,
        "pair_repeat": repeats / max(pairs, 1),
        "lag1": float(np.corrcoef(longest[:-1], longest[1:])[0, 1]),
        "batches": len(epoch0),
        "exactly_once": bool(flat.size == lengths.size and np.unique(flat).size == lengths.size),
    }
    if max_tokens:
        out["batch_ratio"] = len(epoch0) / math.ceil(lengths.sum() / max_tokens)
        out["max_over_budget"] = worst
    return out


# ---------------------------------------------------------------- peers
def random_batches(lengths, epoch, batch_size=32):
    perm = np.random.default_rng(epoch).permutation(lengths.size)
    return np.split(perm, np.arange(batch_size, lengths.size, batch_size))


def hf_length_grouped(lengths, epoch, batch_size=32):
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    gen = torch.Generator().manual_seed(epoch)
    order = np.array(list(LengthGroupedSampler(batch_size, lengths=lengths.tolist(), generator=gen)))
    return np.split(order, np.arange(batch_size, order.size, batch_size))


def lhotse_dynamic(lengths, epoch, max_tokens, num_buckets):
    from lhotse.cut.text import TextExample
    from lhotse.dataset.sampling import DynamicBucketingSampler
    from lhotse.dataset.sampling.base import TokenConstraint

    examples = [TextExample(text=str(i), tokens=np.zeros(int(n), np.int8)) for i, n in enumerate(lengths)]
    sampler = DynamicBucketingSampler(
        examples, constraint=TokenConstraint(max_tokens=max_tokens), num_buckets=num_buckets,
        shuffle=True, seed=0, buffer_size=20_000, world_size=1, rank=0,
    )
    sampler.set_epoch(epoch)
    return [np.array([int(e.text) for e in batch]) for batch in sampler]


def noisy_sort(lengths, epoch, max_tokens, noise):
    rng = np.random.default_rng(epoch)
    order = np.argsort(lengths * rng.uniform(1 - noise, 1 + noise, lengths.size), kind="stable")
    batches, start = [], 0
    while start < order.size:
        longest = np.maximum.accumulate(lengths[order[start:start + 4096]])
        rows = max(1, int(np.searchsorted(longest * np.arange(1, longest.size + 1), max_tokens, "right")))
        batches.append(order[start:start + rows])
        start += rows
    return [batches[i] for i in rng.permutation(len(batches))]


# ---------------------------------------------------------------- ours
def ours(lengths, epoch_count=2, streaming=None, **kwargs):
    """Two epochs of our batcher. ``streaming``: None (map-style), "fixed" (the same stream order
    every epoch: a plain ``IterableWrapper`` over a list), "fixed-contiguous" (the same, cut into
    contiguous chunks of ``buffer_size`` as before issue 17: ``HOLD_BACK = 0``) or "shuffled" (a HF
    IterableDataset, 64 shards, shuffled per epoch with ``IterableDataset.shuffle(buffer_size=1000)``,
    the usual streaming set-up)."""
    import datasets
    from torchdata.nodes import IterableWrapper, Loader

    from seqbucket_plugin.datapipes import BucketBatcher, IterableDatasetSource, MapDatasetSource

    table = datasets.Dataset.from_dict({"id": np.arange(lengths.size), "length": lengths})
    batcher_class = BucketBatcher
    if streaming == "fixed-contiguous":
        class ContiguousBatcher(BucketBatcher):
            HOLD_BACK = 0.0

        batcher_class = ContiguousBatcher
    if streaming in ("fixed", "fixed-contiguous"):
        source = IterableWrapper([{"id": i, "length": int(n)} for i, n in enumerate(lengths)])
    elif streaming == "shuffled":
        source = IterableDatasetSource(table.to_iterable_dataset(num_shards=64).shuffle(seed=0, buffer_size=1000))
    else:
        source = MapDatasetSource(table)
    batcher = batcher_class(source, **kwargs)
    loader = Loader(batcher)
    epochs = [[np.array([e["id"] for e in batch]) for batch in loader] for _ in range(epoch_count)]
    return epochs, batcher


def fmt(row: dict) -> str:
    parts = [f"eff {row['efficiency']:.2%}", f"pair repeat {row['pair_repeat']:.3f}", f"lag-1 {row['lag1']:+.2f}",
             f"batches {row['batches']}"]
    if "batch_ratio" in row:
        parts += [f"ratio {row['batch_ratio']:.3f}", f"max/budget {row['max_over_budget']:.3f}"]
    parts.append("exactly-once" if row["exactly_once"] else "NOT exactly-once")
    return " | ".join(parts)


def timings(quick: bool) -> None:
    import datasets
    from torchdata.nodes import Loader

    from seqbucket_plugin.datapipes import BucketBatcher, MapDatasetSource, collate_packed

    print("\n## Timings (medians)")
    rng = np.random.default_rng(0)
    if not quick:
        n = 1_000_000
        big = np.clip(rng.lognormal(np.log(212), 0.75, n), 1, 4000).astype(np.int64)
        ds = datasets.Dataset.from_dict({"length": big})
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            batcher = BucketBatcher(MapDatasetSource(ds), max_tokens=32 * 284)
            batcher.reset(None)
            runs.append(time.perf_counter() - start)
        print(f"1M-row length column to a planned epoch ({len(batcher._plan)} batches): "
              f"{statistics.median(runs):.2f} s")
        loader = Loader(BucketBatcher(MapDatasetSource(ds), max_tokens=32 * 284))
        it = iter(loader)
        for _ in range(1000):
            next(it)
        state = loader.state_dict()
        expected = [e["length"] for e in next(it)]
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            restored = Loader(BucketBatcher(MapDatasetSource(ds), max_tokens=32 * 284))
            restored.load_state_dict(state)
            got = [e["length"] for e in next(iter(restored))]
            runs.append(time.perf_counter() - start)
        assert got == expected
        print(f"restore mid-epoch of the 1M-row epoch, new process state, first batch identical: "
              f"{statistics.median(runs):.2f} s")

    class IndexOnly:
        """A random-access source whose rows cost nothing, to time the batcher alone."""

        def __init__(self, lengths):
            self._lengths = lengths

        def lengths(self, key):
            return self._lengths

        def take(self, indices):
            return indices

    from torchdata.nodes import BaseNode

    class IndexNode(IndexOnly, BaseNode):
        def __init__(self, lengths):
            BaseNode.__init__(self)
            IndexOnly.__init__(self, lengths)

        def next(self):
            raise StopIteration

        def get_state(self):
            return {}

    lengths = np.clip(rng.lognormal(np.log(212), 0.75, 200_000), 1, 4000).astype(np.int64)
    batcher = BucketBatcher(IndexNode(lengths), max_tokens=32 * 284)
    batcher.reset(None)
    count = len(batcher._plan)
    start = time.perf_counter()
    for _ in range(count):
        batcher.next()
    per_batch = (time.perf_counter() - start) / count
    plan_start = time.perf_counter()
    batcher.reset(None)
    plan_per_batch = (time.perf_counter() - plan_start) / count
    print(f"sampler overhead per batch: {per_batch * 1e6:.1f} us yielding + {plan_per_batch * 1e6:.1f} us "
          f"planning (amortised over {count} batches)")

    examples = [{"input_ids": rng.integers(0, 30_000, n).tolist(), "length": int(n), "label": 1}
                for n in rng.integers(64, 129, 64)]
    examples[0] = {"input_ids": rng.integers(0, 30_000, 128).tolist(), "length": 128, "label": 0}
    runs = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(100):
            collate_packed(examples)
        runs.append((time.perf_counter() - start) / 100)
    print(f"collation of 64 x 128 tokens into a PackedBatch: {statistics.median(runs) * 1e3:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1M-row timings")
    args = parser.parse_args()
    if not (DATA / "train.parquet").exists():
        print(f"skipped: {DATA} not found (the IMDB data is not part of a fresh clone)")
        return
    lengths = imdb_lengths()
    max_tokens = int(32 * round(lengths.mean()))
    print(f"IMDB train: {lengths.size} reviews, {lengths.sum()} tokens, mean {lengths.mean():.1f}, "
          f"p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()}; max_tokens = {max_tokens}\n")

    print("## Peers")
    rows = {
        "random batches of 32": measure(lengths, random_batches(lengths, 0), random_batches(lengths, 1), None),
        "HF LengthGroupedSampler, 32": measure(lengths, hf_length_grouped(lengths, 0),
                                               hf_length_grouped(lengths, 1), None),
    }
    for buckets in (30, 60):
        try:
            import lhotse  # noqa: F401
        except ImportError:
            print(f"lhotse DynamicBucketing, {buckets} buckets: skipped (pip install lhotse)")
            continue
        rows[f"lhotse DynamicBucketing, tokens, {buckets} buckets"] = measure(
            lengths, lhotse_dynamic(lengths, 0, max_tokens, buckets), lhotse_dynamic(lengths, 1, max_tokens, buckets),
            max_tokens)
    for noise in (0.02, 0.01):
        rows[f"sort with +-{noise:.0%} noise, chunk by budget"] = measure(
            lengths, noisy_sort(lengths, 0, max_tokens, noise), noisy_sort(lengths, 1, max_tokens, noise), max_tokens)
    for name, row in rows.items():
        print(f"{name:48s} {fmt(row)}")

    print("\n## seqbucket_plugin BucketBatcher")
    settings = {
        "max_tokens, map-style (defaults)": dict(max_tokens=max_tokens),
        "max_tokens, shuffled stream, buffer 20,000": dict(max_tokens=max_tokens, streaming="shuffled"),
        "max_tokens, fixed-order stream, buffer 20,000": dict(max_tokens=max_tokens, streaming="fixed"),
        "max_tokens, fixed-order stream, contiguous chunks": dict(max_tokens=max_tokens,
                                                                  streaming="fixed-contiguous"),
        "max_tokens, num_buckets=256 (efficiency knob)": dict(max_tokens=max_tokens, num_buckets=256),
        "max_tokens, num_buckets=256, shuffled stream": dict(max_tokens=max_tokens, num_buckets=256,
                                                             streaming="shuffled"),
        "batch_size=32, map-style": dict(batch_size=32),
        "batch_size=32, shuffled stream, buffer 20,000": dict(batch_size=32, streaming="shuffled"),
    }
    for name, kwargs in settings.items():
        start = time.perf_counter()
        (e0, e1), _ = ours(lengths, **kwargs)
        elapsed = time.perf_counter() - start
        row = measure(lengths, e0, e1, kwargs.get("max_tokens"))
        print(f"{name:48s} {fmt(row)} | 2 epochs {elapsed:.1f} s")

    print("\n## Defaults over seeds 0-4 (worst case of each metric)")
    names = {None: "map-style", "shuffled": "shuffled stream, buffer 20,000",
             "fixed": "fixed-order stream, buffer 20,000"}
    for streaming in (None, "shuffled", "fixed"):
        rows = []
        for seed in range(5):
            (e0, e1), _ = ours(lengths, streaming=streaming, max_tokens=max_tokens, seed=seed)
            rows.append(measure(lengths, e0, e1, max_tokens))
        print(f"{names[streaming]:48s} "
              f"eff min {min(r['efficiency'] for r in rows):.2%} | "
              f"pair repeat max {max(r['pair_repeat'] for r in rows):.3f} | "
              f"|lag-1| max {max(abs(r['lag1']) for r in rows):.2f} | "
              f"ratio max {max(r['batch_ratio'] for r in rows):.3f} | "
              f"{'exactly-once' if all(r['exactly_once'] for r in rows) else 'NOT exactly-once'}")

    timings(args.quick)


if __name__ == "__main__":
    main()
