"""Sequence classifier: embedding -> encoder -> pooling -> MLP (whole texts, or chunk by chunk
for truncated back-propagation through time)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqbucket_plugin.constants import IGNORE_INDEX
from seqbucket_plugin.encoders.base import EncoderOutput
from seqbucket_plugin.encoders.errors import EncoderInputError
from seqbucket_plugin.encoders.registry import create_encoder
from seqbucket_plugin.heads._common import keyword_inputs, resolve_token_inputs, word_dropout


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor
    """``(B, num_classes)`` in the input's row order (a PackedBatch's row order)."""
    loss: torch.Tensor | None
    """Mean cross-entropy over rows whose label is not -100, when labels were given."""
    encoder_output: EncoderOutput


class ChunkLogits(NamedTuple):
    """One chunk of :meth:`SequenceClassifier.chunked_forward`."""

    logits: torch.Tensor
    """``(rows, num_classes)``: the logits of the batch's leading ``rows`` rows from this chunk."""
    rows: int
    """The rows still running in this chunk (the batch is sorted by length, longest first)."""
    weight: float
    """``rows / B``: chunk losses (means over ``rows``) times their weights sum to a per-row mean."""


class SequenceClassifier(nn.Module):
    """Text classifier over variable-length token sequences.

    Args:
        vocab_size: number of token ids.
        num_classes: number of classes.
        embedding_dim: token embedding size (ignored when ``embedding`` is given).
        hidden_size: encoder hidden size per direction.
        encoder: a registered encoder name, or an encoder module (then ``hidden_size``,
            ``pooling`` and ``encoder_kwargs`` are not used).
        encoder_kwargs: extra keyword arguments for :func:`create_encoder` (``num_layers``,
            ``dropout``, ``weight_drop``, ``strategy``...).
        pooling: pooling of the encoder (``"last"``, ``"mean"``, ``"max"``, ``"attention"``, or
            ``+``-joined).
        mlp_hidden: hidden layer sizes of the MLP on the pooled vector.
        dropout: dropout before each MLP layer.
        padding_idx: the padding id (lengths are derived from it when not given).
        word_dropout: training only, the probability that a token id is replaced by ``unk_idx``.
        unk_idx: the unknown-word id (``word_dropout`` needs it).
        embedding: an embedding module to use instead of a fresh ``nn.Embedding``, e.g. one
            built from pretrained word vectors by :func:`seqbucket_plugin.vectors.build_embedding`;
            its ``embedding_dim`` replaces ``embedding_dim``.

    ``chunked_forward(batch, chunk)`` / ``chunked_logits(batch, chunk)`` run a recurrent encoder
    ``chunk`` tokens at a time, carrying its state (truncated BPTT).

    ``forward(batch)`` takes a PackedBatch (its ``labels`` give the loss), or
    ``forward(input_ids, lengths, labels=...)``, or a batch's names: ``model(**batch)``
    (``input_ids=``, ``attention_mask=``, ``lengths=``, ``labels=``; other batch columns are
    accepted and ignored). Outputs are in the input's row order.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        embedding_dim: int = 64,
        hidden_size: int = 128,
        encoder: str | nn.Module = "bilstm",
        encoder_kwargs: dict[str, Any] | None = None,
        pooling: str | Sequence[str] = "last+max",
        mlp_hidden: Sequence[int] = (),
        dropout: float = 0.0,
        padding_idx: int | None = 0,
        embedding: nn.Module | None = None,
        word_dropout: float = 0.0,
        unk_idx: int | None = None,
    ):
        super().__init__()
        self.padding_idx = padding_idx
        self.word_dropout, self.unk_idx = float(word_dropout), unk_idx
        self.embedding = embedding if embedding is not None else nn.Embedding(
            vocab_size, embedding_dim, padding_idx=padding_idx
        )
        emb_dim = getattr(self.embedding, "embedding_dim", embedding_dim)
        if isinstance(encoder, str):
            encoder = create_encoder(encoder, input_size=emb_dim, hidden_size=hidden_size, pooling=pooling,
                                     **(encoder_kwargs or {}))
        self.encoder = encoder
        layers: list[nn.Module] = []
        size = encoder.pooled_size
        for h in mlp_hidden:
            layers += [nn.Dropout(dropout), nn.Linear(size, h), nn.ReLU()]
            size = h
        layers += [nn.Dropout(dropout), nn.Linear(size, num_classes)]
        self.mlp = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, inputs: Any = None, lengths: Any = None, *, labels: torch.Tensor | None = None,
                strategy: str | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **columns: Any) -> ClassifierOutput:
        inputs, lengths = keyword_inputs(inputs, input_ids, attention_mask, lengths)
        ids, lengths, labels, _ = resolve_token_inputs(inputs, lengths, labels, self.padding_idx)
        ids = word_dropout(ids, self.word_dropout, self.unk_idx, self.padding_idx, self.training)
        enc = self.encoder(self.embedding(ids), lengths, strategy=strategy)
        logits = self.mlp(enc.pooled)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels.to(logits.device).long().view(-1), ignore_index=IGNORE_INDEX)
        return ClassifierOutput(logits, loss, enc)

    # ------------------------------------------------------------------ truncated BPTT
    def chunked_forward(self, batch: Any, chunk: int,
                        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                        ) -> Iterator[ChunkLogits]:
        """Yield the :class:`ChunkLogits` of each ``chunk``-token slice of ``batch`` in turn.

        ``batch``: a PackedBatch sorted by length (longest first), as the bucketing pipelines
        yield. Each chunk embeds its slice, runs the encoder's :meth:`encode_chunk` from the
        detached state the previous chunk left (forward directions only, see
        :meth:`~seqbucket_plugin.encoders.RecurrentEncoder.encode_chunk`), pools and applies
        the MLP, under ``autocast()``. Back-propagating each chunk's loss before the next is
        truncated BPTT: gradients never cross a cut. Word dropout is not applied.

        Raises:
            EncoderInputError: the encoder is not recurrent (has no ``encode_chunk``).
        """
        encoder = self.encoder
        if not hasattr(encoder, "encode_chunk"):
            raise EncoderInputError("truncated BPTT needs a recurrent encoder (lstm, bilstm, gru, bigru)")
        lengths = batch.lengths
        B, T = batch.input_ids.shape
        state = encoder.initial_state(B, batch.input_ids.device)
        for start in range(0, max(T, 1), chunk):
            chunk_len = (lengths - start).clamp(0, chunk)
            rows = int((chunk_len > 0).sum())
            if rows == 0:
                break
            running = tuple(t[:, :rows] for t in state) if isinstance(state, tuple) else state[:, :rows]
            with autocast():
                x = self.embedding(batch.input_ids[:rows, start:start + chunk])
                enc = encoder.encode_chunk(x, chunk_len[:rows], running)
                logits = self.mlp(enc.pooled)
            state = _carry(enc.final, state, rows)
            yield ChunkLogits(logits, rows, rows / B)

    def chunked_logits(self, batch: Any, chunk: int) -> torch.Tensor:
        """``(B, num_classes)``: each row's logits from its last chunk of :meth:`chunked_forward`
        (so from the state carried through all of its chunks).

        Raises:
            EncoderInputError: the encoder is not recurrent, or every text of the batch is empty.
        """
        B = batch.input_ids.shape[0]
        result = None
        for logits, rows, _ in self.chunked_forward(batch, chunk):
            if result is None:
                result = logits.new_zeros(B, logits.shape[-1])
            result = torch.cat([logits, result[rows:]], 0)  # rows that end later overwrite their entries
        if result is None:
            raise EncoderInputError("cannot classify a batch in which every text is empty")
        return result


def _carry(final: Any, state: Any, rows: int) -> Any:
    """The state entering the next chunk: the leading ``rows`` rows' new final state (detached,
    in the state's dtype) above the rows that have already ended."""
    if isinstance(state, tuple):
        return tuple(torch.cat([f.detach().to(s.dtype), s[:, rows:]], 1) for f, s in zip(final, state))
    return torch.cat([final.detach().to(state.dtype), state[:, rows:]], 1)
