"""Contracts that this project's pieces (and a user's own) must satisfy, shipped with the package.

* :func:`check_encoder` (and ``python -m seqbucket_plugin.testing check-encoder NAME``): the
  encoder contract every registered encoder passes, like scikit-learn's ``check_estimator``;
  :func:`encoder_checks` gives its checks one by one for a test suite.
* :func:`check_save_load_state`: the state contract of a ``torchdata.nodes`` node.

:func:`check_save_load_state` reproduces the checks of torchdata's own node test helper
(``test/nodes/utils.py: run_test_save_load_state``), with plain assertions so it runs
under pytest or anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchdata.nodes import BaseNode, Loader

__all__ = ["ENCODER_CHECKS", "EncoderContractError", "check_encoder", "check_save_load_state", "encoder_checks"]


def _default_equal(a: list[Any], b: list[Any]) -> bool:
    return a == b


def check_save_load_state(
    node: BaseNode,
    midpoint: int,
    equal: Callable[[list[Any], list[Any]], bool] = _default_equal,
) -> None:
    """Assert that ``node`` saves and restores its state exactly, as torchdata requires.

    The node is driven by a :class:`torchdata.nodes.Loader` over two epochs. Restoring the
    state taken after ``midpoint`` items must reproduce the rest of that epoch and then the
    following epoch; restoring the initial state must reproduce both epochs from the start;
    restoring an end-of-epoch state must give an empty epoch when the loader does not restart
    and the next epoch when it does.

    Args:
        node: the node under test (fresh; it will be reset).
        midpoint: how many items to take before saving mid-epoch; must be less than an epoch.
        equal: compares two lists of items (override for tensors or other non-``==`` types).

    Raises:
        AssertionError: naming the check that failed.
    """
    loader = Loader(node)
    initial_state = loader.state_dict()
    it = iter(loader)
    epoch0 = [next(it) for _ in range(midpoint)]
    mid_state_0 = loader.state_dict()
    epoch0.extend(it)
    end_state_0 = loader.state_dict()

    it = iter(loader)
    epoch1 = [next(it) for _ in range(midpoint)]
    mid_state_1 = loader.state_dict()
    epoch1.extend(it)

    loader.load_state_dict(mid_state_0)
    assert equal(list(loader), epoch0[midpoint:]), "restore at midpoint of epoch 0 differs"
    assert equal(list(loader), epoch1), "epoch 1 after a midpoint restore differs"

    loader.load_state_dict(mid_state_1)
    assert equal(list(loader), epoch1[midpoint:]), "restore at midpoint of epoch 1 differs"

    loader.load_state_dict(initial_state)
    assert equal(list(loader), epoch0), "restore of the initial state: epoch 0 differs"
    assert equal(list(loader), epoch1), "restore of the initial state: epoch 1 differs"

    no_restart = Loader(node, restart_on_stop_iteration=False)
    no_restart.load_state_dict(end_state_0)
    assert equal(list(no_restart), []), "restore at end of epoch 0 without restart is not empty"

    restart = Loader(node)
    restart.load_state_dict(end_state_0)
    assert equal(list(restart), epoch1), "restore at end of epoch 0 with restart differs from epoch 1"


# --------------------------------------------------------------------------------------
# the encoder contract
# --------------------------------------------------------------------------------------

_D, _H = 5, 4
_LENGTHS = [3, 0, 7, 5, 7, 1, 2, 9, 4]  # unsorted, a zero-length row, ties, a length-1 row
_T = 11  # more than the longest length: trailing all-padding columns
_ATOL = 1e-5
_POOLING = "last+mean+max+attention"


class EncoderContractError(AssertionError):
    """An encoder broke the contract; the message names the encoder, the check and what differed."""


def _resolve_factory(encoder: Any) -> tuple[str, Callable[..., Any]]:
    from seqbucket_plugin.encoders.registry import get_encoder_factory

    if isinstance(encoder, str):
        return encoder, get_encoder_factory(encoder)
    if not callable(encoder):
        raise TypeError(f"check_encoder takes a registered name or a factory, got {type(encoder).__name__}")
    return getattr(encoder, "__qualname__", repr(encoder)), encoder


def _finals(final: Any) -> tuple:
    if final is None:
        return ()
    return final if isinstance(final, tuple) else (final,)


def _inputs():
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(len(_LENGTHS), _T, _D, generator=g), torch.tensor(_LENGTHS)


def _close(a, b, what: str, atol: float = _ATOL) -> None:
    import torch

    try:
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    except AssertionError as err:
        raise AssertionError(f"{what}: {err}") from None


def _check_shapes_and_batch_invariance(make: Callable[[], Any]) -> None:
    """Each row equals the same encoder on that sequence alone, unpadded (states, pooled,
    finals), with zeros at padded positions and for empty rows; in every strategy."""
    import torch

    enc = make().eval()
    x, lengths = _inputs()
    for strategy in enc.strategies:
        with torch.no_grad():
            out = enc(x, lengths, strategy=strategy)
        assert tuple(out.states.shape) == (len(_LENGTHS), _T, enc.output_size), \
            f"[{strategy}] states have shape {tuple(out.states.shape)}, expected (B, T, output_size)"
        assert tuple(out.pooled.shape) == (len(_LENGTHS), enc.pooled_size), \
            f"[{strategy}] pooled has shape {tuple(out.pooled.shape)}, expected (B, pooled_size)"
        for b, n in enumerate(_LENGTHS):
            assert torch.all(out.states[b, n:] == 0), f"[{strategy}] row {b}: states are not zero past its length"
            if n == 0:
                assert torch.all(out.pooled[b] == 0), f"[{strategy}] row {b} is empty but its pooled vector is not zero"
                for f in _finals(out.final):
                    assert torch.all(f[:, b] == 0), f"[{strategy}] row {b} is empty but its final state is not zero"
                continue
            with torch.no_grad():
                alone = enc(x[b:b + 1, :n], strategy=strategy)
            _close(out.states[b, :n], alone.states[0], f"[{strategy}] row {b}: states differ from the row alone")
            _close(out.pooled[b], alone.pooled[0], f"[{strategy}] row {b}: pooled differs from the row alone")
            for f, g in zip(_finals(out.final), _finals(alone.final)):
                _close(f[:, b], g[:, 0], f"[{strategy}] row {b}: final state differs from the row alone")


def _check_strategies_agree(make: Callable[[], Any]) -> None:
    """Every strategy the encoder lists gives the same outputs."""
    enc = make().eval()
    x, lengths = _inputs()
    outs = [(s, enc(x, lengths, strategy=s)) for s in enc.strategies]
    first_name, first = outs[0]
    for name, o in outs[1:]:
        _close(o.states, first.states, f"states of {name!r} and {first_name!r} differ")
        _close(o.pooled, first.pooled, f"pooled of {name!r} and {first_name!r} differ")
        for f, g in zip(_finals(o.final), _finals(first.final)):
            _close(f, g, f"final states of {name!r} and {first_name!r} differ")


def _check_gradients(make: Callable[[], Any]) -> None:
    """Gradients reach every parameter, and none reach an empty row or padded positions."""
    import torch

    enc = make().train()
    x, lengths = _inputs()
    for strategy in enc.strategies:
        enc.zero_grad()
        xg = x.clone().requires_grad_(True)
        out = enc(xg, lengths, strategy=strategy)
        loss = out.states.pow(2).sum() + out.pooled.pow(2).sum()
        loss = loss + sum(f.pow(2).sum() for f in _finals(out.final))
        loss.backward()
        for pname, p in enc.named_parameters():
            if not p.requires_grad:
                continue
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"[{strategy}] {pname}: no finite gradient"
            assert p.grad.abs().sum() > 0, f"[{strategy}] {pname}: zero gradient"
        assert torch.all(xg.grad[1] == 0), f"[{strategy}] an empty row received a gradient"
        assert torch.all(xg.grad[0, 3:] == 0), f"[{strategy}] padded positions received a gradient"


def _check_state_dict_round_trip(make: Callable[[], Any]) -> None:
    """``state_dict`` saved with ``torch.save`` loads (``weights_only=True``) into a fresh
    encoder, which then gives identical outputs."""
    import io

    import torch

    enc = make().eval()
    buf = io.BytesIO()
    torch.save(enc.state_dict(), buf)
    torch.manual_seed(123)
    other = make(seed=123).eval()
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    x, lengths = _inputs()
    with torch.no_grad():
        _close(other(x, lengths).states, enc(x, lengths).states, "states after a state_dict round trip", 0)
        _close(other(x, lengths).pooled, enc(x, lengths).pooled, "pooled after a state_dict round trip", 0)


def _check_edge_cases(make: Callable[[], Any]) -> None:
    """One empty row, one row, all rows empty, a trailing empty row, no rows: right shapes,
    finite values, zeros for empty rows, and a backward pass."""
    import torch

    for lengths in ([0], [4], [0, 0, 0], [5, 0], []):
        enc = make().train()
        x = torch.randn(len(lengths), 6, _D, requires_grad=True)
        for strategy in enc.strategies:
            where = f"[{strategy}] lengths {lengths}"
            out = enc(x, torch.tensor(lengths, dtype=torch.long), strategy=strategy)
            assert tuple(out.states.shape) == (len(lengths), 6, enc.output_size), f"{where}: states shape"
            assert tuple(out.pooled.shape) == (len(lengths), enc.pooled_size), f"{where}: pooled shape"
            assert torch.isfinite(out.states).all() and torch.isfinite(out.pooled).all(), f"{where}: not finite"
            for b, n in enumerate(lengths):
                assert torch.all(out.states[b, n:] == 0), f"{where}: states not zero past the length"
                if n == 0:
                    assert torch.all(out.pooled[b] == 0), f"{where}: pooled of an empty row not zero"
            (out.states.sum() + out.pooled.sum()).backward()


def _check_short_inputs(make: Callable[[], Any]) -> None:
    """Zero time steps (``(B, 0, D)``) and a single time step: right shapes, zeros for empty rows
    (a convolution with a kernel larger than the input must still work)."""
    import torch

    enc = make().eval()
    with torch.no_grad():
        out = enc(torch.randn(3, 0, _D), torch.zeros(3, dtype=torch.long))
    assert tuple(out.states.shape) == (3, 0, enc.output_size), "zero time steps: states shape"
    assert tuple(out.pooled.shape) == (3, enc.pooled_size) and torch.all(out.pooled == 0), \
        "zero time steps: pooled must be (B, pooled_size) zeros"
    with torch.no_grad():
        out = enc(torch.randn(2, 1, _D), torch.tensor([1, 0]))
    assert tuple(out.states.shape) == (2, 1, enc.output_size), "one time step: states shape"


def _check_mask_holes_rejected(make: Callable[[], Any]) -> None:
    """A mask with holes or left padding raises ``EncoderInputError``."""
    import torch

    from seqbucket_plugin.encoders.errors import EncoderInputError

    enc = make()
    x = torch.randn(2, 4, _D)
    for mask in ([[True, False, True, False], [True, True, False, False]],
                 [[False, True, True, True], [True, True, False, False]]):
        try:
            enc(x, mask=torch.tensor(mask))
        except EncoderInputError:
            continue
        raise AssertionError(f"a mask with holes or left padding was accepted: {mask}")


def _check_input_forms_agree(make: Callable[[], Any]) -> None:
    """Lengths, a prefix mask, a list of lengths, a ``PackedSequence`` and a ``PackedBatch``
    (with ``embed=`` or ``extras['inputs_embeds']``) give the same outputs; the batch's
    ``unsorted_indices`` restore the caller's order."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence

    from seqbucket_plugin.datapipes.packing import collate_packed
    from seqbucket_plugin.encoders.errors import EncoderInputError

    enc = make().eval()
    x, lengths = _inputs()
    with torch.no_grad():
        ref = enc(x, lengths)
        _close(enc(x, mask=torch.arange(_T).unsqueeze(0) < lengths.unsqueeze(1)).states, ref.states,
               "states from a mask and from lengths differ", 0)
        _close(enc(x, _LENGTHS).pooled, ref.pooled, "pooled from a list of lengths differs", 0)
        keep = [i for i, n in enumerate(_LENGTHS) if n > 0]
        packed = pack_padded_sequence(x[keep], lengths[keep], batch_first=True, enforce_sorted=False)
        out = enc(packed)
        _close(out.states, ref.states[keep, :max(_LENGTHS)], "states from a PackedSequence differ")
        _close(out.pooled, ref.pooled[keep], "pooled from a PackedSequence differs")
        emb = nn.Embedding(20, _D)
        examples = [{"input_ids": [(i + j) % 19 + 1 for j in range(n)], "length": n, "label": 0}
                    for i, n in enumerate(_LENGTHS)]
        batch = collate_packed(examples)
        want = enc(emb(batch.input_ids), batch.lengths)
        _close(enc(batch, embed=emb).pooled, want.pooled, "pooled of a PackedBatch with embed= differs", 0)
        batch.extras["inputs_embeds"] = emb(batch.input_ids)
        _close(enc(batch).pooled, want.pooled, "pooled of a PackedBatch with inputs_embeds differs", 0)
        restored = want.pooled[batch.unsorted_indices]
        for i, n in enumerate(_LENGTHS):
            if n:
                ids = torch.tensor(examples[i]["input_ids"], dtype=torch.long).view(1, -1)
                _close(restored[i], enc(emb(ids)).pooled[0], f"example {i} after unsorted_indices")
    del batch.extras["inputs_embeds"]
    try:
        enc(batch)
    except EncoderInputError:
        return
    raise AssertionError("a PackedBatch without embed= or inputs_embeds was accepted")


