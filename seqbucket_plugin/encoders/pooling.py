"""Pooling of padded token states into one vector per sequence, over real tokens only."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from seqbucket_plugin.encoders.errors import EncoderInputError

POOLING_MODES = ("last", "mean", "max", "attention")


def parse_pooling(pooling: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"last+mean+max"``, ``["last", "max"]`` or ``None`` (= ``("last",)``) -> a tuple of modes."""
    if pooling is None:
        return ("last",)
    modes = pooling.replace(",", "+").split("+") if isinstance(pooling, str) else list(pooling)
    modes = [m.strip().lower() for m in modes if m and m.strip()]
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise EncoderInputError(f"unknown pooling {bad or pooling!r}; choose from {POOLING_MODES} joined by '+'")
    if len(set(modes)) != len(modes):
        raise EncoderInputError(f"pooling modes repeated in {pooling!r}")
    return tuple(modes)


class Pooler(nn.Module):
    """Pools ``states (B, T, size)`` over the real tokens given by ``mask``/``lengths``.

    * ``last``: the last state of each direction at its right position - the forward half at
      ``length - 1``, the backward half (for ``num_directions == 2``) at position 0;
    * ``mean`` / ``max``: over real tokens only;
    * ``attention``: a learned scoring vector, softmax over real tokens only. The scores have no
      bias: a softmax is invariant to adding one constant to every score, so a bias would never
      receive a gradient. State dicts saved with one (``attention.bias``) still load; the key is
      dropped with a warning.

    The modes are concatenated in the order given. A zero-length row pools to zeros.
    """

    def __init__(self, size: int, num_directions: int = 1, pooling: str | Sequence[str] | None = "last"):
        super().__init__()
        if num_directions not in (1, 2) or size % num_directions:
            raise EncoderInputError(f"size {size} cannot be split into {num_directions} directions")
        self.size = size
        self.num_directions = num_directions
        self.modes = parse_pooling(pooling)
        self.attention = nn.Linear(size, 1, bias=False) if "attention" in self.modes else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stale = prefix + "attention.bias"
        if stale in state_dict:
            state_dict.pop(stale)
            warnings.warn(f"dropped {stale!r} from the state dict: attention pooling has no bias "
                          "(a softmax ignores it; it never learned)", stacklevel=2)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def output_size(self) -> int:
        return self.size * len(self.modes)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``mask (B, T)`` bool on the states' device; ``lengths (B,)`` on the CPU."""
        B, T, _ = states.shape
        nonempty = (lengths > 0).to(states.device, non_blocking=True).unsqueeze(-1)
        fmask = mask.unsqueeze(-1).to(states.dtype)
        out = []
        for mode in self.modes:
            if mode == "last":
                last = (lengths - 1).clamp(min=0).to(states.device, non_blocking=True)
                idx = last.view(B, 1, 1).expand(B, 1, self.size)
                pooled = states.gather(1, idx).squeeze(1) if T else states.new_zeros(B, self.size)
                if self.num_directions == 2 and T:
                    half = self.size // 2
                    pooled = torch.cat([pooled[:, :half], states[:, 0, half:]], dim=-1)
                pooled = pooled * nonempty
            elif mode == "mean":
                denom = lengths.clamp(min=1).to(states.device, non_blocking=True).to(states.dtype).unsqueeze(-1)
                pooled = (states * fmask).sum(1) / denom
            elif mode == "max":
                if T:
                    pooled = states.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
                    pooled = torch.where(nonempty, pooled, torch.zeros_like(pooled))
                else:
                    pooled = states.new_zeros(B, self.size)
            else:  # attention
                scores = self.attention(states).squeeze(-1)  # (B, T)
                scores = scores.masked_fill(~mask, float("-inf"))
                scores = torch.where(nonempty, scores, torch.zeros_like(scores))  # no all -inf row
                weights = torch.softmax(scores, dim=1) * mask.to(states.dtype)
                pooled = torch.bmm(weights.unsqueeze(1), states).squeeze(1)
            out.append(pooled)
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)
