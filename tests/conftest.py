"""Shared fixtures: small generated data, and the location of the optional real data sets."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import settings
from torchdata.nodes import BaseNode

# Deterministic property tests: the same examples on every run (CI and local). Set
# HYPOTHESIS_PROFILE=explore to draw fresh random examples when hunting for bugs.
settings.register_profile("deterministic", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def load_recipe(name: str, owner: str) -> ModuleType:
    """A fresh module of ``recipes/<name>.py`` (the recipes are scripts, not a package); ``owner``
    keeps each test file's copy apart, so one file's monkeypatching never leaks into another."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}_{owner}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_data(name: str) -> Path:
    """The folder of a shared real data set, or skip the test with the reason."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"real data set {name!r} not found at ../shared/data/{name} (not part of a fresh clone)")
    return folder


class CountingSource(BaseNode):
    """A stream of ``n`` examples read in order, whose position ``i`` shows how far it was read
    (example ``i`` has ``i % 50`` tokens)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def reset(self, initial_state=None):
        super().reset(initial_state)
        self.i = 0 if initial_state is None else initial_state["i"]

    def next(self):
        if self.i >= self.n:
            raise StopIteration
        self.i += 1
        return {"input_ids": [1] * (self.i % 50), "length": self.i % 50, "id": self.i}

    def get_state(self):
        return {"i": self.i}


def make_examples(lengths, *, label_mod: int = 2) -> list[dict]:
    """Tokenized-looking examples: ids ``1..length``, the length, a label and an ``id``."""
    return [
        {"input_ids": list(range(1, int(n) + 1)), "length": int(n), "label": i % label_mod, "id": i}
        for i, n in enumerate(lengths)
    ]


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory) -> dict[str, str]:
    """Generated classification files (600 train, 80 dev, 80 test), once per test module."""
    from seqbucket_plugin.training import write_classification_data

    return write_classification_data(tmp_path_factory.mktemp("cls"), n_train=600, n_dev=80, n_test=80)


@pytest.fixture(scope="module")
def tag_data(tmp_path_factory) -> dict[str, str]:
    """Generated BIO tagging files (300 train, 40 dev, 40 test), once per test module."""
    from seqbucket_plugin.training import write_tagging_data

    return write_tagging_data(tmp_path_factory.mktemp("tag"), n_train=300, n_dev=40, n_test=40)


def recipe_files(data: dict[str, str]) -> list[str]:
    """``--train-file/--dev-file/--test-file`` arguments of generated data."""
    return ["--train-file", data["train"], "--dev-file", data["dev"], "--test-file", data["test"]]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
