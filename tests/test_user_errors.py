"""User mistakes, seen from the command line (issue 14): each is one ``error: ...`` line on stderr
and exit status 2, raised before anything is written to ``--output-dir`` (no ``config.json``,
``labels.json`` or ``tokenizer/``), never a traceback, never an option silently ignored."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_recipe, recipe_files

from seqbucket_plugin.training.cli import run_main
from seqbucket_plugin.training.options import ClassificationOptions, option_defaults

ROOT = Path(__file__).resolve().parents[1]
cls_recipe = load_recipe("text_classification", "user_errors")
tag_recipe = load_recipe("tagging", "user_errors")

TINY = ["--embedding-dim", "8", "--hidden-size", "8", "--no-progress", "--threads", "1", "--max-steps", "2",
        "--epochs", "1", "--device", "cpu"]
TINY_TAG = [*TINY, "--num-layers", "1", "--char-filters", "4", "--char-dim", "4"]


def fails_cleanly(recipe, argv, out: Path, capsys, match: str) -> str:
    """Run ``recipe`` with ``argv`` into ``out``: exit 2, exactly one ``error:`` line naming
    ``match``, and nothing new in ``out``. Returns the error line."""
    before = sorted(os.listdir(out)) if out.is_dir() else None
    capsys.readouterr()
    assert run_main(recipe.main, [*argv, "--output-dir", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    assert match in errors[0], errors[0]
    after = sorted(os.listdir(out)) if out.is_dir() else None
    assert after == before, f"{out} changed: {before} -> {after}"
    return errors[0]


# ------------------------------------------------------------------------------------------ option ranges
@pytest.mark.parametrize("recipe_name,flags,match", [
    ("cls", ["--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
    ("tag", ["--max-tokens", "-5"], "--max-tokens must be >= 1, got -5"),
    ("cls", ["--max-length", "-3"], "--max-length must be >= 0"),
    ("tag", ["--num-buckets", "0"], "--num-buckets must be >= 1, got 0"),
    ("cls", ["--num-buckets", "0"], "--num-buckets must be >= 1, got 0"),
    ("cls", ["--head-fraction", "5"], "--head-fraction must be in [0.0, 1.0], got 5.0"),
    ("cls", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("tag", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("cls", ["--lr", "0"], "--lr must be > 0.0"),
    ("cls", ["--dropout", "1.5"], "--dropout must be in [0.0, 1.0]"),
    ("cls", ["--seed", "-1"], "--seed must be >= 0"),
])
def test_out_of_range_options(recipe_name, flags, match, cls_data, tag_data, tmp_path, capsys):
    recipe, data, tiny = (cls_recipe, cls_data, TINY) if recipe_name == "cls" else (tag_recipe, tag_data, TINY_TAG)
    fails_cleanly(recipe, [*recipe_files(data), *tiny, *flags], tmp_path / "run", capsys, match)


def test_batch_size_with_max_tokens_is_refused(cls_data, tmp_path, capsys):
    """Both given: which one wins was not said (--max-tokens was ignored); now refused."""
    fails_cleanly(cls_recipe, [*recipe_files(cls_data), *TINY, "--batch-size", "8", "--max-tokens", "512"],
                  tmp_path / "run", capsys, "give --batch-size (fixed rows per batch) or --max-tokens")


# ------------------------------------------------------------------------------------------ config files
def test_a_partial_config_overrides_only_its_keys(cls_data, tmp_path):
    """A config file sets any subset of the options; the others keep their declared defaults (it
    used to be refused, and before that failed with an AttributeError)."""
    config = tmp_path / "partial.json"
    config.write_text(json.dumps({"epochs": 1, "hidden_size": 8, "max_steps": 2}))
    out = tmp_path / "run"
    cls_recipe.main(["--config", str(config), *recipe_files(cls_data), "--no-progress", "--output-dir", str(out)])
    saved = json.loads((out / "config.json").read_text())
    defaults = option_defaults(ClassificationOptions)
    assert (saved["epochs"], saved["hidden_size"], saved["max_steps"]) == (1, 8, 2)
    assert saved["pooling"] == defaults["pooling"] and saved["embedding_dim"] == defaults["embedding_dim"]


@pytest.mark.parametrize("key,value,match", [
    ("epochs", 1.5, "epochs (--epochs) must be an integer, got 1.5"),
    ("lr", "fast", 'lr (--lr) must be a number, got "fast"'),
    ("max_tokens", "lots", "max_tokens (--max-tokens) must be an integer or 'auto'"),
    ("truncation", "middle", "truncation (--truncation) must be one of"),
    ("seed", True, "seed (--seed) must be an integer, got true"),
])
def test_config_values_are_type_checked(key, value, match, cls_data, tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({key: value}))
    fails_cleanly(cls_recipe, ["--config", str(path), *recipe_files(cls_data), "--no-progress"], tmp_path / "run",
                  capsys, match)


# ------------------------------------------------------------------------------------------ output places
def test_output_dir_that_is_a_file(cls_data, tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    assert run_main(cls_recipe.main, [*recipe_files(cls_data), *TINY, "--output-dir", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --output-dir {target} is a file, not a directory"]
    assert target.read_text() == "x"
    fails_cleanly(cls_recipe, [*recipe_files(cls_data), *TINY], target / "sub", capsys, "a file, not a directory")


def test_output_dir_not_writable(cls_data, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "locked"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(parent)
                        else real_access(p, mode, **kw))  # root may write anywhere: simulate the permission
    fails_cleanly(cls_recipe, [*recipe_files(cls_data), *TINY], parent / "run", capsys,
                  f"cannot be created: {parent} is not writable")
    assert list(parent.iterdir()) == []


def test_predictions_naming_a_directory(cls_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    fails_cleanly(cls_recipe, ["--predict", cls_data["test"], "--predictions", str(tmp_path)], run, capsys,
                  f"--predictions {tmp_path} is a directory")


@pytest.mark.parametrize("recipe_name", ["cls", "tag"])
def test_non_utf8_stdin_for_predict(recipe_name, tmp_path, capsys, monkeypatch):
    recipe = cls_recipe if recipe_name == "cls" else tag_recipe
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fine\ncaf\xe9 au lait\n"), encoding="utf-8"))
    run = tmp_path / "run"
    run.mkdir()
    fails_cleanly(recipe, ["--predict", "-", "--device", "cpu"], run, capsys, "stdin line 2 is not UTF-8 text")


def test_disk_full_outside_checkpoints_is_an_error_line(cls_data, tmp_path, capsys, monkeypatch):
    from seqbucket_plugin.datapipes import TextTokenizer

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(TextTokenizer, "save", full)
    capsys.readouterr()
    assert run_main(cls_recipe.main, [*recipe_files(cls_data), *TINY, "--output-dir", str(tmp_path / "run")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and err[0].startswith("error: disk full writing ") and "tokenizer" in err[0], err


# ------------------------------------------------------------------------------------------ data files
def test_tag_column_name_on_a_column_file(tag_data, tmp_path, capsys):
    fails_cleanly(tag_recipe, [*recipe_files(tag_data), *TINY_TAG, "--tag-column", "xpos"], tmp_path / "run", capsys,
                  "is a CoNLL column file; give the tag's column number")


def _conllu(path: Path, sentences: int = 30) -> Path:
    rows = "".join(f"1\tw{i}\tw\tNOUN\tNN\t_\t0\troot\t_\t_\n2\tv\tv\tVERB\tVB\t_\t1\tdep\t_\t_\n\n"
                   for i in range(sentences))
    path.write_text(rows, encoding="utf-8")
    return path


def test_tag_column_number_on_a_conllu_file(tmp_path, capsys):
    data = _conllu(tmp_path / "s.conllu")
    fails_cleanly(tag_recipe, ["--train-file", str(data), *TINY_TAG, "--tag-column", "3"], tmp_path / "run", capsys,
                  "is a CoNLL-U file; give --tag-column upos or xpos")


def test_too_few_examples_to_hold_out_a_dev_set(tmp_path, capsys):
    """One sentence and no --dev-file: the 10% hold-out used to fail inside train_test_split."""
    data = _conllu(tmp_path / "one.conllu", sentences=1)
    fails_cleanly(tag_recipe, ["--train-file", str(data), *TINY_TAG], tmp_path / "run", capsys,
                  "the training set has 1 example(s), too few to hold 10% out as a dev set; give a --dev-file")


def test_conllu_with_the_default_tag_column_takes_upos(tmp_path):
    data = _conllu(tmp_path / "s.conllu")
    out = tmp_path / "run"
    tag_recipe.main(["--train-file", str(data), "--dev-file", str(data), *TINY_TAG, "--output-dir", str(out)])
    assert json.loads((out / "labels.json").read_text()) == ["NOUN", "VERB"]


def test_a_line_missing_the_tag_column_names_file_and_line(tag_data, tmp_path, capsys):
    """word POS TAG lines, one without its TAG: its POS used to become a tag, silently."""
    lines = Path(tag_data["train"]).read_text(encoding="utf-8").split("\n")
    lines = [f"{line.split()[0]} NN {line.split()[1]}" if line.strip() else line for line in lines]
    broken = next(i for i, line in enumerate(lines) if line.strip() and i > 2)
    lines[broken] = " ".join(lines[broken].split()[:2])
    data = tmp_path / "three.conll"
    data.write_text("\n".join(lines), encoding="utf-8")
    fails_cleanly(tag_recipe, ["--train-file", str(data), "--dev-file", tag_data["dev"], *TINY_TAG], tmp_path / "run",
                  capsys, f"{data}:{broken + 1}: found 2 whitespace-separated fields, but line 1 has 3")


@pytest.mark.parametrize("name,content", [("header.csv", "text,label\n"), ("blank.tsv", "text\tlabel\n\n")])
def test_a_training_file_without_examples(name, content, tmp_path, capsys):
    data = tmp_path / name
    data.write_text(content)
    fails_cleanly(cls_recipe, ["--train-file", str(data), *TINY], tmp_path / "run", capsys,
                  f"{data}: the train file has no examples")


def test_an_empty_tagging_file(tmp_path, capsys):
    data = tmp_path / "empty.conll"
    data.write_text("\n\n")
    fails_cleanly(tag_recipe, ["--train-file", str(data), *TINY_TAG], tmp_path / "run", capsys,
                  f"{data}: the train file has no examples")


# ------------------------------------------------------------------------------------------ a real process
def test_out_of_range_option_in_a_subprocess(cls_data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "text_classification.py"), *recipe_files(cls_data),
                           "--max-tokens", "0", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --max-tokens must be >= 1, got 0"]
    assert not out.exists()
