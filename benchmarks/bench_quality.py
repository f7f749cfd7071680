"""Quality panel: every shared data set trained by the recipes with their defaults, next to a
logistic regression on the same split, in one run (not CI: it needs the whole CPU for an hour).

    python benchmarks/bench_quality.py                    # every data set
    python benchmarks/bench_quality.py trec subj wnut17   # some of them
    python benchmarks/bench_quality.py --no-baseline ewt  # the recipe only

Each recipe command passes only the flags that describe the data (files, columns, tag column) and
``--device cpu --no-progress``; everything else is the recipes' default, chosen from the data
(``config.json`` of each run, key ``_chosen``, says what and why). The baselines need
scikit-learn (``pip install -e ".[bench]"``):

* classification: TF-IDF of word 1-2-grams (sublinear tf) + logistic regression, ``C`` picked on
  a 10% hold-out of the training set, then refitted on all of it;
* tagging: a per-token logistic regression (trained by SGD, 15 epochs, L2 1e-6) over hashed window
  features (the lower-cased word, prefixes/suffixes up to 3, shape, case, the two words on each
  side); span F1 for BIO tags.

Prints a markdown table (metric, wall time, optimizer steps, chosen settings) and writes
``benchmarks/out/quality.json``. Data: ``../shared/data`` next to the project; a missing set is
skipped with a message. Runs go to ``runs/quality/<name>`` (removed first).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "out"
RUNS = ROOT / "runs" / "quality"

CLS, TAG = "recipes/text_classification.py", "recipes/tagging.py"
# name -> (recipe, data folder, the flags that describe the data, test metric key, target)
SETS = {
    "generated-cls": (CLS, None, [], "test_accuracy", None),
    "generated-tag": (TAG, None, [], "test_f1", None),
    "trec": (CLS, "trec", ["--train-file", "{d}/train.jsonl", "--test-file", "{d}/test.jsonl"], "test_accuracy", 0.91),
    "subj": (CLS, "subj", ["--train-file", "{d}/train.jsonl", "--test-file", "{d}/test.jsonl"], "test_accuracy", 0.91),
    "wnut17": (TAG, "wnut17", ["--train-file", "{d}/train.conll", "--dev-file", "{d}/dev.conll",
                               "--test-file", "{d}/test.conll"], "test_f1", 0.15),
    "ewt": (TAG, "ud_english_ewt", ["--train-file", "{d}/train.conllu", "--dev-file", "{d}/dev.conllu",
                                    "--test-file", "{d}/test.conllu", "--tag-column", "upos"], "test_accuracy", 0.955),
    "imdb": (CLS, "imdb", ["--train-file", "{d}/train.parquet", "--test-file", "{d}/test.parquet"],
             "test_accuracy", 0.90),
}


def recipe_command(name: str) -> list[str] | None:
    recipe, folder, flags, _, _ = SETS[name]
    if folder is not None and not (DATA / folder).is_dir():
        return None
    data = [f.format(d=DATA / folder) if folder else f for f in flags]
    return [sys.executable, recipe, *data, "--device", "cpu", "--no-progress", "--output-dir", str(RUNS / name)]


def run_command(name: str, cmd: list[str]) -> tuple[str, str, float]:
    """Run a recipe command from the project root; ``(command as shown, stdout, wall seconds)``.
    A failing recipe prints its output's tail and ends the benchmark."""
    shown = " ".join(c.replace(str(DATA), "$DATA").replace(str(ROOT) + "/", "") for c in cmd[1:])
    print(f"\n$ python {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"{name}: the recipe failed with exit code {proc.returncode}")
    return shown, proc.stdout, wall


def run_recipe(name: str) -> dict:
    shutil.rmtree(RUNS / name, ignore_errors=True)  # this script's own output: every run starts fresh
    shown, stdout, wall = run_command(name, recipe_command(name))
    for line in stdout.splitlines():
        if line.startswith(("settings chosen", "  ", "metrics:", "training ")):
            print(line)
    out = RUNS / name
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    return {"command": f"python {shown}", "wall_s": round(wall, 1), "metrics": metrics,
            "chosen": {k: config.get(k) for k in config.get("_chosen", {})}}


# ------------------------------------------------------------------------------------------ baselines
def _classification_splits(folder: str) -> tuple[list[str], list, list[str], list]:
    import datasets

    d = DATA / folder
    fmt, suffix = ("parquet", "parquet") if (d / "train.parquet").exists() else ("json", "jsonl")
    ds = datasets.load_dataset(fmt, data_files={"train": str(d / f"train.{suffix}"), "test": str(d / f"test.{suffix}")})
    return list(ds["train"]["text"]), list(ds["train"]["label"]), list(ds["test"]["text"]), list(ds["test"]["label"])


def logistic_regression_classification(folder: str) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y, x_test, y_test = _classification_splits(folder)
    t0 = time.perf_counter()
    x_fit, x_dev, y_fit, y_dev = train_test_split(x, y, test_size=0.1, random_state=0)

    def fit(texts, labels, c):
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, token_pattern=r"(?u)\b\w+\b|[^\w\s]")
        model = LogisticRegression(C=c, max_iter=2000).fit(vec.fit_transform(texts), labels)
        return vec, model

    scores = {}
    for c in (1.0, 4.0, 16.0, 64.0):
        vec, model = fit(x_fit, y_fit, c)
        scores[c] = float(np.mean(model.predict(vec.transform(x_dev)) == np.asarray(y_dev)))
    best = max(scores, key=scores.get)
    vec, model = fit(x, y, best)
    acc = float(np.mean(model.predict(vec.transform(x_test)) == np.asarray(y_test)))
    return {"test_accuracy": round(acc, 4), "C": best, "wall_s": round(time.perf_counter() - t0, 1)}