def _check_bad_inputs_rejected(make: Callable[[], Any]) -> None:
    """Lengths longer than T, the wrong number of lengths, token ids instead of vectors and an
    unknown strategy raise ``EncoderInputError``."""
    import torch

    from seqbucket_plugin.encoders.errors import EncoderInputError

    enc = make()
    cases = {
        "lengths longer than T": lambda: enc(torch.randn(2, 3, _D), torch.tensor([4, 1])),
        "the wrong number of lengths": lambda: enc(torch.randn(2, 3, _D), torch.tensor([1])),
        "token ids instead of vectors": lambda: enc(torch.randint(0, 5, (2, 3)), torch.tensor([3, 1])),
        "an unknown strategy": lambda: enc(torch.randn(2, 3, _D), torch.tensor([1, 1]), strategy="nope"),
    }
    for what, call in cases.items():
        try:
            call()
        except EncoderInputError:
            continue
        raise AssertionError(f"{what} did not raise EncoderInputError")


def _check_protocol(make: Callable[[], Any]) -> None:
    """The module has the protocol's attributes: ``output_size``, ``pooled_size`` (ints) and
    ``strategies`` (a non-empty tuple of names); ``forward`` returns an ``EncoderOutput``."""
    import torch

    from seqbucket_plugin.encoders.base import EncoderOutput

    enc = make()
    for attr in ("output_size", "pooled_size"):
        value = getattr(enc, attr, None)
        assert isinstance(value, int) and value > 0, f"{attr} must be a positive int, got {value!r}"
    strategies = getattr(enc, "strategies", None)
    assert isinstance(strategies, tuple) and strategies, f"strategies must be a non-empty tuple, got {strategies!r}"
    out = enc(torch.randn(2, 3, _D), torch.tensor([3, 2]))
    assert isinstance(out, EncoderOutput), f"forward must return an EncoderOutput, got {type(out).__name__}"


