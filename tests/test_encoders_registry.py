"""Encoder registry: names, aliases, overriding, wildcards, suggestions and entry points."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest

from seqbucket_plugin.encoders import (
    EncoderRegistrationError,
    RecurrentEncoder,
    UnknownEncoderError,
    create_encoder,
    get_encoder_factory,
    list_encoders,
    register_encoder,
    unregister_encoder,
)
from seqbucket_plugin.encoders import registry as reg
from seqbucket_plugin.errors import SeqBucketError


@pytest.fixture
def isolated_registry(monkeypatch):
    """Run a test on a copy of the registry, restored afterwards."""
    monkeypatch.setattr(reg, "_factories", dict(reg._factories))
    monkeypatch.setattr(reg, "_aliases", dict(reg._aliases))
    monkeypatch.setattr(reg, "_entry_points_loaded", reg._entry_points_loaded)
    yield reg


def _factory(input_size, hidden_size, **kw):
    return RecurrentEncoder(input_size, hidden_size, **kw)


def test_builtins_and_aliases():
    assert {"lstm", "gru", "bilstm", "bigru"} <= set(list_encoders())
    assert "blstm" in list_encoders(include_aliases=True)
    assert "blstm" not in list_encoders()
    enc = create_encoder("BLSTM", input_size=3, hidden_size=2)
    assert enc.bidirectional and enc.mode == "lstm"
    assert create_encoder("gru", input_size=3, hidden_size=2, num_layers=2).num_layers == 2


def test_wildcards():
    assert list_encoders("bi*") == [n for n in list_encoders() if n.startswith("bi")]
    assert set(list_encoders("*gru")) >= {"gru", "bigru"}
    assert list_encoders("?stm") == ["lstm"]
    assert list_encoders("nothing*") == []


def test_register_decorator_override_and_unregister(isolated_registry):
    @register_encoder("my-enc", aliases=("mine",))
    def my_enc(input_size, hidden_size, **kw):
        return _factory(input_size, hidden_size, **kw)

    assert "my-enc" in list_encoders() and get_encoder_factory("MINE") is my_enc
    with pytest.raises(EncoderRegistrationError, match="already registered"):
        register_encoder("my-enc", _factory)
    with pytest.raises(EncoderRegistrationError, match="already registered"):
        register_encoder("other", _factory, aliases=("lstm",))
    register_encoder("my-enc", _factory, override=True)
    assert get_encoder_factory("my-enc") is _factory
    assert get_encoder_factory("mine") is _factory  # the aliases name the replacement (issue 16)
    unregister_encoder("my-enc")
    assert "my-enc" not in list_encoders()
    with pytest.raises(EncoderRegistrationError):
        register_encoder("bad*name", _factory)
    with pytest.raises(EncoderRegistrationError):
        register_encoder("notcallable", 42)


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownEncoderError) as info:
        create_encoder("bilstn", input_size=3, hidden_size=2)
    err = info.value
    assert isinstance(err, SeqBucketError) and isinstance(err, KeyError)
    assert "bilstm" in err.suggestions and "did you mean 'bilstm'" in str(err)
    with pytest.raises(UnknownEncoderError):
        unregister_encoder("no-such-encoder")


class _EP:
    def __init__(self, name, obj=None, exc=None):
        self.name, self.value, self._obj, self._exc = name, f"plugin:{name}", obj, exc

    def load(self):
        if self._exc:
            raise self._exc
        obj = self._obj
        return obj() if getattr(obj, "__name__", "") == "<lambda>" else obj


def test_entry_points_are_discovered_lazily(isolated_registry, monkeypatch):
    calls = []
    module = types.ModuleType("fake_plugin_module")

    def import_module():  # an entry point naming a module whose decorators register
        register_encoder("from-module", _factory)
        return module

    eps = [
        _EP("plugin-factory", _factory),
        _EP("module-plugin", lambda: import_module()),
        _EP("broken", exc=ImportError("missing dependency")),
        _EP("lstm", _factory),  # collides with a built-in: skipped with a warning
    ]

    def fake_entry_points(group=None):
        calls.append(group)
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(reg, "_entry_points_loaded", False)
    monkeypatch.setitem(sys.modules, "fake_plugin_module", module)
    assert calls == []  # nothing read at import or registration time
    with pytest.warns(UserWarning) as warned:
        names = list_encoders()
    assert calls == ["seqbucket_plugin.encoders"]
    assert {"plugin-factory", "from-module"} <= set(names)
    assert get_encoder_factory("lstm") is not _factory
    messages = " ".join(str(w.message) for w in warned)
    assert "broken" in messages and "lstm" in messages
    list_encoders()
    assert calls == ["seqbucket_plugin.encoders"]  # read once
    enc = create_encoder("plugin-factory", input_size=3, hidden_size=2)
    assert isinstance(enc, RecurrentEncoder)
