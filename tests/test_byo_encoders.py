"""Bring your own encoder: the README's example passes the shipped contract and runs in both
recipes; registration checks what it can; the recipes pass an encoder only the options its
factory takes and name the one it does not, before anything is written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import load_recipe, recipe_files
from torch import nn

from seqbucket_plugin.encoders import (
    EncoderOptionError,
    EncoderRegistrationError,
    SequenceEncoder,
    create_encoder,
    get_encoder_factory,
    list_encoders,
    register_encoder,
    unregister_encoder,
)
from seqbucket_plugin.encoders import registry as reg
from seqbucket_plugin.runs import load_run
from seqbucket_plugin.testing import check_encoder
from seqbucket_plugin.training.cli import run_main

ROOT = Path(__file__).resolve().parents[1]
cls_recipe = load_recipe("text_classification", "byo_encoders")
tag_recipe = load_recipe("tagging", "byo_encoders")


def readme_example() -> str:
    """The code block of the README's "Registering a custom encoder / In your code" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### In your code", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def causal_conv():
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)  # registers "causal-conv"
    yield namespace
    unregister_encoder("causal-conv")


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(reg, "_factories", dict(reg._factories))
    monkeypatch.setattr(reg, "_aliases", dict(reg._aliases))
    yield reg


def test_the_readme_example_passes_the_contract(causal_conv):
    assert "causal-conv" in list_encoders() and get_encoder_factory("cconv") is causal_conv["CausalConvEncoder"]
    assert isinstance(causal_conv["encoder"], SequenceEncoder)
    check_encoder("causal-conv")
    enc = create_encoder("causal-conv", input_size=3, hidden_size=4, kernel_size=5)
    assert enc(torch.randn(2, 0, 3), torch.zeros(2, dtype=torch.long)).states.shape == (2, 0, 4)


SMALL_CLS = ["--embedding-dim", "16", "--hidden-size", "16", "--max-tokens", "4096", "--no-progress",
             "--threads", "1", "--epochs", "1"]
SMALL_TAG = ["--embedding-dim", "16", "--hidden-size", "16", "--char-filters", "8", "--char-dim", "8",
             "--max-tokens", "1024", "--no-progress", "--threads", "1", "--epochs", "1"]


def test_the_readme_example_runs_in_both_recipes(causal_conv, cls_data, tag_data, tmp_path, capsys):
    out = tmp_path / "cls"
    metrics = cls_recipe.main([*recipe_files(cls_data), *SMALL_CLS, "--encoder", "causal-conv",
                               "--output-dir", str(out)])
    assert 0 <= metrics["test_accuracy"] <= 1
    # the config's defaults (--embedding-dropout 0.3) are left out, with a note
    assert "note: --encoder causal-conv does not take --embedding-dropout; the config's default is not passed" \
        in capsys.readouterr().out
    run = load_run(out)
    assert len(run.predict(["a superb film", "dull"])) == 2
    # the tagging config's defaults (2 layers, dropout between them) are left out too
    out = tmp_path / "tag"
    metrics = tag_recipe.main([*recipe_files(tag_data), *SMALL_TAG, "--encoder", "cconv", "--output-dir", str(out)])
    assert "test_f1" in metrics
    assert len(load_run(out).predict([["he", "met", "Kalomi"]])) == 1


def test_an_option_the_encoder_does_not_take_is_one_error_line(causal_conv, cls_data, tag_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_main(cls_recipe.main, [*recipe_files(cls_data), *SMALL_CLS, "--encoder", "causal-conv",
                                      "--num-layers", "3", "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --encoder causal-conv does not take --num-layers (num_layers=3)")
    assert "input_size" in err[0] and "kernel_size" in err[0]
    assert not out.exists()  # nothing written: no config.json, labels.json or tokenizer/
    code = run_main(tag_recipe.main, [*recipe_files(tag_data), *SMALL_TAG, "--encoder", "causal-conv",
                                      "--num-layers", "4", "--output-dir", str(out)])
    assert code == 2 and "does not take --num-layers" in capsys.readouterr().err and not out.exists()


def test_registration_checks_what_it_can(isolated_registry):
    class Plain(nn.Module):
        def __init__(self, input_size, hidden_size, pooling="last"):
            super().__init__()
            self.lin = nn.Linear(input_size, hidden_size)

    with pytest.raises(EncoderRegistrationError, match="not a SequenceEncoder.*pooled_size.*derive from"):
        register_encoder("plain", Plain)

    class Declared(nn.Module):  # the protocol's attributes declared: accepted
        output_size: int
        pooled_size: int

        def __init__(self, input_size, hidden_size, pooling="last"):
            super().__init__()
            self.output_size = self.pooled_size = hidden_size

    register_encoder("declared", Declared)

    class NotAModule:
        def __init__(self, input_size, hidden_size):
            pass

    with pytest.raises(EncoderRegistrationError, match="not an nn.Module"):
        register_encoder("not-a-module", NotAModule)
    with pytest.raises(EncoderRegistrationError, match=r"does not accept \['hidden_size'\]"):
        register_encoder("no-hidden", lambda input_size, size: None)

    def returns_plain(input_size, hidden_size, **kw):
        return nn.Linear(input_size, hidden_size)

    register_encoder("returns-plain", returns_plain)
    with pytest.raises(EncoderRegistrationError, match=r"without \['output_size', 'pooled_size'\]"):
        create_encoder("returns-plain", input_size=3, hidden_size=2)
    with pytest.raises(EncoderOptionError, match=r"does not take \['nope'\]; its factory accepts"):
        create_encoder("declared", input_size=3, hidden_size=2, nope=1)


def test_override_keeps_the_aliases(isolated_registry):
    class A(SequenceEncoder):
        def __init__(self, input_size, hidden_size, pooling="last"):
            super().__init__(hidden_size, 1, pooling)

    class B(A):
        pass

    register_encoder("mine", A, aliases=("my-alias", "other-alias"))
    register_encoder("mine", B, override=True)
    assert get_encoder_factory("my-alias") is B and get_encoder_factory("other-alias") is B
    assert set(list_encoders(include_aliases=True)) >= {"mine", "my-alias", "other-alias"}
    register_encoder("mine", A, aliases=("new-alias",), override=True)
    assert {get_encoder_factory(n) for n in ("mine", "my-alias", "new-alias")} == {A}

