"""The largest-budget finder (``--max-tokens auto``), on the CPU with injected out-of-memory errors
and a fake memory probe: the search itself, its margin, its failures, and the recipe's use of it."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from conftest import load_recipe, make_examples, recipe_files

from seqbucket_plugin.datapipes import collate_packed
from seqbucket_plugin.errors import BudgetSearchError
from seqbucket_plugin.heads import SequenceClassifier
from seqbucket_plugin.training import budget
from seqbucket_plugin.training import recipe as recipe_run
from seqbucket_plugin.training.auto_settings import Chosen
from seqbucket_plugin.training.classification import classification_step
from seqbucket_plugin.training.cli import run_main

LONGEST = 50


class FakeProbe:
    """A memory probe whose peak is ``bytes_per_token`` x the tokens of the batch last built."""

    def __init__(self, cap=None, bytes_per_token=1_000):
        self.cap = cap
        self.bytes_per_token = bytes_per_token
        self.tokens = 0
        self.starts = 0

    def start(self):
        self.starts += 1
        self.tokens = 0

    def peak(self):
        return self.tokens * self.bytes_per_token if self.cap is not None else None


def model():
    return SequenceClassifier(40, 3, embedding_dim=8, hidden_size=8, encoder="bilstm")


def batches(probe=None):
    def make(rows):
        rng = np.random.default_rng(rows)
        examples = [{"input_ids": rng.integers(1, 40, LONGEST).tolist(), "length": LONGEST, "label": i % 3}
                    for i in range(rows)]
        if probe is not None:
            probe.tokens = rows * LONGEST
        return collate_packed(examples)

    return make


def oom_above(rows_that_fit):
    """A training step that runs for real and raises CUDA's out-of-memory error above a size."""
    step = classification_step()

    def run(model, batch, backward):
        if batch.input_ids.shape[0] > rows_that_fit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return step(model, batch, backward)

    return run


def test_bisects_to_the_largest_fitting_batch_and_keeps_the_margin():
    probe = FakeProbe()
    result = budget.find_max_tokens(model, batches(), oom_above(37), "cpu", longest=LONGEST, probe=probe,
                                    max_rows=1_000)
    assert result.bound == "memory"
    assert result.largest_fit == 37 * LONGEST and result.smallest_failure == 38 * LONGEST
    assert result.max_tokens == int(0.9 * 37 * LONGEST) // 64 * 64 == 1_664
    assert [t.rows for t in result.trials][:7] == [1, 2, 4, 8, 16, 32, 64]  # doubling, then bisection
    assert all(t.fits == (t.rows <= 37) for t in result.trials)
    assert probe.starts == len(result.trials), "the peak is reset before every trial"
    assert "1,664 tokens" in result.summary() and "10% margin" in result.summary()
    json.dumps(result.as_dict())  # plain data, for the GPU check's JSON


def test_a_memory_cap_stops_the_search_like_an_out_of_memory_error():
    probe = FakeProbe(cap=21 * LONGEST * 1_000)
    result = budget.find_max_tokens(model, batches(probe), classification_step(), "cpu", longest=LONGEST,
                                    probe=probe, max_rows=500, margin=0.2)
    assert result.largest_fit == 21 * LONGEST and result.bound == "memory"
    assert result.max_tokens == int(0.8 * 21 * LONGEST) // 64 * 64
    over = [t for t in result.trials if not t.fits]
    assert over and all("over the cap" in t.error and t.peak > probe.cap for t in over)


def test_the_row_cap_bounds_the_budget_without_a_margin():
    result = budget.find_max_tokens(model, batches(), oom_above(10**6), "cpu", longest=LONGEST,
                                    probe=FakeProbe(), max_rows=24)
    assert result.bound == "max_rows" and result.smallest_failure is None
    assert result.max_tokens == result.largest_fit == 24 * LONGEST
    assert [t.rows for t in result.trials] == [1, 2, 4, 8, 16, 24]
    assert "row cap" in result.summary()


def test_tolerance_ends_the_bisection_early():
    result = budget.find_max_tokens(model, batches(), oom_above(700), "cpu", longest=LONGEST, probe=FakeProbe(),
                                    max_rows=4_000, tolerance=0.1)
    fit = result.largest_fit // LONGEST
    assert 0.9 * 700 <= fit <= 700 and result.smallest_failure // LONGEST - fit <= 0.1 * fit + 1


def test_one_row_that_does_not_fit_is_an_error():
    with pytest.raises(BudgetSearchError, match="not even one row of the longest training length \\(50"):
        budget.find_max_tokens(model, batches(), oom_above(0), "cpu", longest=LONGEST, probe=FakeProbe())


def test_off_cuda_a_probe_is_required():
    with pytest.raises(BudgetSearchError, match="measures GPU memory"):
        budget.find_max_tokens(model, batches(), classification_step(), "cpu", longest=LONGEST)


