"""Sequence tagger: embedding (+ character features) -> encoder -> per-token scores -> softmax or CRF."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqbucket_plugin.encoders.base import EncoderOutput
from seqbucket_plugin.encoders.char import create_char_encoder
from seqbucket_plugin.encoders.errors import EncoderInputError
from seqbucket_plugin.encoders.registry import create_encoder
from seqbucket_plugin.heads._common import keyword_inputs, resolve_token_inputs, word_dropout
from seqbucket_plugin.heads.crf import CRF, IGNORE_INDEX

CHAR_KEYS = ("char_ids", "chars")


def pad_char_ids(rows: Any, num_tokens: int, pad_id: int = 0) -> torch.Tensor:
    """Nested lists ``rows[b][t] = [char ids]`` -> ``(B, num_tokens, C)`` right-padded with ``pad_id``."""
    longest = max((len(w) for r in rows for w in r), default=0)
    out = torch.full((len(rows), num_tokens, max(longest, 1)), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        if len(r) > num_tokens:
            raise EncoderInputError(f"row {b} has {len(r)} words of characters for {num_tokens} tokens")
        for t, w in enumerate(r):
            if len(w):
                out[b, t, : len(w)] = torch.as_tensor(list(w), dtype=torch.long)
    return out


class TaggerOutput(NamedTuple):
    emissions: torch.Tensor
    """``(B, T, num_tags)`` per-token scores in the input's row order."""
    loss: torch.Tensor | None
    """CRF: mean negative log-likelihood per non-empty sequence; softmax: mean token cross-entropy
    (labels -100 ignored). None without labels."""
    encoder_output: EncoderOutput


class SequenceTagger(nn.Module):
    """Token tagger (NER, POS...) with an optional character-level word encoder and a CRF.

    Args:
        vocab_size, num_tags: sizes.
        embedding_dim, hidden_size: word embedding size and encoder hidden size per direction.
        encoder: a registered encoder name or an encoder module.
        encoder_kwargs: extra keyword arguments for :func:`create_encoder`.
        char_encoder: None, ``"cnn"``, ``"bilstm"`` or a module mapping ``(B, T, C)`` character
            ids to ``(B, T, F)`` (with an ``output_size`` attribute).
        num_chars: character vocabulary size (for a named ``char_encoder``).
        char_kwargs: extra keyword arguments of the character encoder.
        decoder: ``"crf"`` or ``"softmax"``.
        dropout: dropout on the word features and on the token states.
        padding_idx: padding id of the tokens.
        word_dropout: training only, the probability that a word id is replaced by ``unk_idx``.
        unk_idx: the unknown-word id (``word_dropout`` needs it).
        embedding: an embedding module to use instead of a fresh ``nn.Embedding`` (e.g. from
            :func:`seqbucket_plugin.vectors.build_embedding`); its ``embedding_dim`` replaces
            ``embedding_dim``.

    ``forward`` also takes a batch's names (``model(**batch)``: ``input_ids=``,
    ``attention_mask=``, ``lengths=``, ``labels=``, ``char_ids=``; other columns are ignored).
    Character ids come from ``chars=`` or from a PackedBatch's ``extras["char_ids"]``
    (or ``extras["chars"]``). Labels are ``(B, T)`` padded with -100.
    """

    def __init__(
        self,
        vocab_size: int,
        num_tags: int,
        *,
        embedding_dim: int = 64,
        hidden_size: int = 128,
        encoder: str | nn.Module = "bilstm",
        encoder_kwargs: dict[str, Any] | None = None,
        char_encoder: str | nn.Module | None = None,
        num_chars: int | None = None,
        char_kwargs: dict[str, Any] | None = None,
        decoder: str = "crf",
        dropout: float = 0.0,
        padding_idx: int | None = 0,
        word_dropout: float = 0.0,
        unk_idx: int | None = None,
        embedding: nn.Module | None = None,
    ):
        super().__init__()
        self.word_dropout, self.unk_idx = float(word_dropout), unk_idx
        if decoder not in ("crf", "softmax"):
            raise EncoderInputError(f"decoder must be 'crf' or 'softmax', got {decoder!r}")
        self.padding_idx = padding_idx
        self.embedding = embedding if embedding is not None else nn.Embedding(
            vocab_size, embedding_dim, padding_idx=padding_idx)
        embedding_dim = getattr(self.embedding, "embedding_dim", embedding_dim)
        if isinstance(char_encoder, str):
            if num_chars is None:
                raise EncoderInputError("num_chars is required with a named char_encoder")
            char_encoder = create_char_encoder(char_encoder, num_chars, **(char_kwargs or {}))
        self.char_encoder = char_encoder
        in_size = embedding_dim + (char_encoder.output_size if char_encoder is not None else 0)
        if isinstance(encoder, str):
            encoder = create_encoder(encoder, input_size=in_size, hidden_size=hidden_size, **(encoder_kwargs or {}))
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(encoder.output_size, num_tags)
        self.crf = CRF(num_tags) if decoder == "crf" else None
        self.num_tags = num_tags

    def _emissions(self, inputs, lengths, chars, labels, strategy):
        ids, lengths, labels, extras = resolve_token_inputs(inputs, lengths, labels, self.padding_idx)
        feats = self.embedding(word_dropout(ids, self.word_dropout, self.unk_idx, self.padding_idx, self.training))
        if self.char_encoder is not None:
            if chars is None:
                chars = next((extras[k] for k in CHAR_KEYS if k in extras), None)
            if chars is None:
                raise EncoderInputError("this tagger has a character encoder: pass chars= (B, T, C) or "
                                        "put them in batch.extras['char_ids']")
            if not isinstance(chars, torch.Tensor):
                chars = pad_char_ids(chars, ids.shape[1])
            if tuple(chars.shape[:2]) != tuple(ids.shape):
                raise EncoderInputError(f"chars must be (B, T, C) with (B, T) = {tuple(ids.shape)}")
            feats = torch.cat([feats, self.char_encoder(chars.to(ids.device))], dim=-1)
        enc = self.encoder(self.dropout(feats), lengths, strategy=strategy)
        emissions = self.proj(self.dropout(enc.states))
        return emissions, lengths, labels, enc

    def forward(self, inputs: Any = None, lengths: Any = None, *, chars: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, strategy: str | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **columns: Any) -> TaggerOutput:
        inputs, lengths = keyword_inputs(inputs, input_ids, attention_mask, lengths)
        if chars is None:
            chars = next((columns[k] for k in CHAR_KEYS if k in columns), None)
        emissions, lengths, labels, enc = self._emissions(inputs, lengths, chars, labels, strategy)
        loss = None
        if labels is not None:
            labels = labels.to(emissions.device).long()
            if self.crf is not None:
                loss = self.crf(emissions, labels, lengths)
            else:
                labels = labels.masked_fill(~enc.mask, IGNORE_INDEX)
                loss = F.cross_entropy(emissions.reshape(-1, self.num_tags), labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX)
        return TaggerOutput(emissions, loss, enc)

    @torch.no_grad()
    def decode(self, inputs: Any, lengths: Any = None, *, chars: torch.Tensor | None = None,
               strategy: str | None = None, pad_value: int = IGNORE_INDEX) -> torch.Tensor:
        """``(B, T)`` predicted tags (Viterbi with a CRF, argmax otherwise), ``pad_value`` past lengths."""
        emissions, lengths, _, enc = self._emissions(inputs, lengths, chars, None, strategy)
        if self.crf is not None:
            return self.crf.decode(emissions, lengths, pad_value=pad_value)
        return emissions.argmax(-1).masked_fill(~enc.mask, pad_value)