ENCODER_CHECKS: dict[str, Callable[[Callable[..., Any]], None]] = {
    "protocol": _check_protocol,
    "batch_invariance": _check_shapes_and_batch_invariance,
    "strategies_agree": _check_strategies_agree,
    "gradients": _check_gradients,
    "state_dict_round_trip": _check_state_dict_round_trip,
    "edge_cases": _check_edge_cases,
    "short_inputs": _check_short_inputs,
    "mask_holes_rejected": _check_mask_holes_rejected,
    "input_forms_agree": _check_input_forms_agree,
    "bad_inputs_rejected": _check_bad_inputs_rejected,
}
"""Name -> check of the encoder contract; each takes a ``make(seed=0)`` returning a fresh encoder."""

# checks that only depend on the architecture, not on the constructor options
_ONCE = ("state_dict_round_trip", "edge_cases", "short_inputs", "mask_holes_rejected", "input_forms_agree",
         "bad_inputs_rejected")


def _configs_for(factory: Any, configs: Any) -> list[dict]:
    if configs is None:
        configs = getattr(factory, "contract_configs", None) or ({},)
    return [dict(c) for c in configs] or [{}]


def encoder_checks(encoder: str | Callable[..., Any], *, configs: Any = None,
                   pooling: str = _POOLING) -> list[tuple[str, Callable[[], None]]]:
    """The contract checks of an encoder as ``(id, check)`` pairs, for a test suite to
    parametrise over (as scikit-learn's ``parametrize_with_checks``)::

        @pytest.mark.parametrize("check", [c for _, c in encoder_checks("my-enc")],
                                 ids=[i for i, _ in encoder_checks("my-enc")])
        def test_contract(check):
            check()

    ``configs``: constructor options to check besides ``input_size``/``hidden_size``/``pooling``
    (default: the factory's ``contract_configs`` attribute when it has one, as the built-in
    recurrent encoders do with several layer counts; ``[{}]`` otherwise).
    """
    import torch

    name, factory = _resolve_factory(encoder)
    pairs = []
    for i, cfg in enumerate(_configs_for(factory, configs)):
        label = "-".join(f"{k}{v}" for k, v in cfg.items()) or "default"

        def make(seed: int = 0, cfg: dict = cfg) -> Any:
            torch.manual_seed(seed)
            return factory(input_size=_D, hidden_size=_H, pooling=pooling, **cfg)

        for check_name, check in ENCODER_CHECKS.items():
            if i and check_name in _ONCE:
                continue

            def run(check=check, make=make, check_name=check_name, label=label) -> None:
                try:
                    check(make)
                except EncoderContractError:
                    raise
                except AssertionError as err:
                    raise EncoderContractError(f"encoder {name!r} ({label}) fails {check_name}: {err}") from None
                except Exception as err:  # a crash inside the encoder fails the check too
                    raise EncoderContractError(f"encoder {name!r} ({label}) fails {check_name}: it raised "
                                               f"{type(err).__name__}: {err}") from err

            pairs.append((f"{name}-{label}-{check_name}", run))
    return pairs


