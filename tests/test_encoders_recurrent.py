"""Built-in recurrent encoders: reference equivalence, initialisation, dropouts, strategies."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from seqbucket_plugin.encoders import CharBiLSTM, CharCNN, EncoderInputError, RecurrentEncoder, create_encoder

D, H = 5, 4
RNNS = ["lstm", "gru", "bilstm", "bigru"]


def _torch_rnn(name: str, num_layers: int) -> nn.RNNBase:
    cls = nn.LSTM if "lstm" in name else nn.GRU
    return cls(D, H, num_layers, batch_first=True, bidirectional=name.startswith("bi"))


@pytest.mark.parametrize("name", RNNS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_matches_torch_rnn_on_each_sequence(name, num_layers):
    enc = create_encoder(name, input_size=D, hidden_size=H, num_layers=num_layers).eval()
    ref = _torch_rnn(name, num_layers).eval()
    ref.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("pooler")})
    lengths = [6, 2, 0, 4, 6, 1]
    x = torch.randn(len(lengths), 8, D)
    out = enc(x, lengths)
    for b, n in enumerate(lengths):
        if n == 0:
            continue
        y, final = ref(x[b : b + 1, :n])
        torch.testing.assert_close(out.states[b, :n], y[0], atol=1e-5, rtol=0)
        finals = final if isinstance(final, tuple) else (final,)
        mine = out.final if isinstance(out.final, tuple) else (out.final,)
        for f, g in zip(mine, finals):
            torch.testing.assert_close(f[:, b], g[:, 0], atol=1e-5, rtol=0)
    # and a state dict of nn.LSTM/nn.GRU loads into the encoder
    other = create_encoder(name, input_size=D, hidden_size=H, num_layers=num_layers)
    other.load_state_dict(ref.state_dict(), strict=False)
    torch.testing.assert_close(other.eval()(x, lengths).states, out.states, atol=0, rtol=0)


def test_initialisation():
    enc = RecurrentEncoder(D, H, 2, mode="lstm", bidirectional=True, forget_bias=1.0)
    for layer in range(2):
        for sfx in ("", "_reverse"):
            b = getattr(enc, f"bias_ih_l{layer}{sfx}") + getattr(enc, f"bias_hh_l{layer}{sfx}")
            assert torch.all(b[H : 2 * H] == 1) and torch.all(b[:H] == 0) and torch.all(b[2 * H :] == 0)
            w = getattr(enc, f"weight_hh_l{layer}{sfx}").detach()
            for g in range(4):
                block = w[g * H : (g + 1) * H]
                torch.testing.assert_close(block @ block.t(), torch.eye(H), atol=1e-5, rtol=0)
    gru = RecurrentEncoder(D, H, mode="gru")
    assert torch.all(gru.bias_ih_l0 == 0)


@pytest.mark.parametrize("name", RNNS)
@pytest.mark.parametrize("variational", [True, False])
def test_dropouts_train_and_eval(name, variational):
    kw = dict(num_layers=2, dropout=0.3, input_dropout=0.2, output_dropout=0.2, weight_drop=0.4, variational=variational)
    enc = create_encoder(name, input_size=D, hidden_size=H, **kw)
    lengths = torch.tensor([5, 3, 0, 5])
    x = torch.randn(4, 5, D)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc.train()
    torch.manual_seed(3)
    a = enc(x, lengths, strategy="padded_exact")
    torch.manual_seed(3)
    b = enc(x, lengths, strategy="padded_exact")
    torch.testing.assert_close(a.states, b.states)  # reproducible under a seed
    if variational:  # locked masks are drawn identically by both strategies
        torch.manual_seed(3)
        c = enc(x, lengths, strategy="packed")
        torch.testing.assert_close(c.states, a.states, atol=1e-5, rtol=0)
    assert torch.all(a.states[:, :, :][2] == 0) and torch.all(a.states[1, 3:] == 0)
    for k, v in enc.state_dict().items():  # weight-drop never touches the parameters
        assert torch.equal(v, before[k]), k
    enc.eval()
    e1, e2 = enc(x, lengths), enc(x, lengths)
    torch.testing.assert_close(e1.states, e2.states, atol=0, rtol=0)
    assert not torch.allclose(e1.states, a.states)


def test_locked_dropout_is_shared_over_time():
    enc = RecurrentEncoder(D, H, output_dropout=0.5).train()
    x = torch.randn(3, 6, D)
    out = enc(x, [6, 6, 6]).states
    ref = enc.eval()(x, [6, 6, 6]).states
    dropped = (out == 0) & (ref != 0)
    # a dropped unit is dropped at every time step of its sequence
    assert torch.equal(dropped.any(1), dropped.all(1))


def test_auto_picks_padded_static_for_dense_batches_on_cpu():
    enc = RecurrentEncoder(D, H, bidirectional=True)
    x = torch.randn(4, 10, D)
    dense, sparse = torch.tensor([10, 9, 8, 8]), torch.tensor([10, 2, 1, 1])  # 88% and 35% real
    assert enc.choose_strategy(None, x, dense) == "padded_static"
    assert enc.choose_strategy(None, x, sparse) == "padded_exact"
    assert enc.choose_strategy("padded_exact", x, dense) == "padded_exact"  # an explicit choice is kept
    assert RecurrentEncoder(D, H, strategy="padded_exact").choose_strategy(None, x, dense) == "padded_exact"
    assert enc.choose_strategy(None, x[:0], dense[:0]) == "padded_exact"  # empty batch
    enc.static_min_density = 0.9
    assert enc.choose_strategy(None, x, dense) == "padded_exact"
    # both choices are exact: auto on a dense batch equals padded_exact
    enc.static_min_density = 0.75
    torch.testing.assert_close(enc(x, dense).states, enc(x, dense, strategy="padded_exact").states,
                               atol=1e-5, rtol=1e-5)


def test_strategy_choice_and_override():
    enc = RecurrentEncoder(D, H, bidirectional=True)
    assert enc.resolve_strategy(None, torch.device("cpu")) == "padded_exact"
    assert enc.resolve_strategy(None, torch.device("cuda")) == "packed"
    assert enc.resolve_strategy("packed", torch.device("cpu")) == "packed"
    assert RecurrentEncoder(D, H, strategy="packed").resolve_strategy(None, torch.device("cpu")) == "packed"
    with pytest.raises(EncoderInputError):
        RecurrentEncoder(D, H, strategy="fast")
    with pytest.raises(EncoderInputError):
        RecurrentEncoder(D, H, dropout=1.0)
    with pytest.raises(EncoderInputError):
        RecurrentEncoder(D, H, mode="rnn")
    with pytest.raises(EncoderInputError, match="input size"):
        enc(torch.randn(2, 3, D + 1), [3, 1])


def test_works_under_torch_no_grad_and_double():
    enc = RecurrentEncoder(D, H, 2, bidirectional=True).double().eval()
    x = torch.randn(3, 5, D, dtype=torch.float64)
    with torch.no_grad():
        a = enc(x, [5, 2, 4], strategy="padded_exact")
        b = enc(x, [5, 2, 4], strategy="packed")
    torch.testing.assert_close(a.states, b.states, atol=1e-10, rtol=0)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=7),
    name=st.sampled_from(RNNS),
    layers=st.integers(1, 2),
    k=st.integers(1, 6),
)
def test_random_length_mixes(lengths, name, layers, k):
    torch.manual_seed(0)
    enc = create_encoder(name, input_size=3, hidden_size=3, num_layers=layers, min_kernel_steps=k).eval()
    x = torch.randn(len(lengths), max(lengths) + 1, 3)
    with torch.no_grad():
        a = enc(x, lengths, strategy="padded_exact")
        b = enc(x, lengths, strategy="packed")
        torch.testing.assert_close(a.states, b.states, atol=1e-5, rtol=0)
        fa = a.final if isinstance(a.final, tuple) else (a.final,)
        fb = b.final if isinstance(b.final, tuple) else (b.final,)
        for f, g in zip(fa, fb):
            torch.testing.assert_close(f, g, atol=1e-5, rtol=0)
        for i, n in enumerate(lengths):
            if n:
                torch.testing.assert_close(enc(x[i : i + 1, :n]).states[0], a.states[i, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [CharCNN, CharBiLSTM])
def test_char_encoders(cls):
    torch.manual_seed(0)
    enc = cls(30).eval()
    chars = torch.tensor([[[3, 4, 5, 0], [7, 0, 0, 0], [0, 0, 0, 0]], [[9, 9, 9, 9], [0, 0, 0, 0], [0, 0, 0, 0]]])
    out = enc(chars)
    assert out.shape == (2, 3, enc.output_size)
    assert torch.all(out[0, 2] == 0) and torch.all(out[1, 1:] == 0)  # words without characters
    alone = enc(chars[:1, :1, :3])  # the same word without padding characters
    torch.testing.assert_close(out[0, 0], alone[0, 0], atol=1e-5, rtol=0)
    enc.train()
    enc(chars).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    with pytest.raises(EncoderInputError):
        enc(torch.randn(2, 3, 4))
