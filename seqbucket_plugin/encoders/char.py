"""Character-level word feature encoders for taggers: char CNN and char BiLSTM.

Both map character ids ``(B, T, C)`` (``C`` characters per word, right-padded with
``padding_idx``) to one vector per word ``(B, T, output_size)``. A word with no characters
(e.g. a padded token position) gets a zero vector.
"""

from __future__ import annotations

import torch
from torch import nn

from seqbucket_plugin.encoders.errors import EncoderInputError
from seqbucket_plugin.encoders.recurrent import RecurrentEncoder


def _check_chars(chars: torch.Tensor) -> None:
    if not isinstance(chars, torch.Tensor) or chars.dim() != 3 or chars.is_floating_point():
        shape = tuple(chars.shape) if isinstance(chars, torch.Tensor) else type(chars).__name__
        raise EncoderInputError(f"character ids must be an integer (B, T, C) tensor, got {shape}")


class CharCNN(nn.Module):
    """Char embedding -> 1-D convolution -> ReLU -> max over the word's real characters."""

    def __init__(self, num_chars: int, char_dim: int = 16, num_filters: int = 32, kernel_size: int = 3,
                 padding_idx: int = 0, dropout: float = 0.0):
        super().__init__()
        self.padding_idx = padding_idx
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=padding_idx)
        self.conv = nn.Conv1d(char_dim, num_filters, kernel_size, padding=kernel_size // 2)
        self.dropout = nn.Dropout(dropout)
        self.output_size = num_filters

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        _check_chars(chars)
        B, T, C = chars.shape
        flat = chars.reshape(B * T, C)
        mask = flat != self.padding_idx  # (N, C)
        emb = self.dropout(self.embedding(flat)).transpose(1, 2)  # (N, d, C)
        h = torch.relu(self.conv(emb))[..., :C]  # (N, F, C)
        h = h.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(-1) if C else h.new_zeros(B * T, h.size(1))
        h = torch.where(mask.any(-1, keepdim=True), h, torch.zeros_like(h))
        return h.reshape(B, T, -1)


class CharBiLSTM(nn.Module):
    """Char embedding -> BiLSTM over each word's characters -> ``[last forward; first backward]``.

    Uses :class:`RecurrentEncoder`, so it is exact for any mix of word lengths.
    """

    def __init__(self, num_chars: int, char_dim: int = 16, hidden_size: int = 25, padding_idx: int = 0,
                 dropout: float = 0.0, strategy: str = "auto"):
        super().__init__()
        self.padding_idx = padding_idx
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.rnn = RecurrentEncoder(char_dim, hidden_size, mode="lstm", bidirectional=True, pooling="last",
                                    strategy=strategy)
        self.output_size = 2 * hidden_size

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        _check_chars(chars)
        B, T, C = chars.shape
        flat = chars.reshape(B * T, C)
        mask = flat != self.padding_idx
        # lengths are needed on the CPU: one copy if the ids live on an accelerator
        lengths = mask.sum(-1).cpu()
        out = self.rnn(self.dropout(self.embedding(flat)), lengths, mask=mask)
        return out.pooled.reshape(B, T, -1)


def create_char_encoder(kind: str, num_chars: int, **kwargs) -> nn.Module:
    """``"cnn"`` -> :class:`CharCNN`, ``"bilstm"`` (or ``"lstm"``) -> :class:`CharBiLSTM`."""
    kinds = {"cnn": CharCNN, "bilstm": CharBiLSTM, "lstm": CharBiLSTM}
    if kind.lower() not in kinds:
        raise EncoderInputError(f"unknown character encoder {kind!r}; choose from {sorted(kinds)}")
    return kinds[kind.lower()](num_chars, **kwargs)
