"""Tools users bring: type checkers (``py.typed``, overloads), TensorBoard (``--report-to``),
``--log-every``, ``--help`` showing every default, a progress bar that ends at ``--max-steps``
with evaluation lines above it, and readable training curves after few evaluations."""

from __future__ import annotations

import io
import re
import sys
import typing
from pathlib import Path

import pytest
from conftest import load_recipe, recipe_files

import seqbucket_plugin
from seqbucket_plugin.datapipes import loaders, tokenize
from seqbucket_plugin.training import progress

ROOT = Path(__file__).resolve().parents[1]
cls_recipe = load_recipe("text_classification", "tools")
tag_recipe = load_recipe("tagging", "tools")
SMALL = ["--embedding-dim", "8", "--hidden-size", "8", "--max-tokens", "4096", "--threads", "1"]


def test_the_package_ships_py_typed():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11
    assert (Path(seqbucket_plugin.__file__).parent / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["seqbucket_plugin"]


@pytest.mark.skipif(not hasattr(typing, "get_overloads"), reason="typing.get_overloads needs Python 3.11")
def test_a_flag_that_changes_the_return_type_has_overloads():
    for fn in (loaders.load_classification, loaders.load_classification_splits, loaders.load_conllu,
               loaders.load_conll_columns, loaders.load_tagging, loaders.load_tagging_splits,
               tokenize.tokenize_dataset, tokenize.tokenize_tagged_dataset):
        overloads = typing.get_overloads(fn)
        assert len(overloads) == 2, fn.__name__
        returns = [o.__annotations__["return"] for o in overloads]
        assert "tuple" not in returns[0] and returns[1].startswith("tuple["), (fn.__name__, returns)


@pytest.mark.parametrize("recipe", [cls_recipe, tag_recipe], ids=["classification", "tagging"])
def test_help_shows_every_default(recipe, capsys):
    with pytest.raises(SystemExit) as stop:
        recipe.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    entries = re.split(r"\n(?=  -)", text.split("options:", 1)[1])
    lacking = [e.split()[0] for e in entries if e.strip().startswith("--") and "(default:" not in " ".join(e.split())]
    assert lacking == []
    flat = " ".join(text.split())
    assert "no mixed precision on CUDA (default: amp on)" in flat  # not "(default: True)"
    assert "(default: from the training data)" in flat and "--log-every N" in flat


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_ends_at_max_steps_and_lines_go_above_it(cls_data, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    writes = []
    original = progress.ProgressBar.writing

    def writing(self):
        writes.append(self.bar is not None)
        return original(self)

    monkeypatch.setattr(progress.ProgressBar, "writing", writing)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    cls_recipe.main([*recipe_files(cls_data), *SMALL, "--max-steps", "6", "--eval-every", "3", "--log-every", "2",
                     "--output-dir", str(tmp_path / "run")])
    bar = terminal.getvalue()
    assert "6/6" in bar and not re.search(r"/(?!6\b)\d+ \[", bar), bar[-500:]
    printed = capsys.readouterr().out
    assert re.search(r"step 2 \(epoch 1\): train loss [\d.]+, lr [\d.e-]+, [\d,]+ tokens/s", printed)
    assert printed.count("dev accuracy") >= 2
    assert sum(writes) >= 4  # every line printed while the bar was shown went through its write mode


def test_report_to_tensorboard(cls_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cls_recipe.main([*recipe_files(cls_data), *SMALL, "--no-progress", "--max-steps", "4", "--eval-every", "2",
                     "--log-every", "1", "--report-to", "tensorboard", "--output-dir", str(out)])
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "dev/accuracy", "dev/macro_f1"} <= tags
    assert [e.step for e in events.Scalars("dev/accuracy")] == [2, 4]
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3, 4]


def test_training_curves_after_one_or_two_evaluations(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from seqbucket_plugin.training import plots

    saved = []
    real_savefig = plt.Figure.savefig

    def savefig(fig, path, **kw):
        saved.append(fig)
        return real_savefig(fig, path, **kw)

    plt.Figure.savefig = savefig
    try:
        for n in (1, 2):
            history = [{"step": 10 * (i + 1), "train_loss": 0.7 - 0.1 * i, "dev_accuracy": 0.6 + 0.1 * i,
                        "best": True} for i in range(n)]
            assert plots.plot_training_curves(history, "accuracy", tmp_path / f"curves{n}.png")
    finally:
        plt.Figure.savefig = real_savefig
    for fig in saved:
        loss_ax, metric_ax = fig.axes  # two stacked panels, no twin axes over one another
        assert loss_ax.get_position().y0 > metric_ax.get_position().y1
        low, high = metric_ax.get_xlim()
        assert low < 10 < high
        assert "best dev accuracy" in fig._suptitle.get_text()
