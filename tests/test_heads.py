"""Heads: classifier and tagger on PackedBatch and on tensors; training steps; decoding."""

from __future__ import annotations

import pytest
import torch

from seqbucket_plugin.datapipes.packing import collate_packed
from seqbucket_plugin.encoders import EncoderInputError, SequenceEncoder, create_encoder, list_encoders
from seqbucket_plugin.heads import SequenceClassifier, SequenceTagger, pad_char_ids

V = 30


def _examples(lengths, token_labels=False, chars=False):
    g = torch.Generator().manual_seed(0)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(1, V, (n,), generator=g).tolist()
        ex = {"input_ids": ids, "length": n, "label": [t % 3 for t in ids] if token_labels else i % 2}
        if chars:
            ex["char_ids"] = [[(t + k) % 9 + 1 for k in range(t % 4 + 1)] for t in ids]
        out.append(ex)
    return out


@pytest.mark.parametrize("encoder", ["lstm", "bigru", "bilstm"])
def test_classifier_packed_batch_trains(encoder):
    torch.manual_seed(0)
    model = SequenceClassifier(V, 2, embedding_dim=8, hidden_size=6, encoder=encoder, pooling="last+mean+max+attention",
                               mlp_hidden=(8,), dropout=0.1, encoder_kwargs={"num_layers": 2})
    batch = collate_packed(_examples([5, 3, 7, 1, 4, 6]))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        out = model(batch)
        assert out.logits.shape == (6, 2)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] * 0.5
    model.eval()
    # the same answer from tensors + lengths, and each row alone
    logits = model(batch.input_ids, batch.lengths).logits
    torch.testing.assert_close(logits, model(batch).logits)
    for b in range(6):
        n = int(batch.lengths[b])
        torch.testing.assert_close(model(batch.input_ids[b : b + 1, :n]).logits[0], logits[b], atol=1e-5, rtol=0)
    for strategy in ("packed", "padded_exact"):
        torch.testing.assert_close(model(batch, strategy=strategy).logits, logits, atol=1e-5, rtol=0)


def test_classifier_lengths_from_padding_and_errors():
    model = SequenceClassifier(V, 3, embedding_dim=8, hidden_size=6).eval()
    ids = torch.tensor([[4, 5, 6, 0], [7, 0, 0, 0]])
    torch.testing.assert_close(model(ids).logits, model(ids, [3, 1]).logits)
    with pytest.raises(EncoderInputError, match="holes"):
        model(torch.tensor([[4, 0, 6, 0]]))
    with pytest.raises(EncoderInputError):
        model([[1, 2]])
    out = model(ids, [3, 1], labels=torch.tensor([2, -100]))
    assert out.loss is not None and torch.isfinite(out.loss)


@pytest.mark.parametrize("decoder", ["crf", "softmax"])
@pytest.mark.parametrize("char_encoder", [None, "cnn", "bilstm"])
def test_tagger_trains_and_decodes(decoder, char_encoder):
    torch.manual_seed(0)
    model = SequenceTagger(V, 3, embedding_dim=8, hidden_size=8, decoder=decoder, char_encoder=char_encoder,
                           num_chars=12, char_kwargs={"char_dim": 4} if char_encoder else None)
    batch = collate_packed(_examples([5, 3, 7, 1, 4], token_labels=True, chars=True))
    assert batch.labels.shape == batch.input_ids.shape
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(25):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    assert out.loss.item() < first * 0.5
    model.eval()
    tags = model.decode(batch)
    mask = batch.mask
    assert torch.all(tags[~mask] == -100)
    accuracy = (tags[mask] == batch.labels[mask]).float().mean()
    assert accuracy > 0.9
    # a row alone gives the same tags
    chars = pad_char_ids(batch.extras["char_ids"], batch.input_ids.shape[1])
    n = int(batch.lengths[2])
    alone = model.decode(batch.input_ids[2:3, :n], [n], chars=chars[2:3, :n])
    assert alone[0].tolist() == tags[2, :n].tolist()


