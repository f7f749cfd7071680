"""The encoder contract: inputs, outputs and the :class:`SequenceEncoder` base class.

Every encoder's ``forward`` accepts

* padded inputs ``(B, T, D)`` with ``lengths (B,)`` (preferably a CPU tensor or a list; CUDA
  lengths cost one device-to-host copy) or a ``mask (B, T)`` that must be a right-padding prefix
  mask (a mask with holes is rejected); with neither, every row is taken as full length;
* a :class:`torch.nn.utils.rnn.PackedSequence`;
* a ``PackedBatch`` (or anything with ``input_ids`` and ``lengths`` attributes): the encoder
  works on vectors, so the features are ``embed(batch.input_ids)`` when an ``embed`` module is
  passed, else ``batch.extras["inputs_embeds"]``. The heads embed (and add character features)
  themselves, then call ``encoder(features, batch.lengths)``.

and returns an :class:`EncoderOutput`: token states padded back to the input's length and row
order (zeros at padded positions), a pooled vector per sequence and the final states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from seqbucket_plugin.encoders.errors import EncoderInputError
from seqbucket_plugin.encoders.pooling import Pooler


class EncoderOutput(NamedTuple):
    """What every encoder returns (a NamedTuple, so it is a pytree for compile/export)."""

    states: torch.Tensor
    """``(B, T, output_size)`` token states in the input's row order; zeros at padded positions."""
    pooled: torch.Tensor
    """``(B, pooled_size)`` one vector per sequence (zeros for a zero-length row)."""
    final: Any
    """Final states at each sequence's true end, ``(num_layers * num_directions, B, H)`` like
    ``nn.LSTM``/``nn.GRU`` (a ``(h_n, c_n)`` tuple for LSTMs), in the input's row order; None if
    the encoder has no recurrent state."""
    lengths: torch.Tensor
    """``(B,)`` int64 lengths, on the CPU."""
    mask: torch.Tensor
    """``(B, T)`` bool, True at real tokens, on the states' device."""


def _is_packed_batch(obj: Any) -> bool:
    return not isinstance(obj, torch.Tensor) and hasattr(obj, "input_ids") and hasattr(obj, "lengths")