def _token_features(words: list[str], i: int) -> list[str]:
    w = words[i]
    shape = "".join("X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch for ch in w)[:6]
    feats = [f"w={w.lower()}", f"shape={shape}", f"title={w.istitle()}", f"upper={w.isupper()}"]
    feats += [f"p{k}={w[:k].lower()}" for k in (1, 2, 3)] + [f"s{k}={w[-k:].lower()}" for k in (1, 2, 3)]
    for off in (-2, -1, 1, 2):
        j = i + off
        feats.append(f"w{off}={words[j].lower() if 0 <= j < len(words) else '<s>'}")
    return feats


def logistic_regression_tagging(name: str) -> dict:
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.linear_model import SGDClassifier

    from seqbucket_plugin.datapipes import load_tagging_splits
    from seqbucket_plugin.training.metrics import is_span_scheme, span_prf

    recipe, folder, flags, _, _ = SETS[name]
    d = DATA / folder
    files = {flags[i].lstrip("-").replace("-file", ""): flags[i + 1].format(d=d) for i in range(0, len(flags), 2)
             if flags[i].endswith("-file")}
    tag = {"tag": flags[flags.index("--tag-column") + 1]} if "--tag-column" in flags else {}
    splits = load_tagging_splits(files["train"], files["dev"], files["test"], **tag)
    names = splits["train"].features["tags"].feature.names
    t0 = time.perf_counter()
    hasher = FeatureHasher(n_features=2**20, input_type="string", alternate_sign=False)

    def featurise(split):
        rows, labels = [], []
        for words, tags in zip(split["tokens"], split["tags"]):
            rows += [_token_features(words, i) for i in range(len(words))]
            labels += tags
        return hasher.transform(rows), np.asarray(labels)

    x, y = featurise(splits["train"])
    # logistic loss by SGD: lbfgs needs 10+ minutes and 5 GB on 200k tokens x 2^20 hashed features
    model = SGDClassifier(loss="log_loss", alpha=1e-6, max_iter=15, tol=None, random_state=0).fit(x, y)
    x_test, y_test = featurise(splits["test"])
    pred = model.predict(x_test)
    out = {"test_accuracy": round(float(np.mean(pred == y_test)), 4)}
    if is_span_scheme(names):
        gold_rows, pred_rows, k = [], [], 0
        for tags in splits["test"]["tags"]:
            gold_rows.append([names[t] for t in tags])
            pred_rows.append([names[t] for t in pred[k : k + len(tags)]])
            k += len(tags)
        out["test_f1"] = round(span_prf(pred_rows, gold_rows)["f1"], 4)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def baseline(name: str) -> dict | None:
    recipe, folder, _, _, _ = SETS[name]
    if folder is None:
        return None
    return logistic_regression_classification(folder) if recipe == CLS else logistic_regression_tagging(name)


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"data sets (default: all): {', '.join(SETS)}")
    parser.add_argument("--no-baseline", action="store_true", help="skip the logistic regressions")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(SETS))
    if unknown:
        parser.error(f"unknown data sets {unknown}; choose from {list(SETS)}")
    results = {}
    for name in args.names or list(SETS):
        if recipe_command(name) is None:
            print(f"\n{name}: skipped, {DATA / SETS[name][1]} not found")
            continue
        results[name] = run_recipe(name)
        if not args.no_baseline:
            results[name]["baseline"] = baseline(name)
            if results[name]["baseline"]:
                print(f"logistic regression: {results[name]['baseline']}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quality.json").write_text(json.dumps(results, indent=2) + "\n")

    print("\n| data | metric | recipe (defaults) | logistic regression | target | wall | optimizer steps (best) | chosen |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        key, target = SETS[name][3], SETS[name][4]
        value = r["metrics"].get(key)
        base = (r.get("baseline") or {}).get(key)
        chosen = ", ".join(f"{k} {v}" for k, v in r["chosen"].items() if k in
                           ("max_tokens", "epochs", "lr", "eval_every", "max_length", "metric", "decoder",
                            "hidden_size", "embedding_init"))
        print(f"| {name} | {key} | {value:.4f} | {'' if base is None else f'{base:.4f}'} | "
              f"{'' if target is None else target} | {r['wall_s'] / 60:.1f} min | "
              f"{r['metrics'].get('steps')} ({r['metrics'].get('best_step')}) | {chosen} |")


if __name__ == "__main__":
    main()
