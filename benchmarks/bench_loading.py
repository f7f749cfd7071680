"""Loading throughput and streaming memory, side by side in one run.

    python benchmarks/bench_loading.py throughput   # IMDB train, ours vs the usual HF DataLoader path
    python benchmarks/bench_loading.py workers      # fetch + collation in parallel workers vs 1 process
    python benchmarks/bench_loading.py memory       # RSS over a generated stream of 5M examples
    python benchmarks/bench_loading.py memory --examples 200000   # a shorter stream

throughput: from an already tokenized IMDB train ``Dataset`` to padded batches for a whole epoch,
real (non-padding) tokens per second, median of 5 epochs each, timed round-robin:
* HF: ``DataLoader(ds, batch_size=32, shuffle=True, collate_fn=DataCollatorWithPadding(tok))``,
  and the same with ``LengthGroupedSampler`` (``group_by_length``);
* ours: ``Pipe.from_hf(ds).bucket_batch(max_tokens=32 x mean length).pack()`` in one process, and
  with collation in 2 worker threads (``pack(num_workers=2)``, a ``ParallelMapper``).

memory: ``datasets.IterableDataset.from_generator`` of random texts -> ``TokenizeNode`` ->
``BucketBatcher(buffer_size=20_000)`` -> ``Pack``, one epoch; prints the resident set size every
10% of the stream. Needs ``psutil`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imdb"
sys.path.insert(0, str(ROOT))


def _report(rows, repeats: int = 5) -> None:
    """Time every ``(name, run)`` round-robin (epoch 1 of each, then epoch 2 of each, ...), so a
    slow-down of the shared machine hits all paths alike; print median real tokens/s and the ratio
    to the first row."""
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for name, run in rows:
            start = time.perf_counter()
            tokens[name] = run()
            times[name].append(time.perf_counter() - start)
    base = None
    for name, _ in rows:
        rates = sorted(tokens[name] / t for t in times[name])
        rate, seconds = statistics.median(rates), statistics.median(times[name])
        base = base or rate
        print(f"{name:62s} {rate / 1e6:6.2f} M real tokens/s  ({seconds:.2f} s/epoch, {rate / base:5.1f}x; "
              f"epochs {rates[0] / 1e6:.2f}-{rates[-1] / 1e6:.2f} M)")


def throughput() -> None:
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from seqbucket_plugin.datapipes import (
        Pipe,
        TextTokenizer,
        load_classification,
        tokenize_dataset,
    )

    if not (DATA / "train.parquet").exists():
        print(f"skipped: {DATA} not found (the IMDB data is not part of a fresh clone)")
        return
    cache = tempfile.mkdtemp(prefix="seqbucket-bench-")
    train = load_classification(DATA / "train.parquet", cache_dir=cache)
    tok = TextTokenizer.train(train, kind="word", vocab_size=30_000, min_frequency=2)
    ds = tokenize_dataset(train, tok, cache_file_name=f"{cache}/tokenized.arrow")
    lengths = np.asarray(ds.with_format("numpy")["length"])
    max_tokens = int(32 * round(lengths.mean()))
    print(f"IMDB train tokenized: {len(ds)} reviews, {lengths.sum()} tokens; max_tokens = {max_tokens}")

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok.tokenizer, pad_token="<pad>")
    hf_ds = ds.select_columns(["input_ids", "label"])
    collator = DataCollatorWithPadding(hf_tok, return_tensors="pt")

    def hf_epoch(sampler=None):
        loader = DataLoader(hf_ds, batch_size=32, shuffle=sampler is None, sampler=sampler, collate_fn=collator)
        return sum(int(batch["attention_mask"].sum()) for batch in loader)

    def grouped_epoch():
        sampler = LengthGroupedSampler(32, lengths=lengths.tolist(), generator=torch.Generator().manual_seed(0))
        return hf_epoch(sampler)

    def ours_epoch(workers: int = 0):
        def run():
            pipe = Pipe.from_hf(ds).bucket_batch(max_tokens=max_tokens).pack(pad_id=tok.pad_id, num_workers=workers)
            return sum(batch.num_tokens for batch in pipe.loader())
        return run

    rows = [
        ("HF DataLoader + DataCollatorWithPadding, shuffled, 32", lambda: hf_epoch()),
        ("HF DataLoader + DataCollatorWithPadding, group_by_length, 32", grouped_epoch),
        ("ours: bucket_batch(max_tokens) -> pack, 1 process", ours_epoch()),
        ("ours: the same, pack(num_workers=2) (ParallelMapper threads)", ours_epoch(2)),
    ]
    _report(rows)


def _index_batcher(dataset, max_tokens: int):
    """A map-style ``BucketBatcher`` that yields index arrays (planning only); the fetch from
    Arrow and the collation then run in :class:`_FetchAndPack` workers."""
    from seqbucket_plugin.datapipes import BucketBatcher, MapDatasetSource

    class IndexBatcher(BucketBatcher):
        def _fetch(self, indices):
            return indices

    return IndexBatcher(MapDatasetSource(dataset), max_tokens=max_tokens)


class _FetchAndPack:
    """Index array -> Arrow rows of the (memory-mapped) dataset -> ``PackedBatch`` (the same
    vectorised ``collate_table`` as the one-process path); picklable."""

    def __init__(self, dataset, pad_id: int):
        self.dataset, self.pad_id = dataset.with_format("arrow"), pad_id

    def __call__(self, indices):
        from seqbucket_plugin.datapipes import collate_table

        return collate_table(self.dataset[np.asarray(indices, dtype=np.int64)], pad_id=self.pad_id)


class _FetchAndPackMany(_FetchAndPack):
    """A list of index arrays -> a list of ``PackedBatch`` es (one hand-off per chunk of batches)."""

    def __call__(self, chunk):
        return [_FetchAndPack.__call__(self, indices) for indices in chunk]


def workers() -> None:
    """Can parallel workers speed up an epoch? Fetch + collation moved into torchdata
    ``ParallelMapper`` workers (threads or processes; the main process only plans batches),
    against everything in one process. Median of 3 epochs each."""
    import datasets
    from torchdata.nodes import Batcher, Loader, ParallelMapper, Unbatcher

    from seqbucket_plugin.datapipes import Pipe, TextTokenizer, load_classification, tokenize_dataset

    if not (DATA / "train.parquet").exists():
        print(f"skipped: {DATA} not found (the IMDB data is not part of a fresh clone)")
        return
    datasets.disable_progress_bars()
    cache = tempfile.mkdtemp(prefix="seqbucket-bench-")
    train = load_classification(DATA / "train.parquet", cache_dir=cache)
    tok = TextTokenizer.train(train, kind="word", vocab_size=30_000, min_frequency=2)
    ds = tokenize_dataset(train, tok, cache_file_name=f"{cache}/tokenized.arrow")
    ds = ds.select_columns(["input_ids", "length", "label"])
    ds.save_to_disk(f"{cache}/saved")
    ds = datasets.load_from_disk(f"{cache}/saved")  # memory-mapped: workers pickle a file reference
    max_tokens = int(32 * round(float(np.mean(ds.with_format("numpy")["length"]))))

    def single():
        return sum(b.num_tokens for b in Pipe.from_hf(ds).bucket_batch(max_tokens=max_tokens)
                   .pack(pad_id=tok.pad_id).loader())

    def parallel(method: str, n: int):
        def run():
            node = ParallelMapper(_index_batcher(ds, max_tokens), _FetchAndPack(ds, tok.pad_id),
                                  num_workers=n, method=method, in_order=True)
            return sum(b.num_tokens for b in Loader(node))
        return run

    def chunked(method: str, k: int):
        def run():
            chunks = Batcher(_index_batcher(ds, max_tokens), k, drop_last=False)
            node = Unbatcher(ParallelMapper(chunks, _FetchAndPackMany(ds, tok.pad_id), num_workers=2,
                                            method=method, in_order=True))
            return sum(b.num_tokens for b in Loader(node))
        return run

    rows = [("everything in 1 process", single)]
    plural = {"thread": "threads", "process": "processes"}
    rows += [(f"fetch + collate in {n} worker {plural[method] if n > 1 else method}", parallel(method, n))
             for method in ("thread", "process") for n in (1, 2)]
    rows += [(f"the same, 2 {plural[method]}, {k} batches per hand-off", chunked(method, k))
             for method in ("thread", "process") for k in (16, 64)]
    _report(rows)


def memory(num_examples: int) -> None:
    import datasets
    import psutil

    from seqbucket_plugin.datapipes import (
        BucketBatcher,
        IterableDatasetSource,
        Pack,
        TextTokenizer,
        TokenizeNode,
    )

    words = [f"w{i}" for i in range(5000)]

    def generate(n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            length = int(min(400, rng.lognormal(3.0, 0.8) + 1))
            yield {"text": " ".join(words[j] for j in rng.integers(0, 5000, length)), "label": int(i % 2)}

    tok = TextTokenizer.train((ex["text"] for ex in generate(20_000, 1)), kind="word")
    stream = datasets.IterableDataset.from_generator(generate, gen_kwargs={"n": num_examples, "seed": 0})
    node = Pack(BucketBatcher(TokenizeNode(IterableDatasetSource(stream), tok, batch_size=1000),
                              max_tokens=8192, buffer_size=20_000), pad_id=tok.pad_id)
    process = psutil.Process()
    seen, checkpoints = 0, []
    step = max(1, num_examples // 10)
    start = time.perf_counter()
    node.reset(None)
    for batch in node:
        seen += batch.batch_size
        if seen // step > len(checkpoints) - 1 or not checkpoints:
            checkpoints.append((seen, process.memory_info().rss / 2**20, time.perf_counter() - start))
    checkpoints.append((seen, process.memory_info().rss / 2**20, time.perf_counter() - start))
    print(f"stream of {num_examples} generated examples -> tokenize -> bucket (buffer 20,000) -> pack")
    for count, rss, elapsed in checkpoints:
        print(f"  after {count:>9,} examples: RSS {rss:7.1f} MiB  ({elapsed:6.1f} s)")
    rss_values = [rss for _, rss, _ in checkpoints[1:]]
    print(f"RSS from 10% to the end of the epoch: min {min(rss_values):.1f} MiB, max {max(rss_values):.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["throughput", "workers", "memory"])
    parser.add_argument("--examples", type=int, default=5_000_000, help="stream length for 'memory'")
    args = parser.parse_args()
    if args.what == "throughput":
        throughput()
    elif args.what == "workers":
        workers()
    else:
        memory(args.examples)


if __name__ == "__main__":
    main()