def test_tagger_needs_chars_and_zero_length_rows():
    model = SequenceTagger(V, 3, embedding_dim=8, hidden_size=8, char_encoder="cnn", num_chars=12)
    with pytest.raises(EncoderInputError, match="char"):
        model(torch.tensor([[1, 2]]), [2])
    plain = SequenceTagger(V, 3, embedding_dim=8, hidden_size=8)
    ids = torch.tensor([[1, 2, 3], [0, 0, 0]])
    labels = torch.tensor([[0, 1, 2], [-100, -100, -100]])
    out = plain(ids, [3, 0], labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert plain.decode(ids, [3, 0])[1].eq(-100).all()


@pytest.mark.parametrize("name", list_encoders())
def test_heads_accept_every_registered_encoder(name):
    """Each registered encoder under a classifier: logits of the right shape, a finite loss that
    reaches every parameter, and a row's result independent of the padding after it (and of the
    other rows of the batch)."""
    torch.manual_seed(0)
    model = SequenceClassifier(V, 2, embedding_dim=5, hidden_size=4, encoder=name, pooling="mean")
    ids = torch.randint(1, V, (3, 4))
    out = model(ids, [4, 2, 0], labels=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (3, 2) and torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters())  # the loss reaches the encoder
    model.eval()
    with torch.no_grad():
        padded = model(ids, [4, 2, 0]).logits
        noise = ids.clone()
        noise[1, 2:] = (ids[1, 2:] % (V - 1)) + 1  # other ids in row 1's padding
        alone = model(ids[1:2, :2], [2]).logits
        torch.testing.assert_close(model(noise, [4, 2, 0]).logits[1], padded[1])
        torch.testing.assert_close(alone[0], padded[1])


# ---------------------------------------------------------------------------- truncated BPTT
@pytest.mark.parametrize("encoder", ["lstm", "gru"])
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_forward_carries_the_state_across_chunks(encoder, chunk):
    """A forward encoder with "last" pooling sees the whole text through the carried state: the
    chunked logits equal the whole-text logits (to float rounding), whatever the chunk size."""
    torch.manual_seed(0)
    model = SequenceClassifier(V, 3, embedding_dim=6, hidden_size=5, encoder=encoder, pooling="last",
                               mlp_hidden=(4,), encoder_kwargs={"num_layers": 2}).eval()
    batch = collate_packed(_examples([9, 7, 7, 4, 1]))
    with torch.no_grad():
        whole = model(batch).logits
        chunks = list(model.chunked_forward(batch, chunk))
        torch.testing.assert_close(model.chunked_logits(batch, chunk), whole, atol=1e-5, rtol=1e-5)
    assert len(chunks) == -(-9 // chunk)
    assert [c.rows for c in chunks] == [int((batch.lengths > s).sum()) for s in range(0, 9, chunk)]
    assert all(c.logits.shape == (c.rows, 3) and c.weight == c.rows / 5 for c in chunks)


def test_chunked_forward_of_a_bidirectional_encoder_in_one_chunk_is_the_forward():
    torch.manual_seed(0)
    model = SequenceClassifier(V, 2, embedding_dim=6, hidden_size=5, encoder="bigru", pooling="last+mean").eval()
    batch = collate_packed(_examples([8, 5, 2]))
    with torch.no_grad():
        torch.testing.assert_close(model.chunked_logits(batch, 8), model(batch).logits, atol=1e-5, rtol=1e-5)


def test_chunked_forward_gradients_stop_at_the_cut():
    """Each chunk's loss reaches the embeddings of its own tokens only (the carried state is detached)."""
    torch.manual_seed(0)
    model = SequenceClassifier(V, 2, embedding_dim=6, hidden_size=5, encoder="lstm", pooling="last")
    batch = collate_packed(_examples([6]))
    first, second = model.chunked_forward(batch, 3)
    first.logits.sum().backward()
    seen = model.embedding.weight.grad.abs().sum(1) > 0
    assert set(seen.nonzero().flatten().tolist()) == set(batch.input_ids[0, :3].tolist())
    assert second.rows == 1 and torch.isfinite(second.logits).all()


class _Identity(SequenceEncoder):
    def __init__(self, size):
        super().__init__(size)

    def encode(self, x, lengths, mask, strategy):
        return x * mask.unsqueeze(-1), None


def test_chunked_forward_needs_a_recurrent_encoder_and_a_non_empty_text():
    model = SequenceClassifier(V, 2, embedding_dim=4, encoder=_Identity(4))
    with pytest.raises(EncoderInputError, match="truncated BPTT needs a recurrent encoder"):
        model.chunked_logits(collate_packed(_examples([3, 2])), 2)
    recurrent = SequenceClassifier(V, 2, embedding_dim=4, hidden_size=3, encoder="lstm")
    with pytest.raises(EncoderInputError, match="every text is empty"):
        recurrent.chunked_logits(collate_packed(_examples([0, 0])), 2)


def test_an_unknown_strategy_lists_the_encoders_own():
    with pytest.raises(EncoderInputError, match=r"unknown strategy 'fast'.*'auto', 'padded_exact', 'packed'"):
        create_encoder("lstm", input_size=4, hidden_size=3, strategy="fast")


@pytest.mark.parametrize("decoder,char_encoder", [("classifier", None), ("crf", "cnn"), ("softmax", "bilstm")])
def test_every_head_parameter_can_learn(decoder, char_encoder):
    """No parameter whose gradient is identically zero (such as a bias under a softmax's shift invariance)."""
    torch.manual_seed(0)
    if decoder == "classifier":
        model = SequenceClassifier(V, 3, embedding_dim=8, hidden_size=6, pooling="last+mean+max+attention",
                                   mlp_hidden=(8,), encoder_kwargs={"num_layers": 2})
        batch = collate_packed(_examples([5, 3, 7, 1, 4, 6]))
    else:
        model = SequenceTagger(V, 3, embedding_dim=8, hidden_size=8, decoder=decoder, char_encoder=char_encoder,
                               num_chars=12, encoder_kwargs={"num_layers": 2})
        batch = collate_packed(_examples([5, 3, 7, 1, 4], token_labels=True, chars=True))
    model(batch).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 1e-8, name


def test_attention_pooling_has_no_bias_and_old_state_dicts_load():
    model = SequenceClassifier(V, 2, embedding_dim=8, hidden_size=6, pooling="attention")
    state = model.state_dict()
    assert "encoder.pooler.attention.weight" in state and "encoder.pooler.attention.bias" not in state
    old = {**state, "encoder.pooler.attention.bias": torch.tensor([0.5])}
    fresh = SequenceClassifier(V, 2, embedding_dim=8, hidden_size=6, pooling="attention")
    with pytest.warns(UserWarning, match="attention.bias"):
        fresh.load_state_dict(old)  # strict: the stale key is dropped, not reported as unexpected
    ids = torch.randint(1, V, (3, 5))
    torch.testing.assert_close(fresh.eval()(ids, [5, 2, 4]).logits, model.eval()(ids, [5, 2, 4]).logits)
