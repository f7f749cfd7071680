"""Recurrent encoders under ``torch.compile`` and ``torch.export``: the ``padded_static`` strategy.

While compiling or exporting, ``auto`` (and ``padded_exact``) run ``padded_static``: one fused
kernel call per layer over the padded batch, no data-dependent Python control flow. These
tests check that it is exact (each row equals the sequence run alone, every strategy agrees),
that inductor forward+backward and ``torch.export`` reproduce eager, and where shapes stay
dynamic. The compile tests are slow on a small CPU (PyTorch unrolls the recurrence over time
when it compiles an RNN for training), so they are marked ``slow`` (still part of the default run).
"""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

from seqbucket_plugin.encoders import EncoderInputError, RecurrentEncoder, create_encoder, resolve_lengths

D, H = 5, 4
NAMES = ["lstm", "bilstm", "gru", "bigru"]
LENGTHS = [7, 4, 1, 0]
# compiling an RNN for training unrolls it over time: a shorter batch (still a full-length row,
# a partial row, a length-1 row and an empty row) keeps the inductor tests to tens of seconds.
# B != T on purpose: dynamo gives equal sizes one symbol, so the specialised T would pin B too.
COMPILE_LENGTHS = [5, 3, 1, 0]
ATOL = 1e-5


def make(name: str, num_layers: int = 2, **kw):
    torch.manual_seed(0)
    return create_encoder(name, input_size=D, hidden_size=H, num_layers=num_layers, pooling="last+mean+max", **kw)


def batch(lengths, T=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths) if T is None else T
    return torch.randn(len(lengths), T, D, generator=g), torch.tensor(lengths)


def finals(out):
    return out.final if isinstance(out.final, tuple) else (out.final,)


def outputs(out):
    return [out.states, out.pooled, *finals(out)]


def fwd_bwd(fn, enc, x, lengths, x_grad=True):
    """Outputs, parameter gradients and input gradient of a loss touching every output."""
    enc.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(x_grad)
    out = fn(xg, lengths)
    loss = sum((o * torch.linspace(0.5, 1.5, o.numel()).view(o.shape)).pow(2).sum() for o in outputs(out))
    loss.backward()
    grads = [p.grad.clone() for p in enc.parameters()]
    return [o.detach() for o in outputs(out)], grads, xg.grad


def assert_all_close(a, b, atol=ATOL):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=atol, rtol=0)


