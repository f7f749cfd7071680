"""Input handling shared by the heads: token ids + CPU lengths, from a PackedBatch or tensors."""

from __future__ import annotations

from typing import Any

import torch

from seqbucket_plugin.encoders.base import _is_packed_batch, resolve_lengths
from seqbucket_plugin.encoders.errors import EncoderInputError


def resolve_token_inputs(
    inputs: Any, lengths: Any, labels: Any, padding_idx: int | None
) -> tuple[torch.Tensor, torch.Tensor, Any, dict]:
    """``(input_ids (B, T), lengths (B,) CPU int64, labels or None, extras)``.

    ``inputs`` is a PackedBatch (anything with ``input_ids`` and ``lengths``; its ``labels`` and
    ``extras`` are used unless given explicitly) or a ``(B, T)`` LongTensor of ids. Without
    lengths, the lengths are taken from ``input_ids != padding_idx``, which must be a prefix mask.
    """
    extras: dict = {}
    if _is_packed_batch(inputs):
        if lengths is not None:
            raise EncoderInputError("a PackedBatch carries its own lengths; do not pass lengths")
        ids, lengths = inputs.input_ids, inputs.lengths
        if labels is None:
            labels = getattr(inputs, "labels", None)
        extras = dict(getattr(inputs, "extras", None) or {})
    elif isinstance(inputs, torch.Tensor):
        ids = inputs
    else:
        raise EncoderInputError(f"expected a PackedBatch or a (B, T) tensor of token ids, got {type(inputs).__name__}")
    if ids.dim() != 2 or ids.is_floating_point():
        raise EncoderInputError(f"token ids must be an integer (B, T) tensor, got {tuple(ids.shape)} {ids.dtype}")
    B, T = ids.shape
    mask = None
    if lengths is None:
        if padding_idx is None:
            lengths = None  # every row full length
        else:
            mask = ids != padding_idx
    return ids, resolve_lengths(lengths, mask, B, T), labels, extras


def word_dropout(ids: torch.Tensor, p: float, unk_idx: int | None, padding_idx: int | None,
                 training: bool) -> torch.Tensor:
    """Training only: each real token id becomes ``unk_idx`` with probability ``p``.

    The unknown-word vector then learns from words the model knows, so rare and unseen words at
    test time get a useful vector, and the model relies less on any single word. ``ids`` (B, T)
    stays on its device; padding is never replaced. A no-op when ``p`` is 0, not training, or
    there is no unknown id.
    """
    if not training or p <= 0 or unk_idx is None or ids.numel() == 0:
        return ids
    drop = torch.rand(ids.shape, device=ids.device) < p
    if padding_idx is not None:
        drop &= ids != padding_idx
    return ids.masked_fill(drop, unk_idx)


def keyword_inputs(inputs: Any, input_ids: Any, attention_mask: Any, lengths: Any) -> tuple[Any, Any]:
    """``(inputs, lengths)`` of a forward called positionally or with a batch's names
    (``model(**batch)``: ``input_ids=``, ``attention_mask=`` and/or ``lengths=``). An
    ``attention_mask`` gives the lengths when ``lengths`` is not given (a right-padding mask)."""
    if input_ids is not None:
        if inputs is not None:
            raise EncoderInputError("give the token ids once: positionally or as input_ids=")
        inputs = input_ids
    if inputs is None:
        raise EncoderInputError("no inputs: pass a PackedBatch, a (B, T) tensor of ids, or input_ids=")
    if lengths is None and attention_mask is not None and isinstance(inputs, torch.Tensor):
        mask = attention_mask.to("cpu", torch.bool)
        lengths = resolve_lengths(None, mask, *inputs.shape)
    return inputs, lengths
