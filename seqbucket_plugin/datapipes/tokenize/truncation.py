"""Truncation and BOS/EOS framing of tokenized rows, vectorised with numpy/pyarrow over the
flattened ids of a whole batch.

``max_length`` counts BOS/EOS; the text keeps ``budget = max_length - n_special`` ids:

* ``"head"``: keep the first ids.
* ``"tail"``: keep the last ids.
* ``"head+tail"``: keep the first ``h = floor(head_fraction * budget + 0.5)`` ids and the last
  ``budget - h``; with ``head_fraction=0.25`` and ``budget=510`` that is the classic IMDB
  split of head 128 + tail 382 (Sun et al., 2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from seqbucket_plugin.datapipes.tokenize.tokenizer import TextTokenizer

__all__ = ["Truncation", "TruncationKind"]

TruncationKind = Literal["head", "tail", "head+tail"]
_TRUNCATIONS = ("head", "tail", "head+tail")


@dataclass(frozen=True)
class Truncation:
    """How the ids of one text become a row: at most ``max_length`` ids, the BOS/EOS ids included,
    first ``bos`` (if any), then the text's ids cut as ``kind`` says, then ``eos`` (if any).

    Attributes:
        max_length: the longest row (BOS/EOS included); ``None`` = no truncation.
        kind: ``"head"``, ``"tail"`` or ``"head+tail"`` (module docstring).
        head_fraction: share of the budget kept from the head in ``"head+tail"``.
        bos, eos: ids put first / last on every row, or ``None``.

    Raises:
        ValueError: ``kind`` is none of the three, ``head_fraction`` is outside ``[0, 1]``, or
            ``max_length`` leaves no room for text next to the BOS/EOS ids.
    """

    max_length: int | None = None
    kind: TruncationKind = "head"
    head_fraction: float = 0.25
    bos: int | None = None
    eos: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _TRUNCATIONS:
            raise ValueError(f"truncation must be one of {_TRUNCATIONS}, got {self.kind!r}")
        if not 0.0 <= self.head_fraction <= 1.0:
            raise ValueError(f"head_fraction must be in [0, 1], got {self.head_fraction}")
        if self.max_length is not None and self.max_length < self.n_special + 1:
            raise ValueError(
                f"max_length={self.max_length} leaves no room for text next to {self.n_special} special token(s)"
            )

    @classmethod
    def of(cls, tokenizer: TextTokenizer, *, max_length: int | None, truncation: TruncationKind,
           head_fraction: float, add_special_tokens: bool) -> Truncation:
        """The truncation of the public arguments, with ``tokenizer``'s BOS/EOS ids when
        ``add_special_tokens``.

        Raises:
            SeqBucketError: ``add_special_tokens`` but the tokenizer has neither BOS nor EOS.
            ValueError: as the class.
        """
        bos, eos = tokenizer._special_ids(add_special_tokens)
        return cls(max_length, truncation, head_fraction, bos, eos)

    @property
    def n_special(self) -> int:
        """Number of BOS/EOS ids on each row (0, 1 or 2)."""
        return (self.bos is not None) + (self.eos is not None)

    @property
    def budget(self) -> int | None:
        """Ids of text a row keeps (``max_length - n_special``); ``None`` = all of them."""
        return None if self.max_length is None else self.max_length - self.n_special

    def keep_mask(self, lengths: np.ndarray) -> np.ndarray:
        """Boolean mask over the flattened ids of rows with ``lengths`` (int64 ``[n]``): which ids
        survive (``budget`` must not be ``None``)."""
        budget = self.budget
        total = int(lengths.sum())
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        pos = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
        if self.kind == "head":
            return pos < budget
        row_len = np.repeat(lengths, lengths)
        if self.kind == "tail":
            return pos >= row_len - budget
        head = _head_size(budget, self.head_fraction)
        return (pos < head) | (pos >= row_len - (budget - head))


def _head_size(budget: int, head_fraction: float) -> int:
    """Ids kept from the head in ``head+tail`` truncation: ``floor(head_fraction * budget + 0.5)``."""
    return min(budget, int(math.floor(head_fraction * budget + 0.5)))


def _finish_ids(
    values: np.ndarray,
    offsets: np.ndarray,
    truncation: Truncation,
    extra: Sequence[tuple[np.ndarray, int]] = (),
) -> tuple[pa.ListArray, np.ndarray, np.ndarray, list[pa.ListArray]]:
    """Truncate and add BOS/EOS, vectorised.

    ``values``/``offsets`` are the flat ids and the int64 ``[n+1]`` row offsets; ``extra`` holds
    other per-id arrays (e.g. labels) with the fill value used at BOS/EOS.

    Returns:
        (input_ids list<int32>, length int32[n], num_tokens int32[n], extra list arrays)
    """
    bos, eos = truncation.bos, truncation.eos
    lengths = np.diff(offsets)
    n_special = truncation.n_special
    num_tokens = (lengths + n_special).astype(np.int32)
    extras = [e for e, _ in extra]
    budget = truncation.budget
    if budget is not None and len(lengths) and int(lengths.max()) > budget:
        keep = truncation.keep_mask(lengths)
        values = values[keep]
        extras = [e[keep] for e in extras]
        lengths = np.minimum(lengths, budget)
    if n_special:
        out_len = lengths + n_special
        out_off = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(out_len, out=out_off[1:])
        inner = np.ones(int(out_off[-1]), dtype=bool)
        if bos is not None:
            inner[out_off[:-1]] = False
        if eos is not None:
            inner[out_off[1:] - 1] = False
        new_values = np.empty(len(inner), dtype=np.int32)
        new_values[inner] = values
        if bos is not None:
            new_values[out_off[:-1]] = bos
        if eos is not None:
            new_values[out_off[1:] - 1] = eos
        new_extras = []
        for e, (_, fill) in zip(extras, extra):
            ne = np.full(len(inner), fill, dtype=e.dtype)
            ne[inner] = e
            new_extras.append(ne)
        values, extras, lengths, offsets = new_values, new_extras, out_len, out_off
    else:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
    pa_off = pa.array(offsets.astype(np.int32))
    ids = pa.ListArray.from_arrays(pa_off, pa.array(values.astype(np.int32, copy=False)))
    extra_arrays = [pa.ListArray.from_arrays(pa_off, pa.array(e)) for e in extras]
    return ids, lengths.astype(np.int32), num_tokens, extra_arrays
