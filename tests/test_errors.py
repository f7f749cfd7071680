"""One error hierarchy: every bad-input error is defined in seqbucket_plugin.errors, derives
from SeqBucketError (so it carries ``path``/``line``), and is importable from the top level."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import seqbucket_plugin
from seqbucket_plugin import errors

PACKAGE = Path(seqbucket_plugin.__file__).parent


def _defined_errors() -> list[type]:
    return [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
            if issubclass(obj, Exception) and obj.__module__ == errors.__name__]


def test_every_error_derives_from_seqbucket_error_and_is_exported():
    found = _defined_errors()
    assert len(found) >= 20
    for cls in found:
        assert issubclass(cls, errors.SeqBucketError), cls
        assert getattr(seqbucket_plugin, cls.__name__) is cls, f"{cls.__name__} is not exported at the top level"
        assert cls.__name__ in seqbucket_plugin.__all__


def test_no_error_class_is_defined_elsewhere_in_the_package():
    """A contract-test failure (testing.EncoderContractError) is an AssertionError, not bad input."""
    pattern = re.compile(r"^class (\w+(?:Error|Exception))\(", re.MULTILINE)
    elsewhere = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        names = [n for n in pattern.findall(path.read_text(encoding="utf-8")) if n != "EncoderContractError"]
        if names:
            elsewhere[str(path.relative_to(PACKAGE))] = names
    assert not elsewhere, elsewhere


def test_path_and_line_are_attributes_on_every_error():
    err = errors.DataFormatError("bad field", "data.csv", 7)
    assert (err.path, err.line) == ("data.csv", 7) and str(err) == "data.csv:7: bad field"
    plain = errors.RecipeError("--epochs must be >= 1, got 0")
    assert (plain.path, plain.line) == (None, None)