def assert_rows_alone(enc, x, lengths, states, fins):
    """Each row equals the same (eager) encoder on that sequence alone, unpadded."""
    with torch.no_grad():
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(states[b, n:] == 0)
            if n == 0:
                assert all(torch.all(f[:, b] == 0) for f in fins)
                continue
            alone = enc(x[b : b + 1, :n], strategy="packed")
            torch.testing.assert_close(states[b, :n], alone.states[0], atol=ATOL, rtol=0)
            for f, g in zip(fins, finals(alone)):
                torch.testing.assert_close(f[:, b], g[:, 0], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- eager: the static plan is exact
def test_strategy_is_listed_and_chosen_when_compiling(monkeypatch):
    assert "padded_static" in RecurrentEncoder.strategies
    enc = make("bilstm")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert enc.resolve_strategy(None, cpu) == "padded_exact"
    assert enc.resolve_strategy("padded_static", cpu) == "padded_static"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert enc.resolve_strategy(None, cpu) == "padded_static"
    assert enc.resolve_strategy(None, cuda) == "padded_static"
    assert enc.resolve_strategy("padded_exact", cpu) == "padded_static"
    assert enc.resolve_strategy("packed", cpu) == "packed"  # an explicit choice is kept


def test_value_checks_are_skipped_only_while_tracing(monkeypatch):
    with pytest.raises(EncoderInputError):
        resolve_lengths(torch.tensor([4, 1]), None, 2, 3)
    with pytest.raises(EncoderInputError, match="holes"):
        resolve_lengths(None, torch.tensor([[True, False, True]]), 1, 3)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert resolve_lengths(torch.tensor([4, 1]), None, 2, 3).tolist() == [4, 1]
    with pytest.raises(EncoderInputError):  # shape checks still run
        resolve_lengths(torch.tensor([1]), None, 2, 3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_static_equals_other_strategies_and_rows_alone(name, num_layers):
    enc = make(name, num_layers).eval()
    for lengths, T in [(LENGTHS, 9), ([3, 0, 7, 5, 7, 1, 2, 9, 4], 11), ([6], 6), ([0, 0], 3), ([2, 2, 2], 2)]:
        x, lens = batch(lengths, T)
        with torch.no_grad():
            outs = {s: enc(x, lens, strategy=s) for s in ("padded_static", "padded_exact", "packed")}
        for s in ("padded_exact", "packed"):
            assert_all_close(outputs(outs["padded_static"]), outputs(outs[s]))
        assert_rows_alone(enc, x, lens, outs["padded_static"].states, finals(outs["padded_static"]))


@pytest.mark.parametrize("name", NAMES)
def test_static_gradients_equal_packed(name):
    enc = make(name).train()  # no dropout: deterministic
    x, lens = batch([3, 0, 7, 5, 7, 1, 2], 9)
    for x_grad in (True, False):
        a = fwd_bwd(lambda u, v: enc(u, v, strategy="padded_static"), enc, x, lens, x_grad)
        b = fwd_bwd(lambda u, v: enc(u, v, strategy="packed"), enc, x, lens, x_grad)
        assert_all_close(a[0], b[0])
        assert_all_close(a[1], b[1])
        if x_grad:
            torch.testing.assert_close(a[2], b[2], atol=ATOL, rtol=0)
            assert torch.all(a[2][1] == 0) and torch.all(a[2][0, 3:] == 0)  # no gradient into padding


@pytest.mark.parametrize("name", NAMES)
def test_static_float64_is_exact_to_rounding(name):
    enc = make(name).double().eval()
    x, lens = batch([3, 0, 7, 5, 7, 1, 2], 9)
    x = x.double()
    with torch.no_grad():
        a, b = enc(x, lens, strategy="padded_static"), enc(x, lens, strategy="packed")
    assert_all_close(outputs(a), outputs(b), atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_static_ignores_garbage_padding_and_large_weights(name):
    """NaN/inf in the padding never leaks; the frozen gates stay saturated for large weights."""
    enc = make(name).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.mul_(40)  # recurrent pre-activations in the hundreds
    x, lens = batch(LENGTHS, 9)
    ref = enc(x, lens, strategy="packed")
    x[1, 4:] = float("nan")
    x[2, 1:] = float("inf")
    x[3] = float("nan")
    with torch.no_grad():
        out = enc(x, lens, strategy="padded_static")
    assert_all_close(outputs(out), outputs(ref))


@pytest.mark.parametrize("name", NAMES)
def test_static_locked_dropout_matches_packed(name):
    """Locked (variational) dropouts draw the same masks for the same rows as the other strategies."""
    enc = make(name, dropout=0.3, input_dropout=0.2, output_dropout=0.2, weight_drop=0.3).train()
    x, lens = batch([3, 0, 7, 5, 7, 1, 2], 9)
    torch.manual_seed(5)
    a = enc(x, lens, strategy="padded_static")
    torch.manual_seed(5)
    b = enc(x, lens, strategy="packed")
    assert_all_close(outputs(a), outputs(b))


# ---------------------------------------------------------------- torch.compile (inductor)
@pytest.mark.slow
@pytest.mark.parametrize("name,num_layers", [("bilstm", 2), ("gru", 1)])
def test_inductor_forward_backward_matches_eager(name, num_layers):
    """Compiled (inductor, dynamic=True) forward+backward equals eager; a new batch size reuses it.

    Two of the four encoders (about a minute each on 2 cores): a 2-layer bidirectional LSTM (both
    directions, dropout between layers) and a GRU; the eager tests above cover all four."""
    torch._dynamo.reset()
    enc = make(name, num_layers=num_layers).train()
    x, lens = batch(COMPILE_LENGTHS)
    compiled = torch.compile(enc, backend="inductor", dynamic=True)
    got = fwd_bwd(compiled, enc, x, lens)
    for strategy in ("padded_exact", "packed"):
        want = fwd_bwd(lambda u, v, s=strategy: enc(u, v, strategy=s), enc, x, lens)
        for a, b in zip(got, want):
            assert_all_close(a, b) if isinstance(a, list) else torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert_rows_alone(enc, x, lens, got[0][0], got[0][2:])
    # another batch size, same padded length: no recompilation (the batch dimension is dynamic)
    x2, lens2 = batch([2, 5, 5, 0, 3, 1], seed=2)
    with torch.compiler.set_stance("fail_on_recompile"):
        got2 = fwd_bwd(compiled, enc, x2, lens2)
    want2 = fwd_bwd(lambda u, v: enc(u, v, strategy="packed"), enc, x2, lens2)
    for a, b in zip(got2, want2):
        assert_all_close(a, b) if isinstance(a, list) else torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_inductor_backward_to_weights_when_inputs_need_no_gradient():
    """Frozen inputs (no requires_grad) in training: PyTorch would pick an inference-only
    oneDNN lowering and crash in backward; the encoder selects the trainable one."""
    torch._dynamo.reset()
    enc = make("bilstm", num_layers=1).train()
    x, lens = batch([3, 1, 0], seed=3)
    got = fwd_bwd(torch.compile(enc, backend="inductor"), enc, x, lens, x_grad=False)
    want = fwd_bwd(lambda u, v: enc(u, v, strategy="packed"), enc, x, lens, x_grad=False)
    assert_all_close(got[0], want[0])
    assert_all_close(got[1], want[1])


@pytest.mark.slow
def test_inductor_lstm_inference_is_dynamic_in_batch_and_time():
    """LSTM inference compiles once for every (B, T) (PyTorch lowers it to one oneDNN layer)."""
    torch._dynamo.reset()
    enc = make("bilstm").eval()
    compiled = torch.compile(enc, backend="inductor", dynamic=True)
    with torch.no_grad():
        for i, (lengths, T) in enumerate([(LENGTHS, 7), ([3, 12, 0, 5, 5, 1], 13), ([2, 1], 4)]):
            x, lens = batch(lengths, T, seed=i)
            stance = torch.compiler.set_stance("fail_on_recompile") if i else torch.no_grad()
            with stance:
                got = compiled(x, lens)
            assert_all_close(outputs(got), outputs(enc(x, lens, strategy="packed")))


# ---------------------------------------------------------------- torch.export
@pytest.mark.parametrize("name", NAMES)
def test_export_matches_eager(name):
    """``torch.export`` of the eval-mode encoder, dynamic batch size, fixed padded length T.

    PyTorch's export unrolls the recurrence of ``aten.lstm``/``aten.gru`` over time (so does
    ``nn.LSTM``), which specialises T; since padding is handled exactly, any batch padded to
    the exported T gives exact results.
    """
    enc = make(name).eval()
    T = 9
    x, lens = batch(LENGTHS, T)
    B = Dim("B", min=1, max=1024)
    ep = torch.export.export(enc, (x, lens), dynamic_shapes=({0: B}, {0: B}))
    module = ep.module()
    for lengths, seed in [(LENGTHS, 1), ([9, 2, 0, 5, 5, 1], 2), ([3], 3)]:
        x2, lens2 = batch(lengths, T, seed)
        got = module(x2, lens2)
        with torch.no_grad():
            want = enc(x2, lens2, strategy="packed")
        assert_all_close(outputs(got), outputs(want))
        torch.testing.assert_close(got.lengths, lens2)
        assert torch.equal(got.mask, torch.arange(T).unsqueeze(0) < lens2.unsqueeze(1))
        assert_rows_alone(enc, x2, lens2, got.states, finals(got))
