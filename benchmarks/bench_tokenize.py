"""Benchmark of seqbucket_plugin.datapipes.tokenize on IMDB train (25k reviews, ~7M tokens).

Run from the project root:

    python benchmarks/bench_tokenize.py [--repeats 5] [--batch-size 1000]

Needs ``../shared/data/imdb/train.parquet`` relative to the project root (skips with a message
otherwise). Measures, in one process and into fresh temporary caches (nothing is written into
the repository):

1. word-level tokenizer training time on the 25k texts;
2. ``tokenize_dataset`` vs the usual Hugging Face path (``Dataset.map(batched=True)`` calling
   ``transformers.PreTrainedTokenizerFast(tokenizer_object=...)`` on the same tokenizer,
   returning ``input_ids``), interleaved, median of ``--repeats`` runs, no cache hits;
3. the cached second call of ``tokenize_dataset`` (target < 2 s);
4. if ``../shared/data/ud_english_ewt`` exists: ``tokenize_tagged_dataset`` (word-level and
   sub-word) on UD EWT train, with the share of the per-row ``word_ids`` extraction.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _median_times(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _read_conllu(path: Path) -> dict[str, list]:
    tokens, tags, words, upos = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if words:
                    tokens.append(words)
                    tags.append(upos)
                    words, upos = [], []
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if "-" in cols[0] or "." in cols[0]:
                continue
            words.append(cols[1])
            upos.append(cols[3])
    if words:
        tokens.append(words)
        tags.append(upos)
    return {"tokens": tokens, "tags": tags}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    imdb = DATA / "imdb" / "train.parquet"
    if not imdb.is_file():
        print(f"SKIP: {imdb.relative_to(ROOT.parent)} not found (benchmark needs ../shared/data/imdb)")
        return 0

    import datasets
    import tokenizers
    import transformers

    sys.path.insert(0, str(ROOT))
    from seqbucket_plugin.datapipes.tokenize import TextTokenizer, tokenize_dataset, tokenize_tagged_dataset

    datasets.disable_progress_bars()
    logging.getLogger("seqbucket_plugin.datapipes.tokenize").setLevel(logging.ERROR)  # truncation warnings
    transformers.logging.set_verbosity_error()
    print(f"datasets {datasets.__version__}, tokenizers {tokenizers.__version__}, "
          f"transformers {transformers.__version__}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")

    with tempfile.TemporaryDirectory(prefix="bench_tokenize_") as tmp:
        ds = datasets.load_dataset("parquet", data_files=str(imdb), split="train",
                                   cache_dir=os.path.join(tmp, "hf_cache"))
        print(f"IMDB train: {len(ds)} docs, columns {ds.column_names}")

        # 1. training
        train_times = _median_times(
            lambda: TextTokenizer.train(ds, kind="word", vocab_size=30_000, min_frequency=2), args.repeats)
        tok = TextTokenizer.train(ds, kind="word", vocab_size=30_000, min_frequency=2)
        print(f"train word-level (vocab {len(tok)}): median {statistics.median(train_times):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in train_times)})")

        hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.tokenizer, pad_token="<pad>",
                                                      unk_token="<unk>")

        def hf_fn(batch):
            enc = hf_tok(batch["text"], return_attention_mask=False, return_token_type_ids=False)
            return {"input_ids": enc["input_ids"]}

        sample = ds[:200]["text"]
        assert hf_tok(sample)["input_ids"] == tok.encode_batch(sample), "HF path and ours disagree"

        run_id = iter(range(10**6))

        def fresh(name: str) -> str:
            d = os.path.join(tmp, f"{name}_{next(run_id)}")
            os.makedirs(d)
            return os.path.join(d, "out.arrow")

        ours_out = {}

        def ours():
            ours_out["ds"] = tokenize_dataset(ds, tok, batch_size=args.batch_size, cache_file_name=fresh("ours"),
                                              load_from_cache_file=False)

        def ours_trunc():
            tokenize_dataset(ds, tok, batch_size=args.batch_size, max_length=512, truncation="head+tail",
                             cache_file_name=fresh("ours_trunc"), load_from_cache_file=False)

        def hf():
            ds.map(hf_fn, batched=True, batch_size=args.batch_size, remove_columns=["text", "id", "rating"],
                   cache_file_name=fresh("hf"), load_from_cache_file=False)

        # 2. interleaved repeats, no cache hits
        t_ours, t_hf, t_trunc = [], [], []
        for _ in range(args.repeats):
            t_ours += _median_times(ours, 1)
            t_hf += _median_times(hf, 1)
            t_trunc += _median_times(ours_trunc, 1)
        n_tokens = sum(ours_out["ds"].with_format("arrow", columns=["length"])[:].column(0).to_pylist())
        rows = [
            ("ours: tokenize_dataset", t_ours),
            ("ours: tokenize_dataset, max_length=512 head+tail", t_trunc),
            ("HF: Dataset.map + PreTrainedTokenizerFast", t_hf),
        ]
        print(f"tokens (untruncated): {n_tokens:,}")
        print("| path | median s | tokens/s | runs (s) |")
        print("|---|---:|---:|---|")
        for name, ts in rows:
            med = statistics.median(ts)
            print(f"| {name} | {med:.2f} | {n_tokens / med / 1e6:.2f} M | {', '.join(f'{t:.2f}' for t in ts)} |")
        print(f"speed-up ours vs HF: {statistics.median(t_hf) / statistics.median(t_ours):.2f}x")

        # 3. cached second run (default cache next to the dataset's arrow files)
        t0 = time.perf_counter()
        tokenize_dataset(ds, tok, batch_size=args.batch_size)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached, report = tokenize_dataset(ds, tok, batch_size=args.batch_size, return_report=True)
        t_cached = time.perf_counter() - t0
        print(f"first call with default cache: {t_first:.2f} s; cached second call: {t_cached:.3f} s "
              f"(target < 2 s); {report}")

        # 4. tagging on UD EWT
        ewt = DATA / "ud_english_ewt" / "train.conllu"
        if not ewt.is_file():
            print("UD EWT not found: tagging benchmark skipped")
            return 0
        raw = _read_conllu(ewt)
        names = sorted({t for s in raw["tags"] for t in s})
        tagged = datasets.Dataset.from_dict(raw).cast_column(
            "tags", datasets.List(datasets.ClassLabel(names=names)))
        n_words = sum(len(s) for s in raw["tokens"])
        wp = TextTokenizer.train(ds, kind="wordpiece", vocab_size=16_000, min_frequency=2)
        for name, t, sub in (("word-level", tok, False), ("wordpiece subword", wp, True)):
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                tokenize_tagged_dataset(tagged, t, subword=sub, batch_size=args.batch_size,
                                        cache_file_name=fresh("tag"), load_from_cache_file=False)
                ts.append(time.perf_counter() - t0)
            print(f"tagged {name}: {len(tagged)} sentences, {n_words:,} words, median {statistics.median(ts):.2f} s")
        # share of the per-row word_ids extraction in the sub-word path
        words = raw["tokens"]
        t0 = time.perf_counter()
        encs = wp.tokenizer.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        _ = [e.ids for e in encs]
        t_ids = time.perf_counter() - t0
        t0 = time.perf_counter()
        _ = [e.word_ids for e in encs]
        t_wids = time.perf_counter() - t0
        print(f"sub-word, all {len(words)} sentences in one call: encode_batch {t_enc:.3f} s, .ids extraction {t_ids:.3f} s, "
              f".word_ids extraction {t_wids:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
