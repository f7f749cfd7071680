"""Name -> factory registry of sequence encoders, with lazy entry-point discovery.

A *factory* is any callable (usually a :class:`~seqbucket_plugin.encoders.SequenceEncoder`
subclass) that accepts at least the keyword arguments ``input_size`` and ``hidden_size`` (and,
for encoders that pool, ``pooling``) and returns an ``nn.Module`` honouring the encoder contract.

Third-party packages register encoders through the entry-point group
``seqbucket_plugin.encoders``. The group is read lazily, the first time a name is looked up or
the registry is listed. An entry point may point at:

* a factory (class or function): it is registered under the entry point's name;
* a module (or any other object): importing it is enough, its ``@register_encoder``
  decorators do the registering.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import inspect
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from seqbucket_plugin.encoders.errors import EncoderOptionError, EncoderRegistrationError, UnknownEncoderError

ENTRY_POINT_GROUP = "seqbucket_plugin.encoders"

F = TypeVar("F", bound=Callable[..., Any])

_factories: dict[str, Callable[..., Any]] = {}  # canonical name -> factory
_aliases: dict[str, str] = {}  # alias -> canonical name
_lock = threading.RLock()
_entry_points_loaded = False


def _normalize(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise EncoderRegistrationError(f"an encoder name must be a non-empty string, got {name!r}")
    if any(c in name for c in "*?[]"):
        raise EncoderRegistrationError(f"an encoder name may not contain wildcard characters: {name!r}")
    return name.strip().lower()


def _remove(canonical: str) -> None:
    _factories.pop(canonical, None)
    for alias in [a for a, c in _aliases.items() if c == canonical]:
        del _aliases[alias]


PROTOCOL_ATTRIBUTES = ("output_size", "pooled_size")
"""What an encoder module must have besides ``forward`` (the heads read them)."""


def _declares(cls: type, attribute: str) -> bool:
    return any(attribute in vars(k) or attribute in getattr(k, "__annotations__", {}) for k in cls.__mro__)


def check_factory(name: str, factory: Any) -> None:
    """What can be checked of a factory before it is called: callable; a class must be an
    ``nn.Module`` subclass that derives from :class:`SequenceEncoder` or declares the protocol's
    attributes (``output_size``, ``pooled_size``: class attributes, properties or annotations);
    a function must accept ``input_size`` and ``hidden_size`` (or ``**kwargs``).

    Raises:
        EncoderRegistrationError: naming what is missing and how to fix it.
    """
    if not callable(factory):
        raise EncoderRegistrationError(f"the factory registered as {name!r} is not callable: {factory!r}")
    if isinstance(factory, type):
        from torch import nn

        from seqbucket_plugin.encoders.base import SequenceEncoder

        if not issubclass(factory, nn.Module):
            raise EncoderRegistrationError(f"{name!r}: {factory.__qualname__} is not an nn.Module; an encoder "
                                           "class derives from seqbucket_plugin.encoders.SequenceEncoder")
        if not issubclass(factory, SequenceEncoder):
            missing = [a for a in PROTOCOL_ATTRIBUTES if not _declares(factory, a)]
            if missing:
                raise EncoderRegistrationError(
                    f"{name!r}: {factory.__qualname__} is an nn.Module but not a SequenceEncoder and does not "
                    f"declare {missing}, which the heads read; derive from "
                    "seqbucket_plugin.encoders.SequenceEncoder (it provides them, the input handling and the "
                    "pooling), or declare them (e.g. the annotations 'output_size: int' and 'pooled_size: int' "
                    "set in __init__) and return an EncoderOutput from forward")
    accepted = accepted_options(factory)
    if accepted is not None:
        lacking = [k for k in ("input_size", "hidden_size") if k not in accepted]
        if lacking:
            raise EncoderRegistrationError(f"{name!r}: the factory does not accept {lacking}; the heads and the "
                                           "contract pass input_size= and hidden_size=")


def accepted_options(factory_or_name: Any) -> frozenset[str] | None:
    """The keyword arguments a factory (or the one registered under a name) accepts, or None when
    it takes ``**kwargs`` (or its signature cannot be read)."""
    factory = get_encoder_factory(factory_or_name) if isinstance(factory_or_name, str) else factory_or_name
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = set()
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
    return frozenset(names)


def supported_options(name: str, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split ``options`` into those the encoder registered as ``name`` accepts and the names of
    the others (every option is accepted by a factory taking ``**kwargs``)."""
    accepted = accepted_options(name)
    if accepted is None:
        return dict(options), []
    return {k: v for k, v in options.items() if k in accepted}, [k for k in options if k not in accepted]


