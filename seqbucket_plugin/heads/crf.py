"""Linear-chain CRF with batched forward algorithm and Viterbi decoding.

All operations are batched over the whole batch: the only Python loop is over time steps, and
each sequence's length is respected (a sequence's scores stop at its last real token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seqbucket_plugin.constants import IGNORE_INDEX
from seqbucket_plugin.encoders.base import resolve_lengths, to_device_index
from seqbucket_plugin.encoders.errors import EncoderInputError


class CRF(nn.Module):
    """A linear-chain conditional random field over ``num_tags`` tags.

    Parameters: ``transitions[i, j]`` (score of tag ``i`` followed by tag ``j``), ``start`` and
    ``end`` scores. Emissions are ``(B, T, num_tags)``; lengths are ``(B,)`` (CPU preferred).
    A zero-length sequence has log-likelihood 0 and decodes to an all-padding row.
    """

    def __init__(self, num_tags: int):
        super().__init__()
        if num_tags < 1:
            raise EncoderInputError(f"num_tags must be positive, got {num_tags}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.start = nn.Parameter(torch.empty(num_tags))
        self.end = nn.Parameter(torch.empty(num_tags))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.transitions, self.start, self.end):
            nn.init.uniform_(p, -0.1, 0.1)

    def _prepare(self, emissions: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None):
        if emissions.dim() != 3 or emissions.size(-1) != self.num_tags:
            raise EncoderInputError(f"emissions must be (B, T, {self.num_tags}), got {tuple(emissions.shape)}")
        B, T, _ = emissions.shape
        lengths = resolve_lengths(lengths, None, B, T)
        mask = to_device_index(torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1), emissions.device)
        return lengths, mask

    def log_partition(self, emissions: torch.Tensor, lengths=None) -> torch.Tensor:
        """``(B,)`` log of the sum over all tag paths of ``exp(score)`` (0 for empty rows)."""
        lengths, mask = self._prepare(emissions, lengths)
        B, T, _ = emissions.shape
        if T == 0:
            return emissions.new_zeros(B)
        alpha = self.start + emissions[:, 0]  # (B, K)
        trans = self.transitions.unsqueeze(0)
        for t in range(1, int(lengths.max()) if B else 0):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t : t + 1], nxt, alpha)
        logz = torch.logsumexp(alpha + self.end, dim=1)
        return torch.where(mask[:, 0], logz, torch.zeros_like(logz))

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, lengths=None) -> torch.Tensor:
        """``(B,)`` unnormalised score of the given tag paths (positions past a length are ignored)."""
        lengths, mask = self._prepare(emissions, lengths)
        B, T, _ = emissions.shape
        if tags.shape != (B, T):
            raise EncoderInputError(f"tags must have shape {(B, T)}, got {tuple(tags.shape)}")
        if T == 0:
            return emissions.new_zeros(B)
        tags = tags.masked_fill(~mask, 0)
        if tags.device.type == "cpu" and bool(((tags < 0) | (tags >= self.num_tags)).any()):  # no sync on GPUs
            raise EncoderInputError(
                f"tags at real positions must lie in [0, {self.num_tags}); a CRF cannot ignore "
                f"({IGNORE_INDEX}) a position inside a sequence"
            )
        fmask = mask.to(emissions.dtype)
        emit = emissions.gather(2, tags.unsqueeze(-1)).squeeze(-1)
        s = (emit * fmask).sum(1) + self.start[tags[:, 0]]
        if T > 1:
            s = s + (self.transitions[tags[:, :-1], tags[:, 1:]] * fmask[:, 1:]).sum(1)
        last = to_device_index((lengths - 1).clamp(min=0), emissions.device)
        s = s + self.end[tags.gather(1, last.unsqueeze(1)).squeeze(1)]
        return s * fmask[:, 0]

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, lengths=None) -> torch.Tensor:
        """``(B,)`` log p(tags | emissions); 0 for zero-length rows."""
        return self.score(emissions, tags, lengths) - self.log_partition(emissions, lengths)

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, lengths=None, reduction: str = "mean"):
        """Negative log-likelihood; ``reduction`` ``"mean"`` (over non-empty rows), ``"sum"`` or ``"none"``."""
        nll = -self.log_likelihood(emissions, tags, lengths)
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if reduction != "mean":
            raise EncoderInputError(f"unknown reduction {reduction!r}")
        lengths = resolve_lengths(lengths, None, emissions.size(0), emissions.size(1))
        return nll.sum() / max(int((lengths > 0).sum()), 1)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, lengths=None, pad_value: int = IGNORE_INDEX) -> torch.Tensor:
        """Viterbi: ``(B, T)`` best tag paths, ``pad_value`` past each length."""
        lengths, mask = self._prepare(emissions, lengths)
        B, T, K = emissions.shape
        out = torch.full((B, T), pad_value, dtype=torch.long, device=emissions.device)
        Tm = int(lengths.max()) if B else 0
        if Tm == 0:
            return out
        score = self.start + emissions[:, 0]
        trans = self.transitions.unsqueeze(0)
        backptr = []
        for t in range(1, Tm):
            best, idx = (score.unsqueeze(2) + trans).max(dim=1)  # over previous tag
            backptr.append(idx)
            score = torch.where(mask[:, t : t + 1], best + emissions[:, t], score)
        cur = (score + self.end).argmax(dim=1)  # the best last tag of each row
        for t in range(Tm - 1, -1, -1):
            real = mask[:, t]
            out[:, t] = torch.where(real, cur, out[:, t])
            if t > 0:
                prev = backptr[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1)
                cur = torch.where(real, prev, cur)
        return out