def test_the_search_model_is_thrown_away_and_the_rng_is_kept():
    args = types.SimpleNamespace(max_tokens="auto", max_batch_size=16, resuming=False)
    ctx = types.SimpleNamespace(is_main=True, device=torch.device("cpu"), broadcast_object=lambda obj: obj)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    chosen = Chosen()
    recipe_run.resolve_auto_max_tokens(args, ctx, "unused", chosen, build_model=model, make_batch=batches(),
                                   step=oom_above(9), longest=LONGEST, probe=FakeProbe())
    assert torch.equal(torch.rand(3), expected), "the search draws nothing from the run's random streams"
    assert args.max_tokens == chosen.values["max_tokens"] == int(0.9 * 9 * LONGEST) // 64 * 64
    assert chosen.reasons["max_tokens"].startswith("--max-tokens auto: ")


def test_a_resume_reuses_the_budget_its_run_found(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_tokens": 1234}))
    args = types.SimpleNamespace(max_tokens="auto", max_batch_size=None, resuming=True)
    chosen = Chosen()

    def never(*a, **k):
        raise AssertionError("no search when resuming")

    recipe_run.resolve_auto_max_tokens(args, None, tmp_path, chosen, build_model=never, make_batch=never, step=never,
                                   longest=LONGEST)
    assert args.max_tokens == 1234 and "config.json" in chosen.reasons["max_tokens"]


def test_worst_case_batches_are_the_longest_examples():
    import datasets

    examples = make_examples([3, 9, 4, 9, 1])
    make = budget.dataset_worst_case_batches(datasets.Dataset.from_list(examples), pad_id=0)
    batch = make(2)
    assert batch.input_ids.shape == (2, 9) and sorted(batch.extras["id"].tolist()) == [1, 3]
    assert make(7).input_ids.shape == (7, 9), "the longest repeated when there are fewer examples"


def test_check_refuses_cpu_and_fixed_rows():
    check = recipe_run.check_auto_max_tokens
    check(types.SimpleNamespace(max_tokens=4096), torch.device("cpu"))  # a number: nothing to check
    with pytest.raises(BudgetSearchError, match="needs a CUDA device; this run is on cpu"):
        check(types.SimpleNamespace(max_tokens="auto", batch_size=None, batching="bucket"), torch.device("cpu"))
    with pytest.raises(BudgetSearchError, match="--batch-size"):
        check(types.SimpleNamespace(max_tokens="auto", batch_size=32, batching="bucket"), torch.device("cuda"))


# ------------------------------------------------------------------------------------------ recipes
cls_recipe = load_recipe("text_classification", "budget")
tag_recipe = load_recipe("tagging", "budget")
SMALL = ["--embedding-dim", "8", "--hidden-size", "8", "--no-progress", "--threads", "1", "--epochs", "1"]


@pytest.mark.parametrize("recipe", ["classification", "tagging"])
def test_recipe_refuses_auto_on_the_cpu_before_writing(recipe, cls_data, tag_data, tmp_path, capsys):
    module, data = (cls_recipe, cls_data) if recipe == "classification" else (tag_recipe, tag_data)
    out = tmp_path / "run"
    rc = run_main(module.main, [*recipe_files(data), *SMALL, "--max-tokens", "auto", "--device", "cpu",
                                "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1 and "--max-tokens auto" in err and "CUDA" in err
    assert not out.exists() or not any(out.iterdir()), "nothing written"


def test_recipe_bad_max_tokens_value_is_a_usage_error(cls_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cls_recipe.main([*recipe_files(cls_data), "--max-tokens", "lots", "--output-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2 and "expected a number of tokens or 'auto'" in capsys.readouterr().err


def test_recipe_trains_with_the_budget_found_and_resumes_with_it(cls_data, tmp_path, monkeypatch, capsys):
    """The CUDA path of --max-tokens auto on the CPU: the device check passes, the probe is fake and
    steps above 5 rows of the longest length raise an out-of-memory error."""
    monkeypatch.setattr(recipe_run, "check_auto_max_tokens", lambda args, device: None)
    real_step = cls_recipe.classification_step

    def step_that_fails_above(*args, **kwargs):
        inner = real_step(*args, **kwargs)

        def step(model, batch, backward):
            if batch.input_ids.shape[0] > 5 and batch.input_ids.shape[1] == longest[0]:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return inner(model, batch, backward)

        return step

    longest = [0]

    real_resolve = recipe_run.resolve_auto_max_tokens

    def resolve(args, ctx, out, chosen, **kwargs):
        longest[0] = kwargs["longest"]() if callable(kwargs["longest"]) else kwargs["longest"]
        return real_resolve(args, ctx, out, chosen, probe=FakeProbe(), **kwargs)

    monkeypatch.setattr(recipe_run, "resolve_auto_max_tokens", resolve)
    monkeypatch.setattr(cls_recipe, "classification_step", step_that_fails_above)
    out = tmp_path / "run"
    cls_recipe.main([*recipe_files(cls_data), *SMALL, "--max-tokens", "auto", "--output-dir", str(out)])
    printed = capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    expected = max(longest[0], int(0.9 * 5 * longest[0]) // 64 * 64)
    assert config["max_tokens"] == expected and "--max-tokens auto: " in config["_chosen"]["max_tokens"]
    assert "searching the largest token budget" in printed and "6 rows" in printed

    cls_recipe.main([*recipe_files(cls_data), *SMALL, "--max-tokens", "auto", "--epochs", "2", "--resume",
                     "--output-dir", str(out)])
    assert "searching" not in capsys.readouterr().out, "a resume reuses the budget in config.json"
    assert json.loads((out / "config.json").read_text())["max_tokens"] == expected