def _add(name: str, factory: Callable[..., Any], aliases: Iterable[str], override: bool) -> None:
    check_factory(name, factory)
    canonical = _normalize(name)
    alias_names = [_normalize(a) for a in aliases]
    with _lock:
        for n in [canonical, *alias_names]:
            taken = n in _factories or n in _aliases
            if taken and not override:
                owner = _aliases.get(n, n)
                raise EncoderRegistrationError(
                    f"encoder name {n!r} is already registered (by {owner!r}); "
                    "pass override=True to replace it"
                )
        # replacing a factory keeps the aliases it had (they name the same encoder); a name given
        # here that was another encoder's alias now points here
        kept = [a for a, c in _aliases.items() if c == canonical]
        for n in [canonical, *alias_names]:
            if n in _aliases:
                del _aliases[n]
            if n in _factories:
                _remove(n)
        _factories[canonical] = factory
        for a in [*kept, *alias_names]:
            if a != canonical and a not in _factories:
                _aliases[a] = canonical


def register_encoder(
    name: str,
    factory: Callable[..., Any] | None = None,
    *,
    aliases: Iterable[str] = (),
    override: bool = False,
) -> Any:
    """Register an encoder factory under ``name`` (case-insensitive) and optional ``aliases``.

    Use as a decorator (``@register_encoder("mylstm", aliases=("my-lstm",))``) or call it
    directly with the factory (``register_encoder("mylstm", MyLSTM)``).

    Raises:
        EncoderRegistrationError: the name or an alias is taken and ``override`` is False.
    """
    if factory is not None:
        _add(name, factory, aliases, override)
        return factory

    def decorator(obj: F) -> F:
        _add(name, obj, aliases, override)
        return obj

    return decorator


def unregister_encoder(name: str) -> None:
    """Remove an encoder (given by its name or one of its aliases) and its aliases."""
    key = _normalize(name)
    with _lock:
        canonical = _aliases.get(key, key)
        if canonical not in _factories:
            raise _unknown(key)
        _remove(canonical)


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True  # set first: a plugin module may look names up while imported
        try:
            eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        except Exception as exc:  # pragma: no cover - broken environment metadata
            warnings.warn(f"could not read the {ENTRY_POINT_GROUP!r} entry points: {exc}", stacklevel=3)
            return
        for ep in sorted(eps, key=lambda e: e.name):
            try:
                obj = ep.load()
            except Exception as exc:
                warnings.warn(
                    f"encoder plugin {ep.name!r} ({ep.value}) failed to load and is skipped: {exc!r}",
                    stacklevel=3,
                )
                continue
            if isinstance(obj, type(importlib)):  # a module: its decorators registered everything
                continue
            name = ep.name.strip().lower()
            if name in _factories and _factories[name] is obj:
                continue  # registered by its own decorator while importing
            if not callable(obj):
                warnings.warn(f"encoder plugin {ep.name!r} points at a non-callable {obj!r}; skipped", stacklevel=3)
                continue
            try:
                _add(name, obj, (), override=False)
            except EncoderRegistrationError as exc:
                warnings.warn(f"encoder plugin {ep.name!r} is skipped: {exc}", stacklevel=3)


def _unknown(key: str) -> UnknownEncoderError:
    names = sorted([*_factories, *_aliases])
    return UnknownEncoderError(key, difflib.get_close_matches(key, names, n=3, cutoff=0.5), sorted(_factories))


def get_encoder_factory(name: str) -> Callable[..., Any]:
    """The factory registered under ``name`` or one of its aliases.

    Raises:
        UnknownEncoderError: nothing is registered under that name (the closest names are suggested).
    """
    _load_entry_points()
    key = name.strip().lower() if isinstance(name, str) else name
    with _lock:
        canonical = _aliases.get(key, key)
        if canonical not in _factories:
            raise _unknown(str(key))
        return _factories[canonical]


def create_encoder(name: str, **kwargs: Any) -> Any:
    """Build the encoder registered as ``name`` with ``kwargs`` (``input_size``, ``hidden_size``...).

    Raises:
        UnknownEncoderError: nothing is registered as ``name``.
        EncoderOptionError: the factory does not accept one of ``kwargs`` (named, with the options
            it accepts).
        EncoderRegistrationError: the factory returned something without the protocol's
            attributes (``output_size``, ``pooled_size``).
    """
    factory = get_encoder_factory(name)
    _, unknown = supported_options(name, kwargs)
    if unknown:
        accepted = sorted(accepted_options(factory) or ())
        raise EncoderOptionError(f"encoder {name!r} does not take {unknown}; its factory accepts {accepted}")
    encoder = factory(**kwargs)
    missing = [a for a in PROTOCOL_ATTRIBUTES if not hasattr(encoder, a)]
    if missing:
        raise EncoderRegistrationError(f"encoder {name!r}: its factory returned a {type(encoder).__name__} without "
                                       f"{missing}; derive from seqbucket_plugin.encoders.SequenceEncoder")
    return encoder


def list_encoders(pattern: str = "*", *, include_aliases: bool = False) -> list[str]:
    """Sorted registered names matching a shell-style wildcard ``pattern`` (case-insensitive)."""
    _load_entry_points()
    pat = pattern.lower()
    with _lock:
        names = list(_factories) + (list(_aliases) if include_aliases else [])
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pat))


def canonical_encoder_name(name: str) -> str:
    """The canonical name for ``name`` (resolving aliases)."""
    get_encoder_factory(name)
    key = name.strip().lower()
    return _aliases.get(key, key)