def to_device_index(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a CPU index/mask tensor to ``device`` without a host-device synchronisation."""
    if device.type == "cpu":
        return t
    if device.type == "cuda" and not torch.compiler.is_compiling():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def prefix_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """``(B, T)`` bool CPU mask, True for ``t < lengths[b]``."""
    return torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)


def resolve_lengths(
    lengths: torch.Tensor | Sequence[int] | None,
    mask: torch.Tensor | None,
    batch_size: int,
    T: int,
) -> torch.Tensor:
    """Validated ``(B,)`` int64 CPU lengths from ``lengths`` or a prefix ``mask`` (or all ``T``).

    Under ``torch.compile``/``torch.export`` (:func:`torch.compiler.is_compiling`) only the
    checks on shapes and dtypes run: the checks on values (lengths in ``[0, T]``, a mask without
    holes, mask and lengths agreeing) would be data-dependent control flow, so they are skipped
    there; validate inputs before a compiled or exported encoder if they are untrusted.
    """
    tracing = torch.compiler.is_compiling()
    if mask is not None:
        if mask.dim() != 2 or tuple(mask.shape) != (batch_size, T):
            raise EncoderInputError(f"mask must have shape (B, T) = {(batch_size, T)}, got {tuple(mask.shape)}")
        mask_cpu = mask.detach().to("cpu", torch.bool)
        from_mask = mask_cpu.sum(1)
        if not tracing and not torch.equal(mask_cpu, prefix_mask(from_mask, T)):
            bad = (mask_cpu != prefix_mask(from_mask, T)).any(1).nonzero().flatten()[:5].tolist()
            raise EncoderInputError(
                "mask has holes (or left padding) in rows "
                f"{bad}: real tokens must be a prefix of each row (right padding only)"
            )
        if lengths is None:
            return from_mask.long()
    if lengths is None:
        return torch.full((batch_size,), T, dtype=torch.long)
    if isinstance(lengths, torch.Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise EncoderInputError(f"lengths must be integers, got dtype {lengths.dtype}")
        lengths = lengths.detach().to("cpu", torch.long)  # no-op (no sync) for CPU lengths
    else:
        lengths = torch.as_tensor(list(lengths), dtype=torch.long)
    lengths = lengths.reshape(-1) if lengths.dim() == 0 or lengths.dim() == 1 else lengths
    if lengths.dim() != 1 or lengths.numel() != batch_size:
        raise EncoderInputError(f"lengths must have shape ({batch_size},), got {tuple(lengths.shape)}")
    if batch_size and not tracing and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise EncoderInputError(f"lengths must lie in [0, {T}], got min {int(lengths.min())} max {int(lengths.max())}")
    if mask is not None and not tracing and not torch.equal(from_mask.long(), lengths):
        raise EncoderInputError("mask and lengths disagree")
    return lengths


def resolve_inputs(
    inputs: Any,
    lengths: Any = None,
    mask: torch.Tensor | None = None,
    embed: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise any accepted input to ``(x (B, T, D) padded, lengths (B,) int64 CPU)``."""
    if isinstance(inputs, PackedSequence):
        if lengths is not None or mask is not None:
            raise EncoderInputError("a PackedSequence carries its own lengths; do not pass lengths or mask")
        x, lens = pad_packed_sequence(inputs, batch_first=True)
        return x, lens.to(torch.long)
    if _is_packed_batch(inputs):
        if lengths is not None:
            raise EncoderInputError("a PackedBatch carries its own lengths; do not pass lengths")
        batch = inputs
        if embed is not None:
            x = embed(batch.input_ids)
        else:
            extras = getattr(batch, "extras", None) or {}
            x = extras.get("inputs_embeds")
            if x is None:
                raise EncoderInputError(
                    "an encoder works on vectors: pass embed=<embedding module> with a PackedBatch, "
                    "put the vectors in batch.extras['inputs_embeds'], or call "
                    "encoder(embedded, batch.lengths) (the heads do this for you)"
                )
        lengths = batch.lengths
        inputs = x
    if not isinstance(inputs, torch.Tensor):
        raise EncoderInputError(
            f"expected a (B, T, D) tensor, a PackedSequence or a PackedBatch, got {type(inputs).__name__}"
        )
    if inputs.dim() != 3 or not inputs.is_floating_point():
        raise EncoderInputError(
            f"expected floating (B, T, D) inputs, got shape {tuple(inputs.shape)} dtype {inputs.dtype}"
            " (token ids must be embedded first)"
        )
    B, T, _ = inputs.shape
    return inputs, resolve_lengths(lengths, mask, B, T)


class SequenceEncoder(nn.Module):
    """Base class of encoders: input handling, strategy choice and pooling are done here.

    Subclasses implement :meth:`encode` and list the execution strategies they support in
    ``strategies`` (the first is the default). Custom encoders registered with
    :func:`~seqbucket_plugin.encoders.register_encoder` should derive from this class (it is
    what makes them pass the contract tests).

    Args:
        output_size: size of the token states.
        num_directions: 1, or 2 when the second half of the states is a backward direction
            (used by ``"last"`` pooling).
        pooling: ``"last"``, ``"mean"``, ``"max"``, ``"attention"`` or a ``+``-joined list.
        strategy: ``"auto"`` (chosen per device) or one of ``strategies``.
    """

    strategies: tuple[str, ...] = ("padded_exact",)

    def __init__(
        self,
        output_size: int,
        num_directions: int = 1,
        pooling: str | Sequence[str] | None = "last",
        strategy: str = "auto",
    ):
        super().__init__()
        self.output_size = int(output_size)
        self.num_directions = int(num_directions)
        self.pooler = Pooler(self.output_size, self.num_directions, pooling)
        self.strategy = self._check_strategy(strategy)

    @property
    def pooled_size(self) -> int:
        return self.pooler.output_size

    def _check_strategy(self, strategy: str) -> str:
        if strategy != "auto" and strategy not in self.strategies:
            raise EncoderInputError(
                f"unknown strategy {strategy!r} for {type(self).__name__}; choose from {('auto', *self.strategies)}"
            )
        return strategy

    def default_strategy(self, device: torch.device) -> str:
        """The strategy ``"auto"`` resolves to on ``device``."""
        return self.strategies[0]

    def resolve_strategy(self, strategy: str | None, device: torch.device) -> str:
        chosen = self._check_strategy(strategy or self.strategy)
        return self.default_strategy(device) if chosen == "auto" else chosen

    def choose_strategy(self, strategy: str | None, x: torch.Tensor, lengths: torch.Tensor) -> str:
        """The strategy one call runs: :meth:`resolve_strategy` on ``x``'s device by default.

        Subclasses may also look at the batch (``x (B, T, D)``, CPU ``lengths (B,)``) to pick
        the fastest exact strategy for it; an explicit ``strategy`` must be kept.
        """
        return self.resolve_strategy(strategy, x.device)

    def forward(
        self,
        inputs: Any,
        lengths: torch.Tensor | Sequence[int] | None = None,
        *,
        mask: torch.Tensor | None = None,
        strategy: str | None = None,
        embed: nn.Module | None = None,
    ) -> EncoderOutput:
        x, lengths = resolve_inputs(inputs, lengths, mask, embed)
        strat = self.choose_strategy(strategy, x, lengths)
        mask_dev = to_device_index(prefix_mask(lengths, x.size(1)), x.device)
        states, final = self.encode(x, lengths, mask_dev, strat)
        pooled = self.pooler(states, mask_dev, lengths)
        return EncoderOutput(states, pooled, final, lengths, mask_dev)

    def encode(
        self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor, strategy: str
    ) -> tuple[torch.Tensor, Any]:
        """``x (B, T, D)`` right-padded, ``lengths (B,)`` on the CPU, ``mask (B, T)`` on x's device.

        Returns ``(states (B, T, output_size) with zeros at padded positions, final states or None)``.
        """
        raise NotImplementedError
