"""Loading throughput and streaming memory, side by side in one run.

    python benchmarks/bench_loading.py throughput   # IMDB train, ours vs the usual HF DataLoader path
    python benchmarks/bench_loading.py workers      # fetch + collation in parallel workers vs 1 process
    python benchmarks/bench_loading.py stream       # a stream read row by row vs IterableDatasetSource
    python benchmarks/bench_loading.py memory       # RSS over a generated stream of 5M examples
    python benchmarks/bench_loading.py memory --examples 200000   # a shorter stream

throughput: from an already tokenized IMDB train ``Dataset`` to padded batches for a whole epoch,
real (non-padding) tokens per second, median of 5 epochs each, timed round-robin:
* HF: ``DataLoader(ds, batch_size=32, shuffle=True, collate_fn=DataCollatorWithPadding(tok))``,
  and the same with ``LengthGroupedSampler`` (``group_by_length``);
* ours: ``Pipe.from_hf(ds).bucket_batch(max_tokens=32 x mean length).pack()`` in one process, and
  with collation in 2 worker threads (``pack(num_workers=2)``, a ``ParallelMapper``).

stream: 200,000 generated texts as an Arrow-backed ``IterableDataset`` (8 shards): rows read the
way ``datasets`` iterates them (one formatted row per call, through torchdata's ``IterableWrapper``)
against ``IterableDatasetSource`` (``read_size`` rows per call), alone and under tokenize -> bucket
-> pack; median of 3 passes, round-robin.

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


def _generated_texts(n, seed):
    """Random texts over a 5,000-word vocabulary, lognormal lengths (median about 20 words)."""
    words = [f"w{i}" for i in range(5000)]
    rng = np.random.default_rng(seed)
    for i in range(n):
        length = int(min(400, rng.lognormal(3.0, 0.8) + 1))
        yield {"text": " ".join(words[j] for j in rng.integers(0, 5000, length)), "label": int(i % 2)}


def stream(num_examples: int, repeats: int = 3) -> None:
    """A streaming ``IterableDataset`` (Arrow-backed, 8 shards) read row by row, as ``datasets``
    iterates it, against ``IterableDatasetSource`` (``read_size`` rows per call); alone and
    under tokenize -> bucket -> pack. Median of ``repeats`` passes, timed round-robin."""
    import datasets
    from torchdata.nodes import IterableWrapper

    from seqbucket_plugin.datapipes import (
        BucketBatcher,
        IterableDatasetSource,
        Pack,
        TextTokenizer,
        TokenizeNode,
    )

    datasets.disable_progress_bars()
    tok = TextTokenizer.train((ex["text"] for ex in _generated_texts(20_000, 1)), kind="word")
    ds = datasets.Dataset.from_list(list(_generated_texts(num_examples, 0))).to_iterable_dataset(num_shards=8)

    def rows(make_source):
        def run():
            node = make_source()
            node.reset(None)
            return sum(1 for _ in node)
        return run

    def pipeline(make_source):
        def run():
            node = Pack(BucketBatcher(TokenizeNode(make_source(), tok, batch_size=1000), max_tokens=8192,
                                      buffer_size=20_000), pad_id=tok.pad_id)
            node.reset(None)
            return sum(b.batch_size for b in node)
        return run

    cases = [("rows, datasets row by row (IterableWrapper(ds))", rows(lambda: IterableWrapper(ds))),
             ("rows, IterableDatasetSource(ds) (read_size 1000)", rows(lambda: IterableDatasetSource(ds))),
             ("tokenize -> bucket -> pack over IterableWrapper(ds)", pipeline(lambda: IterableWrapper(ds))),
             ("tokenize -> bucket -> pack over IterableDatasetSource(ds)", pipeline(lambda: IterableDatasetSource(ds)))]
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, run in cases:
            start = time.perf_counter()
            count = run()
            times[name].append(time.perf_counter() - start)
            assert count == num_examples, (name, count)
    print(f"stream of {num_examples:,} generated examples, {repeats} passes each (median; range)")
    for i, (name, _) in enumerate(cases):
        t = statistics.median(times[name])
        vs = "" if i % 2 == 0 else f"  {statistics.median(times[cases[i - 1][0]]) / t:4.2f}x the line above"
        print(f"{name:58s} {t:6.2f} s  {num_examples / t:>10,.0f} examples/s  "
              f"({min(times[name]):.2f}-{max(times[name]):.2f} s){vs}")


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

    tok = TextTokenizer.train((ex["text"] for ex in _generated_texts(20_000, 1)), kind="word")
    generated = datasets.IterableDataset.from_generator(_generated_texts, gen_kwargs={"n": num_examples, "seed": 0})
    node = Pack(BucketBatcher(TokenizeNode(IterableDatasetSource(generated), tok, batch_size=1000),
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
    parser.add_argument("what", choices=["throughput", "workers", "stream", "memory"])
    parser.add_argument("--examples", type=int, default=None,
                        help="stream length (default: 5,000,000 for 'memory', 200,000 for 'stream')")
    args = parser.parse_args()
    if args.what == "throughput":
        throughput()
    elif args.what == "workers":
        workers()
    elif args.what == "stream":
        stream(args.examples or 200_000)
    else:
        memory(args.examples or 5_000_000)


if __name__ == "__main__":
    main()