def check_encoder(encoder: str | Callable[..., Any], *, configs: Any = None, pooling: str = _POOLING) -> None:
    """Check that an encoder honours the contract every built-in encoder passes, like
    scikit-learn's ``check_estimator``.

    ``encoder`` is a registered name (entry points included) or a factory (a class or function
    taking ``input_size``, ``hidden_size`` and ``pooling``). The checks (:data:`ENCODER_CHECKS`):
    the protocol's attributes; batch invariance (each row of a padded batch equals the sequence
    run alone, in every strategy); strategies agreeing; gradients reaching every parameter and
    no padded position; a ``state_dict`` round trip; empty rows, a batch of one, an all-empty and
    an empty batch; zero and one time steps; masks with holes rejected; lengths, masks,
    ``PackedSequence`` and ``PackedBatch`` inputs agreeing; bad inputs rejected. Inputs are small
    CPU tensors (``input_size=5``, ``hidden_size=4``); it takes seconds.

    Raises:
        EncoderContractError: (an ``AssertionError``) at the first failing check, naming the
            encoder, the configuration, the check and what differed (or what the encoder raised).
        UnknownEncoderError: ``encoder`` is a name nothing is registered under.
    """
    for _, check in encoder_checks(encoder, configs=configs, pooling=pooling):
        check()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m seqbucket_plugin.testing check-encoder NAME [--import MODULE]``: run
    :func:`check_encoder` and print one line per check; exit 0 when all pass, 1 when one fails, 2
    on a usage error (an unknown name, a module that fails to import)."""
    import argparse
    import importlib
    import sys

    parser = argparse.ArgumentParser(prog="python -m seqbucket_plugin.testing",
                                     description="Check an encoder against the seqbucket_plugin contract.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-encoder", help="run the encoder contract on a registered name or module:Factory")
    check.add_argument("name", help="a registered encoder name (entry points are read), or module:Factory")
    check.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import MODULE first (its @register_encoder decorators register encoders); repeatable")
    args = parser.parse_args(argv)
    from seqbucket_plugin.errors import SeqBucketError

    try:
        for module in args.imports:
            importlib.import_module(module)
        target: Any = args.name
        if ":" in args.name:
            module, _, attr = args.name.partition(":")
            target = getattr(importlib.import_module(module), attr)
        pairs = encoder_checks(target)
    except (ImportError, AttributeError, SeqBucketError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = 0
    for ident, run in pairs:
        try:
            run()
        except AssertionError as err:
            failed += 1
            print(f"FAIL {ident}: {err}")
            continue
        print(f"ok   {ident}")
    print(f"{len(pairs) - failed} of {len(pairs)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
