"""The recipes' settings chosen from the data: printed once, recorded with reasons in config.json,
overridden by any explicit option, and the selection metric follows the task (span F1 for BIO)."""

from __future__ import annotations

import json

import pytest
from conftest import load_recipe, recipe_files

cls_recipe = load_recipe("text_classification", "defaults")
tag_recipe = load_recipe("tagging", "defaults")
TINY = ["--embedding-dim", "8", "--hidden-size", "8", "--no-progress", "--threads", "1", "--max-steps", "4"]


_files = recipe_files


def test_classification_records_what_it_chose_and_why(cls_data, tmp_path, capsys):
    out = tmp_path / "run"
    cls_recipe.main([*_files(cls_data), *TINY, "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert printed.count("settings chosen from the training data") == 1
    config = json.loads((out / "config.json").read_text())
    for key in ("max_length", "min_frequency", "max_tokens", "max_batch_size", "metric", "epochs", "lr",
                "warmup_ratio", "eval_every", "patience"):
        assert config[key] is not None, key
        assert isinstance(config["_chosen"][key], str) and config["_chosen"][key], key
        assert f"  {key} = " in printed
    assert config["metric"] == "accuracy"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all("dev_accuracy" in entry for entry in log)


def test_explicit_options_win_and_are_not_listed_as_chosen(cls_data, tmp_path):
    out = tmp_path / "run"
    cls_recipe.main([*_files(cls_data), *TINY, "--output-dir", str(out), "--max-tokens", "500", "--lr", "0.01",
                     "--epochs", "2", "--metric", "macro_f1", "--min-frequency", "2", "--max-length", "0"])
    config = json.loads((out / "config.json").read_text())
    assert (config["max_tokens"], config["lr"], config["epochs"], config["metric"]) == (500, 0.01, 2, "macro_f1")
    assert (config["min_frequency"], config["max_length"]) == (2, 0)
    assert not {"max_tokens", "lr", "epochs", "metric", "min_frequency", "max_length"} & set(config["_chosen"])


def test_a_run_config_is_a_valid_config_file(cls_data, tmp_path):
    """config.json (with its _chosen reasons) can be given back as --config: the same settings."""
    first, second = tmp_path / "a", tmp_path / "b"
    cls_recipe.main([*_files(cls_data), *TINY, "--output-dir", str(first)])
    cls_recipe.main(["--config", str(first / "config.json"), *_files(cls_data), "--output-dir", str(second)])
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, second))
    skip = ("output_dir", "config", "_chosen")
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
    assert b.get("_chosen", {}) == {}  # everything was explicit the second time


def test_span_tags_select_on_span_f1_with_a_crf(tag_data, tmp_path):
    out = tmp_path / "run"
    metrics = tag_recipe.main([*_files(tag_data), *TINY, "--char-filters", "4", "--char-dim", "4",
                               "--num-layers", "1", "--output-dir", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["metric"] == "f1" and config["decoder"] == "crf"
    assert "dev_f1" in metrics and "test_f1" in metrics
    best = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"best": true' in line]
    assert best and all("dev_f1" in entry for entry in best)


def test_help_says_which_defaults_come_from_the_data(capsys):
    with pytest.raises(SystemExit):
        cls_recipe.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    max_tokens = text.split("--max-tokens MAX_TOKENS ")[1].split(" --batch-size")[0]
    assert max_tokens.startswith("token budget per batch, padding included; 'auto' (CUDA only)")
    assert max_tokens.endswith("(default: from the training data)")
    assert "(default: None)" not in text.split("--max-length")[1].split("--max-tokens")[0]


@pytest.mark.parametrize("key,value", [("predict", "-"), ("predictions", "elsewhere.jsonl"), ("overwrite", True),
                                       ("resume", True)])
def test_a_config_file_sets_options_never_actions(cls_data, tmp_path, capsys, key, value):
    from seqbucket_plugin.training.cli import run_main

    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({key: value}))
    out = tmp_path / "run"
    assert run_main(cls_recipe.main, ["--config", str(config), *_files(cls_data), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0]
    assert not out.exists()
