"""End-to-end recipe runs on tiny generated data: train, evaluate, save, reload, predict, resume,
and clear failures on bad arguments. Recipes run in-process through ``main(argv)``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_recipe, recipe_files

from seqbucket_plugin.training import engine
from seqbucket_plugin.training.cli import run_main

ROOT = Path(__file__).resolve().parents[1]


cls_recipe = load_recipe("text_classification", "recipes")
tag_recipe = load_recipe("tagging", "recipes")


_files = recipe_files


SMALL_CLS = ["--embedding-dim", "16", "--hidden-size", "16", "--max-tokens", "4096", "--no-progress", "--threads", "1"]
SMALL_TAG = ["--embedding-dim", "16", "--hidden-size", "16", "--num-layers", "1", "--char-filters", "8",
             "--char-dim", "8", "--max-tokens", "1024", "--no-progress", "--threads", "1"]


def test_classification_train_save_predict(cls_data, tmp_path, capsys, monkeypatch):
    from seqbucket_plugin.training import plots

    monkeypatch.setattr(plots, "_warned", False)  # said once per process; earlier tests may have run a recipe
    out = tmp_path / "run"
    metrics = cls_recipe.main([*_files(cls_data), *SMALL_CLS, "--epochs", "2", "--output-dir", str(out)])
    for key in ("dev_accuracy", "test_accuracy", "test_macro_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for name in ("config.json", "labels.json", "best_model.pt", "log.jsonl", "tokenizer"):
        assert (out / name).exists(), name
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "training_curves.png").exists() and (out / "lengths.png").exists()
    else:
        assert capsys.readouterr().out.count("plots skipped: matplotlib not installed") == 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and {"step", "dev_accuracy", "tokens_per_s", "padding_efficiency"} <= set(log[0])

    texts = tmp_path / "texts.txt"
    texts.write_text("great superb fun movie\nawful dull boring\n", encoding="utf-8")
    preds_file = tmp_path / "preds.jsonl"
    cls_recipe.main(["--predict", str(texts), "--output-dir", str(out), "--predictions", str(preds_file)])
    preds = [json.loads(line) for line in preds_file.read_text().splitlines()]
    labels = json.loads((out / "labels.json").read_text())
    assert [p["index"] for p in preds] == [0, 1] and all(p["label"] in labels for p in preds)


def test_classification_tbptt_and_naive(cls_data, tmp_path):
    """Both train with fixed rows per batch (--batch-size; no --max-tokens, the two are exclusive):
    TBPTT on length buckets, the naive baseline across all lengths, so with more padding."""
    no_budget = [a for a in SMALL_CLS if a not in ("--max-tokens", "4096")]
    efficiency = {}
    for extra in (["--tbptt-chunk", "16", "--encoder", "lstm", "--batch-size", "16"],
                  ["--batching", "naive", "--batch-size", "32"]):
        out = tmp_path / extra[0]
        metrics = cls_recipe.main([*_files(cls_data), *no_budget, "--max-steps", "6", *extra, "--output-dir", str(out)])
        assert metrics["steps"] == 6 and 1 <= metrics["best_step"] <= 6
        assert round(metrics["test_accuracy"] * 80) == pytest.approx(metrics["test_accuracy"] * 80)  # k of 80
        config = json.loads((out / "config.json").read_text())
        assert config["batch_size"] == int(extra[-1]) and config["max_tokens"] is None
        efficiency[extra[0]] = json.loads((out / "run_summary.json").read_text())["padding_efficiency"]
    assert efficiency["--tbptt-chunk"] > 0.8 > efficiency["--batching"], efficiency


def test_max_length_zero_means_no_truncation(tmp_path):
    import argparse

    import datasets

    from seqbucket_plugin.datapipes import TextTokenizer

    text = " ".join(["word"] * 50)
    split = datasets.Dataset.from_dict({"text": [text, "a b"], "label": [0, 1]})
    tokenizer = TextTokenizer.train(split, kind="word", vocab_size=100, min_frequency=1)
    base = {"tbptt_chunk": 0, "truncation": "head", "head_fraction": 0.25}
    whole = cls_recipe.tokenize(argparse.Namespace(max_length=0, **base), tokenizer, split)
    cut = cls_recipe.tokenize(argparse.Namespace(max_length=10, **base), tokenizer, split)
    assert max(whole["length"]) > 50 - 1 and max(cut["length"]) == 10

    tagged = datasets.Dataset.from_dict({"tokens": [["w"] * 30], "tags": [[0] * 30]})
    tag_tokenizer = tag_recipe.word_tokenizer(tagged["tokens"], min_frequency=1, vocab_size=100)
    assert tag_recipe.tokenize(argparse.Namespace(max_length=0), tag_tokenizer, tagged)["length"] == [30]
    assert tag_recipe.tokenize(argparse.Namespace(max_length=12), tag_tokenizer, tagged)["length"] == [12]


def test_tagging_train_save_predict(tag_data, tmp_path):
    out = tmp_path / "run"
    metrics = tag_recipe.main([*_files(tag_data), *SMALL_TAG, "--epochs", "2", "--output-dir", str(out)])
    for key in ("dev_accuracy", "test_accuracy", "test_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    sentences = tmp_path / "s.txt"
    sentences.write_text("he met Kalomi Renta in Tosavi City .\nzubumo .\n", encoding="utf-8")
    preds_file = tmp_path / "preds.jsonl"
    tag_recipe.main(["--predict", str(sentences), "--output-dir", str(out), "--predictions", str(preds_file)])
    preds = [json.loads(line) for line in preds_file.read_text().splitlines()]
    tags = set(json.loads((out / "labels.json").read_text()))
    assert [len(p["tags"]) for p in preds] == [8, 2] and all(set(p["tags"]) <= tags for p in preds)


@pytest.mark.parametrize("recipe", ["classification", "tagging"])
def test_a_finished_run_frees_its_trainer_without_a_garbage_collection(recipe, cls_data, tag_data, tmp_path):
    """No reference cycle keeps the trainer (its model, DDP wrapper, loaders and their threads)
    alive after ``main`` returns: left to interpreter shutdown they can abort the process."""
    import gc

    module, data, small = (cls_recipe, cls_data, SMALL_CLS) if recipe == "classification" else \
        (tag_recipe, tag_data, SMALL_TAG)
    args = [*_files(data), *small, "--max-steps", "1"]
    module.main([*args, "--output-dir", str(tmp_path / "warm-up")])  # lazy first imports leave cyclic garbage
    gc.collect()
    gc.disable()
    try:
        module.main([*args, "--output-dir", str(tmp_path / "run")])
        left = [o for o in gc.get_objects() if isinstance(o, engine.Trainer)]
    finally:
        gc.enable()
    assert left == [], "a Trainer outlived its run (reference cycle)"


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("recipe", ["classification", "tagging"])
def test_resume_after_interruption_is_exact(recipe, cls_data, tag_data, tmp_path, monkeypatch):
    # classification: 14 batches per epoch, interrupted at step 15 -> resumes from the epoch-end
    # checkpoint; tagging: ~25 batches per epoch -> resumes mid-epoch from the checkpoint of step 12
    module, data, small, budget = ((cls_recipe, cls_data, SMALL_CLS, "2048") if recipe == "classification"
                                   else (tag_recipe, tag_data, SMALL_TAG, "256"))
    # dropout on; checkpoints every 4 steps, dev every 6
    args = [*_files(data), *small, "--max-tokens", budget, "--epochs", "3", "--max-steps", "22",
            "--save-every", "4", "--eval-every", "6", "--patience", "0", "--dropout", "0.3"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    expected = module.main([*args, "--output-dir", str(full)])

    original = engine.Trainer._backward
    calls = {"n": 0}

    def failing_backward(self, loss):
        calls["n"] += 1
        if calls["n"] == 15:  # mid-epoch, 3 steps after the checkpoint of step 12
            raise _Interrupt
        original(self, loss)

    monkeypatch.setattr(engine.Trainer, "_backward", failing_backward)
    with pytest.raises(_Interrupt):
        module.main([*args, "--output-dir", str(cut)])
    monkeypatch.setattr(engine.Trainer, "_backward", original)
    resumed = module.main([*args, "--output-dir", str(cut), "--resume"])

    assert resumed == expected
    a = torch.load(full / "best_model.pt", weights_only=True)
    b = torch.load(cut / "best_model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final_a = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    final_b = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    log_a = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (cut / "log.jsonl").read_text().splitlines()]
    strip = ("tokens_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in log_a] == \
           [{k: v for k, v in r.items() if k not in strip} for r in log_b]


def test_bad_arguments_fail_clearly(cls_data, tmp_path, capsys):
    out = str(tmp_path / "x")
    assert run_main(cls_recipe.main, ["--train-file", cls_data["train"], "--text-column", "body",
                                      "--output-dir", out]) == 2
    assert "column 'body' not found" in capsys.readouterr().err
    assert run_main(cls_recipe.main, [*_files(cls_data), "--encoder", "transformerx", "--output-dir", out]) == 2
    assert "--encoder 'transformerx' is not registered" in capsys.readouterr().err
    assert run_main(tag_recipe.main, ["--train-file", str(tmp_path / "nope.conllu"), "--output-dir", out]) == 2
    assert "file not found" in capsys.readouterr().err


def test_missing_file_exit_code_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "text_classification.py"),
                           "--train-file", str(tmp_path / "missing.csv"), "--output-dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: --train-file: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr
