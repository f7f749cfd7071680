"""Do pretrained word vectors help? word2vec trained on the IMDB training reviews (movie domain,
no SUBJ text), then the classification recipe on SUBJ with a randomly initialised embedding,
with those vectors fine-tuned and with them frozen, side by side in one run.

    pip install -e ".[bench]"          # gensim, for training the vectors
    python benchmarks/bench_vectors.py                  # seeds 0 and 1, about 14 minutes on 2 cores
    python benchmarks/bench_vectors.py --seeds 0        # one seed

Every recipe run passes only the data flags, ``--seed``, ``--device cpu --no-progress`` and, for
the vector runs, ``--embeddings FILE`` (``--freeze-embeddings``): everything else is the
recipe's default, so the embedding's initialisation is the only difference (the vectors have the
recipe's default ``--embedding-dim``, 128). The vectors are trained with gensim's skip-gram
word2vec on the IMDB training split, tokenized with the recipe tokenizer's normaliser and
pre-tokeniser (so the words are the vocabulary's words), and saved in word2vec binary format;
the recipe reads them with ``seqbucket_plugin.load_vectors``.

Prints a markdown table and writes ``benchmarks/out/vectors.json``. Data: ``../shared/data``
(``imdb/train.parquet``, ``subj/{train,test}.jsonl``); runs go to ``runs/vectors/`` (removed
first).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from bench_quality import DATA, ROOT, run_command  # same folder: benchmarks/ is on sys.path

OUT = ROOT / "benchmarks" / "out"
RUNS = ROOT / "runs" / "vectors"
DIM = 128  # the recipe's default --embedding-dim


def imdb_sentences() -> list[list[str]]:
    """The IMDB training reviews as the recipe's word-level tokenizer splits them."""
    import pyarrow.parquet as pq
    from tokenizers import Regex, normalizers, pre_tokenizers

    texts = pq.read_table(DATA / "imdb" / "train.parquet", columns=["text"]).column("text").to_pylist()
    norm = normalizers.Sequence([normalizers.Replace(Regex(r"<br\s*/?>"), " "), normalizers.NFKC(),
                                 normalizers.Lowercase()])
    pre = pre_tokenizers.Whitespace()
    return [[w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))] for t in texts]


def train_word2vec(path: Path, workers: int) -> dict:
    from gensim.models import Word2Vec

    t0 = time.perf_counter()
    sentences = imdb_sentences()
    tokens = sum(len(s) for s in sentences)
    model = Word2Vec(sentences, vector_size=DIM, window=5, min_count=3, sg=1, negative=5, epochs=5,
                     workers=workers, seed=0)
    model.wv.save_word2vec_format(str(path), binary=True)
    return {"reviews": len(sentences), "tokens": tokens, "words": len(model.wv),
            "wall_s": round(time.perf_counter() - t0, 1)}


def run_recipe(name: str, seed: int, extra: list[str]) -> dict:
    out = RUNS / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "recipes/text_classification.py", "--train-file", str(DATA / "subj" / "train.jsonl"),
           "--test-file", str(DATA / "subj" / "test.jsonl"), "--seed", str(seed), "--device", "cpu",
           "--no-progress", *extra, "--output-dir", str(out)]
    shown, stdout, wall = run_command(name, cmd)
    coverage = next((line for line in stdout.splitlines() if line.startswith("embeddings ")), None)
    if coverage:
        print(coverage)
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"test accuracy {metrics['test_accuracy']:.4f}, dev accuracy {metrics.get('dev_accuracy', float('nan')):.4f}, "
          f"{wall:.0f} s")
    return {"name": name, "seed": seed, "command": f"python {shown}", "wall_s": round(wall, 1),
            "test_accuracy": metrics["test_accuracy"], "dev_accuracy": metrics.get("dev_accuracy"),
            "coverage": coverage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--no-frozen", action="store_true", help="skip the frozen-vectors run")
    parser.add_argument("--workers", type=int, default=1, help="gensim worker threads")
    args = parser.parse_args()
    for need in (DATA / "imdb" / "train.parquet", DATA / "subj" / "train.jsonl"):
        if not need.is_file():
            raise SystemExit(f"skipped: {need} not found")
    RUNS.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    vectors = RUNS / "imdb_word2vec.bin"
    print("training word2vec on the IMDB training reviews ...", flush=True)
    w2v = train_word2vec(vectors, args.workers)
    print(f"word2vec: {w2v['reviews']:,} reviews, {w2v['tokens']:,} tokens, {w2v['words']:,} words, "
          f"{w2v['wall_s']} s", flush=True)

    configs = [("random", []), ("word2vec", ["--embeddings", str(vectors)])]
    results = []
    for seed in args.seeds:
        for name, extra in configs:
            results.append(run_recipe(name, seed, extra))
    if not args.no_frozen:
        results.append(run_recipe("word2vec-frozen", args.seeds[0], ["--embeddings", str(vectors),
                                                                     "--freeze-embeddings"]))

    print("\n| embedding | seeds | test accuracy (per seed) | mean | wall per run |")
    print("|---|---|---|---|---|")
    names = ["random", "word2vec", "word2vec-frozen"]
    for name in names:
        rows = [r for r in results if r["name"] == name]
        if not rows:
            continue
        accs = [r["test_accuracy"] for r in rows]
        print(f"| {name} | {', '.join(str(r['seed']) for r in rows)} | {', '.join(f'{a:.4f}' for a in accs)} | "
              f"{np.mean(accs):.4f} | {np.mean([r['wall_s'] for r in rows]):.0f} s |")
    (OUT / "vectors.json").write_text(json.dumps({"word2vec": w2v, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
