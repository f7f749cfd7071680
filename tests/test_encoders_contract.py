"""Contract tests generated from ``list_encoders()``: every registered encoder must pass them.

A custom encoder is registered here (as a user would) so the contract covers third-party
encoders too.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from seqbucket_plugin.datapipes.packing import collate_packed
from seqbucket_plugin.encoders import (
    EncoderInputError,
    SequenceEncoder,
    create_encoder,
    list_encoders,
    register_encoder,
)

D, H = 5, 4
LENGTHS = [3, 0, 7, 5, 7, 1, 2, 9, 4]  # unsorted, a zero-length row, ties, a length-1 row
T = 11  # more than the longest length: trailing all-padding columns
ATOL = 1e-5


@register_encoder("test-causal-bag", override=True)
class CausalBag(SequenceEncoder):
    """A custom encoder: running mean of projected inputs (causal, so batch-invariant)."""

    def __init__(self, input_size: int, hidden_size: int, pooling="last"):
        super().__init__(hidden_size, 1, pooling)
        self.proj = nn.Linear(input_size, hidden_size)

    def encode(self, x, lengths, mask, strategy):
        h = torch.tanh(self.proj(x)) * mask.unsqueeze(-1)
        steps = torch.arange(1, x.size(1) + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        return h.cumsum(1) / steps * mask.unsqueeze(-1), None


NAMES = list_encoders()
POOLING = "last+mean+max+attention"


def make(name: str, **kw) -> SequenceEncoder:
    torch.manual_seed(0)
    return create_encoder(name, input_size=D, hidden_size=H, pooling=POOLING, **kw)


def configs(name: str) -> list[dict]:
    """Extra constructor configurations for the built-in recurrent encoders."""
    if name in ("lstm", "gru", "bilstm", "bigru"):
        return [{}, {"num_layers": 2}, {"num_layers": 3, "min_kernel_steps": 1}, {"num_layers": 2, "min_kernel_steps": 100}]
    return [{}]


CASES = [(n, c) for n in NAMES for c in configs(n)]
IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in c.items()) or 'default'}" for n, c in CASES]


def _finals(final):
    if final is None:
        return ()
    return final if isinstance(final, tuple) else (final,)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(len(LENGTHS), T, D, generator=g), torch.tensor(LENGTHS)


def test_custom_encoder_is_listed():
    assert "test-causal-bag" in NAMES
    assert {"lstm", "gru", "bilstm", "bigru"} <= set(NAMES)


@pytest.mark.parametrize("name,cfg", CASES, ids=IDS)
def test_batch_invariance_every_strategy(name, cfg):
    """Each row equals the same encoder on that sequence alone, unpadded (states, pooled, finals)."""
    enc = make(name, **cfg).eval()
    x, lengths = _inputs()
    for strategy in enc.strategies:
        with torch.no_grad():
            out = enc(x, lengths, strategy=strategy)
        assert out.states.shape == (len(LENGTHS), T, enc.output_size)
        assert out.pooled.shape == (len(LENGTHS), enc.pooled_size)
        for b, n in enumerate(LENGTHS):
            assert torch.all(out.states[b, n:] == 0), (strategy, b)
            if n == 0:
                assert torch.all(out.pooled[b] == 0)
                for f in _finals(out.final):
                    assert torch.all(f[:, b] == 0)
                continue
            with torch.no_grad():
                alone = enc(x[b : b + 1, :n], strategy=strategy)
            torch.testing.assert_close(out.states[b, :n], alone.states[0], atol=ATOL, rtol=0)
            torch.testing.assert_close(out.pooled[b], alone.pooled[0], atol=ATOL, rtol=0)
            for f, g in zip(_finals(out.final), _finals(alone.final)):
                torch.testing.assert_close(f[:, b], g[:, 0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name,cfg", CASES, ids=IDS)
def test_strategies_agree(name, cfg):
    enc = make(name, **cfg).eval()
    x, lengths = _inputs()
    outs = [enc(x, lengths, strategy=s) for s in enc.strategies]
    for o in outs[1:]:
        torch.testing.assert_close(o.states, outs[0].states, atol=ATOL, rtol=0)
        torch.testing.assert_close(o.pooled, outs[0].pooled, atol=ATOL, rtol=0)
        for f, g in zip(_finals(o.final), _finals(outs[0].final)):
            torch.testing.assert_close(f, g, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    enc = make(name, **({"num_layers": 2} if name in ("lstm", "gru", "bilstm", "bigru") else {})).train()
    x, lengths = _inputs()
    for strategy in enc.strategies:
        enc.zero_grad()
        xg = x.clone().requires_grad_(True)
        out = enc(xg, lengths, strategy=strategy)
        loss = out.states.pow(2).sum() + out.pooled.pow(2).sum()
        loss = loss + sum(f.pow(2).sum() for f in _finals(out.final))
        loss.backward()
        for pname, p in enc.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (strategy, pname)
            assert p.grad.abs().sum() > 0, (strategy, pname)
        assert torch.all(xg.grad[1] == 0)  # the zero-length row gets no gradient
        assert torch.all(xg.grad[0, 3:] == 0)  # nor do padded positions


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    enc = make(name).eval()
    buf = io.BytesIO()
    torch.save(enc.state_dict(), buf)
    torch.manual_seed(123)
    other = create_encoder(name, input_size=D, hidden_size=H, pooling=POOLING).eval()
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    x, lengths = _inputs()
    torch.testing.assert_close(other(x, lengths).states, enc(x, lengths).states, atol=0, rtol=0)
    torch.testing.assert_close(other(x, lengths).pooled, enc(x, lengths).pooled, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lengths", [[0], [4], [0, 0, 0], [5, 0], []], ids=["one-empty", "one", "all-empty", "tail-empty", "no-rows"])
def test_edge_cases(name, lengths):
    enc = make(name).train()
    x = torch.randn(len(lengths), 6, D, requires_grad=True)
    for strategy in enc.strategies:
        out = enc(x, torch.tensor(lengths, dtype=torch.long), strategy=strategy)
        assert out.states.shape == (len(lengths), 6, enc.output_size)
        assert out.pooled.shape == (len(lengths), enc.pooled_size)
        assert torch.isfinite(out.states).all() and torch.isfinite(out.pooled).all()
        for b, n in enumerate(lengths):
            assert torch.all(out.states[b, n:] == 0)
            if n == 0:
                assert torch.all(out.pooled[b] == 0)
        (out.states.sum() + out.pooled.sum()).backward()  # no crash


@pytest.mark.parametrize("name", NAMES)
def test_zero_time_steps(name):
    enc = make(name).eval()
    out = enc(torch.randn(3, 0, D), torch.zeros(3, dtype=torch.long))
    assert out.states.shape == (3, 0, enc.output_size)
    assert torch.all(out.pooled == 0)


@pytest.mark.parametrize("name", NAMES)
def test_mask_with_holes_is_rejected(name):
    enc = make(name)
    x = torch.randn(2, 4, D)
    mask = torch.tensor([[True, False, True, False], [True, True, False, False]])
    with pytest.raises(EncoderInputError, match="holes"):
        enc(x, mask=mask)
    left = torch.tensor([[False, True, True, True], [True, True, False, False]])
    with pytest.raises(EncoderInputError, match="holes"):
        enc(x, mask=left)


@pytest.mark.parametrize("name", NAMES)
def test_mask_lengths_packedsequence_and_packedbatch_agree(name):
    enc = make(name).eval()
    x, lengths = _inputs()
    ref = enc(x, lengths)
    by_mask = enc(x, mask=torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1))
    torch.testing.assert_close(by_mask.states, ref.states, atol=0, rtol=0)
    by_list = enc(x, LENGTHS)
    torch.testing.assert_close(by_list.pooled, ref.pooled, atol=0, rtol=0)

    # PackedSequence (no zero-length rows: PyTorch cannot pack them): original order restored
    keep = [i for i, n in enumerate(LENGTHS) if n > 0]
    packed = pack_padded_sequence(x[keep], lengths[keep], batch_first=True, enforce_sorted=False)
    out = enc(packed)
    Tm = max(LENGTHS)
    torch.testing.assert_close(out.states, ref.states[keep, :Tm], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.pooled, ref.pooled[keep], atol=ATOL, rtol=0)

    # PackedBatch: rows in the batch's (sorted) order; the features come from `embed`
    emb = nn.Embedding(20, D)
    examples = [{"input_ids": [(i + j) % 19 + 1 for j in range(n)], "length": n, "label": 0} for i, n in enumerate(LENGTHS)]
    batch = collate_packed(examples)
    with torch.no_grad():
        got = enc(batch, embed=emb)
        want = enc(emb(batch.input_ids), batch.lengths)
        torch.testing.assert_close(got.pooled, want.pooled, atol=0, rtol=0)
        batch.extras["inputs_embeds"] = emb(batch.input_ids)
        torch.testing.assert_close(enc(batch).pooled, want.pooled, atol=0, rtol=0)
        # back in the caller's order, row i is example i
        restored = want.pooled[batch.unsorted_indices]
        for i, n in enumerate(LENGTHS):
            ids = torch.tensor(examples[i]["input_ids"], dtype=torch.long).view(1, -1)
            if n:
                torch.testing.assert_close(restored[i], enc(emb(ids)).pooled[0], atol=ATOL, rtol=0)
    del batch.extras["inputs_embeds"]
    with pytest.raises(EncoderInputError, match="embed"):
        enc(batch)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_are_rejected(name):
    enc = make(name)
    with pytest.raises(EncoderInputError):
        enc(torch.randn(2, 3, D), torch.tensor([4, 1]))  # longer than T
    with pytest.raises(EncoderInputError):
        enc(torch.randn(2, 3, D), torch.tensor([1]))  # wrong number of lengths
    with pytest.raises(EncoderInputError):
        enc(torch.randint(0, 5, (2, 3)), torch.tensor([3, 1]))  # ids, not vectors
    with pytest.raises(EncoderInputError):
        enc(torch.randn(2, 3, D), torch.tensor([1, 1]), strategy="nope")
