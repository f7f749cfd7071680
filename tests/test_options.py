"""Every recipe option is declared once (training/options.py): its default, range and help; the
command line, --help, the range checks and --config files all come from that declaration."""

from __future__ import annotations

import dataclasses
import json

import pytest

from seqbucket_plugin.errors import RecipeError
from seqbucket_plugin.training.cli import parse_args, run_options
from seqbucket_plugin.training.engine import TrainConfig
from seqbucket_plugin.training.options import (
    ClassificationOptions,
    RecipeOptions,
    TaggingOptions,
    auto_options,
    build_parser,
    option_defaults,
    option_ranges,
    per_invocation_options,
)

TASKS = [ClassificationOptions, TaggingOptions]


@pytest.mark.parametrize("cls", TASKS)
def test_every_option_is_declared_with_help_and_group(cls):
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        assert f.metadata["help"] and f.metadata["group"], f.name
        if f.metadata["auto"]:
            assert f.default is None, f"{f.name}: an option chosen from the data defaults to None"


def test_training_options_take_their_defaults_from_train_config():
    auto = auto_options(RecipeOptions)
    for f in dataclasses.fields(TrainConfig):
        assert f.name in RecipeOptions.__dataclass_fields__, f"TrainConfig.{f.name} has no recipe option"
        expected = None if f.name in auto else f.default
        assert option_defaults(RecipeOptions)[f.name] == expected, f.name


@pytest.mark.parametrize("cls", TASKS)
def test_no_arguments_give_the_declared_defaults(cls, tmp_path):
    opts = parse_args(["--output-dir", str(tmp_path / "run")], cls, "test")
    for name, default in option_defaults(cls).items():
        if name != "output_dir":
            assert getattr(opts, name) == default, name
    parser = build_parser(cls, "test")
    assert {a.dest for a in parser._actions} - {"help"} == set(option_defaults(cls))


def test_a_config_overrides_defaults_and_the_command_line_overrides_it(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"hidden_size": 16, "epochs": 2, "lr": None, "_chosen": {"x": "ignored"}}))
    opts = parse_args(["--config", str(config), "--epochs", "3", "--output-dir", str(tmp_path / "r")],
                      ClassificationOptions, "test")
    assert (opts.hidden_size, opts.epochs, opts.lr) == (16, 3, None)
    assert opts.pooling == option_defaults(ClassificationOptions)["pooling"]
    saved = run_options(opts)
    assert not set(saved) & set(per_invocation_options())


def test_task_defaults_differ_where_declared():
    cls, tag = option_defaults(ClassificationOptions), option_defaults(TaggingOptions)
    assert (cls["num_layers"], tag["num_layers"]) == (1, 2)
    assert "pooling" in cls and "pooling" not in tag and "char_encoder" in tag
    assert option_ranges(ClassificationOptions)["head_fraction"] == (0.0, 1.0, True)
    assert option_ranges(TaggingOptions)["lr"] == (0.0, None, False)


@pytest.mark.parametrize("config,match", [
    ({"no_such_option": 1}, "unknown config keys ['no_such_option']"),
    ({"resume": True}, "cannot be set in a config file"),
    ({"num_layers": "two"}, "num_layers (--num-layers) must be an integer"),
])
def test_bad_config_files(config, match, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    with pytest.raises(RecipeError, match=match.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        parse_args(["--config", str(path), "--output-dir", str(tmp_path / "r")], TaggingOptions, "test")
