"""Full recipe runs on the shared real data (not CI): quality targets and bucketing vs. a naive set-up.

    python benchmarks/bench_recipes.py ud          # UD English EWT UPOS: bucketed, naive, bucketed 20 epochs
    python benchmarks/bench_recipes.py imdb        # IMDB: bucketed, then naive
    python benchmarks/bench_recipes.py imdb-full   # whole IMDB reviews: bucketed, naive (2 epochs), bucketed 3
    python benchmarks/bench_recipes.py all         # ud and imdb
    python benchmarks/bench_recipes.py ud_bucket_20ep imdb_full_bucket_3ep   # single runs, by name

Each run is one recipe command (printed before it starts) writing to runs/bench/<name>; the script
prints wall time, metrics.json and run_summary.json of each. Data: ../shared/data relative to the
project root (skipped with a message when absent). Runs one at a time: they need the whole CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

UD = DATA / "ud_english_ewt"
IMDB = DATA / "imdb"

UD_BUCKET = ["recipes/tagging.py", "--train-file", f"{UD}/train.conllu", "--dev-file", f"{UD}/dev.conllu",
             "--test-file", f"{UD}/test.conllu", "--tag-column", "upos", "--epochs", "15",
             "--patience", "3", "--max-tokens", "2048", "--lr", "0.005", "--no-progress"]
IMDB_FULL_BUCKET = ["recipes/text_classification.py", "--train-file", f"{IMDB}/train.parquet",
                    "--test-file", f"{IMDB}/test.parquet", "--max-length", "0", "--embedding-dim", "128",
                    "--hidden-size", "128", "--epochs", "2", "--max-tokens", "8192", "--lr", "0.002",
                    "--no-progress"]


def with_epochs(args: list[str], epochs: int) -> list[str]:
    """``args`` with the value after ``--epochs`` replaced."""
    i = args.index("--epochs")
    return [*args[: i + 1], str(epochs), *args[i + 2 :]]


RUNS = {
    "ud": [
        ("ud_bucket", UD_BUCKET),
        ("ud_naive", ["recipes/tagging.py", "--train-file", f"{UD}/train.conllu", "--dev-file", f"{UD}/dev.conllu",
                      "--test-file", f"{UD}/test.conllu", "--tag-column", "upos", "--epochs", "15",
                      "--patience", "3", "--batching", "naive", "--batch-size", "32", "--no-progress"]),
        # bucketed epochs are 3.6x cheaper: the same command with up to 20 epochs (early stopping, patience 3)
        ("ud_bucket_20ep", with_epochs(UD_BUCKET, 20)),
    ],
    "imdb": [
        ("imdb_bucket", ["recipes/text_classification.py", "--train-file", f"{IMDB}/train.parquet",
                         "--test-file", f"{IMDB}/test.parquet", "--max-length", "400", "--truncation", "head+tail",
                         "--embedding-dim", "128", "--hidden-size", "128", "--epochs", "6", "--patience", "2",
                         "--max-tokens", "8192", "--lr", "0.002", "--no-progress"]),
        ("imdb_naive", ["recipes/text_classification.py", "--train-file", f"{IMDB}/train.parquet",
                        "--test-file", f"{IMDB}/test.parquet", "--max-length", "400", "--truncation", "head+tail",
                        "--embedding-dim", "128", "--hidden-size", "128", "--epochs", "6", "--patience", "2",
                        "--batching", "naive", "--batch-size", "32", "--lr", "0.002", "--no-progress"]),
    ],
    # whole reviews (up to 2,850 tokens): random batches of 32 are about 28% real tokens. Two epochs each,
    # because a naive epoch takes about 21 minutes here; the same seed, lr and epochs for both.
    "imdb-full": [
        ("imdb_full_bucket", IMDB_FULL_BUCKET),
        ("imdb_full_naive", ["recipes/text_classification.py", "--train-file", f"{IMDB}/train.parquet",
                             "--test-file", f"{IMDB}/test.parquet", "--max-length", "0", "--embedding-dim", "128",
                             "--hidden-size", "128", "--epochs", "2", "--batching", "naive", "--batch-size", "32",
                             "--lr", "0.002", "--no-progress"]),
        # a third bucketed epoch still costs far less time than the two naive ones
        ("imdb_full_bucket_3ep", with_epochs(IMDB_FULL_BUCKET, 3)),
    ],
}


def run(name: str, args: list[str]) -> None:
    out = ROOT / "runs" / "bench" / name
    cmd = [sys.executable, *args, "--output-dir", str(out)]
    print("$ python " + " ".join(args) + f" --output-dir runs/bench/{name}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    summary = json.loads((out / "run_summary.json").read_text())
    print(f"RESULT {name}: wall {wall / 60:.1f} min, metrics {json.dumps(metrics)}, summary {json.dumps(summary)}",
          flush=True)


def main() -> None:
    which = sys.argv[1:] or ["all"]
    by_name = {name: (group, args) for group, runs in RUNS.items() for name, args in runs}
    chosen = []
    for word in which:
        if word == "all":
            chosen += [(g, n, a) for g in ("ud", "imdb") for n, a in RUNS[g]]
        elif word in RUNS:
            chosen += [(word, n, a) for n, a in RUNS[word]]
        elif word in by_name:
            chosen.append((by_name[word][0], word, by_name[word][1]))
        else:
            sys.exit(f"unknown group or run {word!r}; groups {sorted(RUNS)}, runs {sorted(by_name)}")
    for group, name, args in chosen:
        folder = UD if group == "ud" else IMDB
        if not folder.is_dir():
            print(f"skipping {name}: {folder.name} not found under ../shared/data")
            continue
        run(name, args)


if __name__ == "__main__":
    main()
