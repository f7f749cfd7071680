"""1 process vs 2 processes on this machine, side by side in one run: loading and training throughput.

    python benchmarks/bench_processes.py              # both parts (about 4-6 minutes on 2 CPU cores)
    python benchmarks/bench_processes.py loading      # IMDB train epochs, 1 vs 2 ranks
    python benchmarks/bench_processes.py training     # the text-classification recipe, python vs torchrun
    python benchmarks/bench_processes.py --loading-rows 2000 --repeats 1 \
        --train-rows 1000 --test-rows 200 --max-steps 10   # a short smoke run

Prints one markdown table at the end (and a line per measurement as it goes). Data: IMDB under
../shared/data/imdb relative to the project root (each part is skipped with a message when it is
absent). Temporary files (load cache, tokenizer, tokenized data, subsets, run directories) go to a
temporary directory that is removed at the end; nothing is written into the repository.

loading: load IMDB train, train a word-level ``TextTokenizer`` (vocabulary 30,000, min frequency 2)
and tokenize once in this process; the tokenizer and the tokenized ``Dataset`` are saved to the
temporary directory. Then N = 1 and N = 2 processes are started with ``torch.multiprocessing``
(spawn); each loads them (memory-mapped), calls ``torch.set_num_threads(--loading-threads)``
(default 1 in *every* process, the torchrun default: one core per process, so 2 processes use both
cores; the loading path is single-threaded Python/Arrow, more torch threads do not speed it up) and
runs ``Pipe.from_hf(ds).bucket_batch(max_tokens=..., rank=r, world_size=N).pack()`` for ``--repeats``
epochs, the ranks starting each epoch together (a barrier). Aggregate real tokens/s of an epoch =
real tokens of all ranks / the slowest rank's epoch time; the table shows the median over epochs.
``max_tokens`` per rank is the same for N = 1 and 2 (32 x the mean length, like bench_loading.py),
so each of 2 ranks moves half the batches of the epoch.

training: the first ``--train-rows`` rows of IMDB train and ``--test-rows`` of IMDB test are written
to temporary parquet files (the recipe holds out 10% of the training rows as the dev set; by default
20,000 rows give about 1,070 steps per epoch, so the 1,000 steps, about 4 M tokens, stay in one
epoch), then

    python recipes/text_classification.py ... --threads 2 --max-tokens T
    torchrun --standalone --nproc_per_node=2 recipes/text_classification.py ... --threads 1 --max-tokens T/2

(torchrun as ``python -m torch.distributed.run``), both with ``--max-steps --patience 0 --eval-every 0
--save-every 0 --device cpu --no-progress``. The same global token budget per optimizer step: 2
processes x T/2 = T, and the same number of steps, so both runs train on about the same tokens; the
total CPU threads are 2 in both. Tokens/s is ``train_tokens_per_s`` of run_summary.json: real
training tokens per second of training steps (loading included, evaluation and checkpoints not) in
the last epoch; under torchrun the engine sums the per-rank rates (all-reduce). Wall time is the
whole command (start-up, tokenization, training, evaluations); under torchrun rank 0 loads and
tokenizes first and the other rank after it, so that part is not shared out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imdb"
RECIPE = "recipes/text_classification.py"
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------------ loading
def _loading_worker(rank: int, world_size: int, work: str, max_tokens: int, repeats: int, threads: int,
                    barrier) -> None:
    """One rank: ``repeats`` epochs of bucket_batch -> pack over its shard; writes rank<r>.json."""
    import datasets
    import torch

    from seqbucket_plugin.datapipes import Pipe, TextTokenizer

    torch.set_num_threads(threads)
    datasets.disable_progress_bars()
    ds = datasets.load_from_disk(os.path.join(work, "tokenized"))
    pad_id = TextTokenizer.load(os.path.join(work, "tokenizer")).pad_id
    pipe = Pipe.from_hf(ds).bucket_batch(max_tokens=max_tokens, rank=rank, world_size=world_size).pack(pad_id=pad_id)
    loader = pipe.loader()
    epochs = []
    for _ in range(repeats):
        barrier.wait()
        start = time.perf_counter()
        tokens = batches = 0
        for batch in loader:
            tokens += batch.num_tokens
            batches += 1
        epochs.append({"seconds": time.perf_counter() - start, "tokens": tokens, "batches": batches})
    with open(os.path.join(work, f"world{world_size}_rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(epochs, f)


def _run_loading(world_size: int, work: str, max_tokens: int, repeats: int, threads: int) -> dict:
    import torch.multiprocessing as mp

    barrier = mp.get_context("spawn").Barrier(world_size)
    mp.start_processes(_loading_worker, args=(world_size, work, max_tokens, repeats, threads, barrier),
                       nprocs=world_size, join=True, start_method="spawn")
    ranks = []
    for rank in range(world_size):
        with open(os.path.join(work, f"world{world_size}_rank{rank}.json"), encoding="utf-8") as f:
            ranks.append(json.load(f))
    epochs = []
    for e in range(repeats):
        tokens = sum(r[e]["tokens"] for r in ranks)
        slowest = max(r[e]["seconds"] for r in ranks)
        epochs.append({"rate": tokens / slowest, "seconds": slowest, "tokens": tokens,
                       "batches": [r[e]["batches"] for r in ranks], "rank_seconds": [r[e]["seconds"] for r in ranks]})
    median = sorted(epochs, key=lambda e: e["rate"])[len(epochs) // 2]  # an epoch of median rate
    return {"processes": world_size, "threads": threads, "epochs": epochs, "rate": median["rate"],
            "seconds": median["seconds"], "tokens": median["tokens"], "batches": median["batches"]}


def loading(args, tmp: Path) -> list[dict]:
    import datasets

    from seqbucket_plugin.datapipes import TextTokenizer, load_classification, tokenize_dataset

    if not (DATA / "train.parquet").exists():
        print(f"loading: skipped: {DATA / 'train.parquet'} not found (the IMDB data is not part of a fresh clone)")
        return []
    datasets.disable_progress_bars()
    work = tmp / "loading"
    work.mkdir()
    t0 = time.perf_counter()
    train = load_classification(DATA / "train.parquet", cache_dir=work / "load_cache")
    if args.loading_rows:
        train = train.select(range(min(args.loading_rows, len(train))))
    tok = TextTokenizer.train(train, kind="word", vocab_size=30_000, min_frequency=2)
    tok.save(work / "tokenizer")
    ds = tokenize_dataset(train, tok, cache_file_name=str(work / "tokenize_cache.arrow"))
    ds.save_to_disk(str(work / "tokenized"))
    lengths = np.asarray(ds.with_format("numpy")["length"])
    max_tokens = args.loading_max_tokens or int(32 * round(lengths.mean()))
    max_tokens = max(max_tokens, int(lengths.max()))  # no example over the budget
    print(f"loading: IMDB train tokenized in {time.perf_counter() - t0:.1f} s: {len(ds):,} reviews, "
          f"{int(lengths.sum()):,} tokens; max_tokens = {max_tokens} per rank; "
          f"{args.loading_threads} torch thread(s) per process", flush=True)
    rows = []
    for world_size in (1, 2):
        result = _run_loading(world_size, str(work), max_tokens, args.repeats, args.loading_threads)
        result.update(max_tokens=max_tokens, reviews=len(ds))
        per_epoch = ", ".join(f"{e['rate'] / 1e6:.2f} M ({e['seconds']:.2f} s; ranks "
                              + "/".join(f"{s:.2f}" for s in e["rank_seconds"]) + " s)" for e in result["epochs"])
        print(f"loading, {world_size} process(es): {result['rate'] / 1e6:.2f} M real tokens/s (median); "
              f"epochs: {per_epoch}; batches per rank {result['batches']}", flush=True)
        rows.append(result)
    if rows[0]["tokens"] != rows[1]["tokens"]:
        print(f"loading: note: 1 process moved {rows[0]['tokens']:,} tokens per epoch, 2 processes "
              f"{rows[1]['tokens']:,}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------ training
def _subset(src: Path, dst: Path, rows: int) -> int:
    import pyarrow.parquet as pq

    table = pq.read_table(src, columns=["text", "label"])
    table = table.slice(0, min(rows, table.num_rows))
    pq.write_table(table, dst)
    return table.num_rows


def _train_run(name: str, launcher: list[str], shown: str, options: list[str], out: Path, tmp: Path) -> dict:
    cmd = [sys.executable, *launcher, RECIPE, *options, "--output-dir", str(out)]
    printed = " ".join([*options, "--output-dir", str(out)]).replace(str(tmp), "<tmp>")
    print(f"$ {shown} {RECIPE} {printed}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"training run {name!r} failed with exit status {done.returncode}")
    summary = json.loads((out / "run_summary.json").read_text(encoding="utf-8"))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return {"name": name, "wall": wall, "summary": summary, "metrics": metrics, "log": log}


def training(args, tmp: Path) -> list[dict]:
    if not ((DATA / "train.parquet").exists() and (DATA / "test.parquet").exists()):
        print(f"training: skipped: {DATA} (train.parquet, test.parquet) not found "
              "(the IMDB data is not part of a fresh clone)")
        return []
    work = tmp / "training"
    work.mkdir()
    n_train = _subset(DATA / "train.parquet", work / "train.parquet", args.train_rows)
    n_test = _subset(DATA / "test.parquet", work / "test.parquet", args.test_rows)
    print(f"training: IMDB subsets: {n_train:,} train rows (10% held out as dev), {n_test:,} test rows; "
          f"{args.max_steps} optimizer steps of about {args.max_tokens} tokens (padding included)", flush=True)
    common = ["--train-file", str(work / "train.parquet"), "--test-file", str(work / "test.parquet"),
              "--max-steps", str(args.max_steps), "--patience", "0", "--eval-every", "0", "--save-every", "0",
              "--device", "cpu", "--no-progress"]
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    runs = [
        ("1 process", 1, 2, [], "python", args.max_tokens),
        ("2 processes", 2, 1, torchrun, "torchrun --standalone --nproc_per_node=2", args.max_tokens // 2),
    ]
    rows = []
    for name, processes, threads, launcher, shown, max_tokens in runs:
        options = [*common, "--threads", str(threads), "--max-tokens", str(max_tokens)]
        result = _train_run(name, launcher, shown, options, work / f"run_{processes}proc", tmp)
        summary, metrics = result["summary"], result["metrics"]
        result.update(processes=processes, threads=threads, max_tokens=max_tokens,
                      rate=summary["train_tokens_per_s"], steps=metrics.get("steps"),
                      epochs=len({r["epoch"] for r in result["log"]}))
        print(f"training, {name}: {result['rate']:,.0f} real tokens/s (run_summary), {result['steps']} steps "
              f"in {result['epochs']} epoch(s), wall {result['wall']:.1f} s (run_summary {summary['wall_time_s']} s), "
              f"padding efficiency {summary['padding_efficiency']}, test accuracy "
              f"{metrics.get('test_accuracy', float('nan')):.4f}", flush=True)
        rows.append(result)
    if rows[0]["steps"] != rows[1]["steps"]:
        print(f"training: note: the runs took different numbers of steps ({rows[0]['steps']} vs {rows[1]['steps']})")
    if any(r["epochs"] > 1 for r in rows):
        print("training: note: a run spanned several epochs; tokens/s is that of its last epoch "
              "(use more --train-rows or fewer --max-steps for a single epoch)")
    return rows


# ------------------------------------------------------------------------------------------ report
def table(load_rows: list[dict], train_rows: list[dict]) -> str:
    lines = ["| part | set-up | processes x threads | real tokens/s | vs 1 process | time |",
             "|---|---|---:|---:|---:|---:|"]
    for row in load_rows:
        setup = (f"`bucket_batch(max_tokens={row['max_tokens']}, rank=r, world_size={row['processes']}).pack()`, "
                 f"one epoch of {row['reviews']:,} reviews")
        lines.append(f"| loading | {setup} | {row['processes']} x {row['threads']} | {row['rate'] / 1e6:.2f} M | "
                     f"{row['rate'] / load_rows[0]['rate']:.2f}x | {row['seconds']:.2f} s/epoch |")
    for row in train_rows:
        launch = "`python`" if row["processes"] == 1 else "`torchrun --nproc_per_node=2`"
        setup = (f"{launch} text_classification.py `--max-tokens {row['max_tokens']} --threads {row['threads']}`, "
                 f"{row['steps']} steps")
        lines.append(f"| training | {setup} | {row['processes']} x {row['threads']} | {row['rate']:,.0f} | "
                     f"{row['rate'] / train_rows[0]['rate']:.2f}x | {row['wall']:.1f} s wall |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=["all", "loading", "training"], default="all")
    group = parser.add_argument_group("loading")
    group.add_argument("--repeats", type=int, default=3, help="epochs per configuration (the median is shown)")
    group.add_argument("--loading-rows", type=int, default=0, help="first N reviews of IMDB train (0: all 25,000)")
    group.add_argument("--loading-max-tokens", type=int, default=0,
                       help="token budget per batch and rank (0: 32 x the mean length; at least the longest review)")
    group.add_argument("--loading-threads", type=int, default=1, help="torch threads in every loading process")
    group = parser.add_argument_group("training")
    group.add_argument("--train-rows", type=int, default=20_000, help="first N rows of IMDB train")
    group.add_argument("--test-rows", type=int, default=1000, help="first N rows of IMDB test")
    group.add_argument("--max-steps", type=int, default=1000, help="optimizer steps of each run")
    group.add_argument("--max-tokens", type=int, default=4096,
                       help="global token budget per optimizer step (each of 2 processes gets half)")
    args = parser.parse_args()
    if args.repeats < 1 or args.max_steps < 1 or args.max_tokens < 2:
        parser.error("--repeats and --max-steps must be >= 1, --max-tokens >= 2")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seqbucket-bench-processes-") as tmp:
        load_rows = loading(args, Path(tmp)) if args.what in ("all", "loading") else []
        train_rows = training(args, Path(tmp)) if args.what in ("all", "training") else []
    if load_rows or train_rows:
        print(f"\n{os.cpu_count()} CPU cores; total {time.perf_counter() - start:.0f} s\n")
        print(table(load_rows, train_rows))


if __name__ == "__main__":
    main()
