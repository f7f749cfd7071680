"""Character features of words, computed in the data pipeline: :class:`CharVocab` (characters ->
ids, saved as ``chars.json``) and :class:`CharIds`, a pipeline ``map`` step that adds
``extras["char_ids"]`` ``(B, T, C)`` int64 to a :class:`~seqbucket_plugin.datapipes.PackedBatch`
(so it runs in the loader, not in the model)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = ["CharIds", "CharVocab"]


class CharVocab:
    """Characters -> ids: 0 = padding, 1 = unknown, then characters seen ``min_count`` times."""

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.index = {ch: i + 2 for i, ch in enumerate(self.chars)}

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 1) -> CharVocab:
        counts: Counter[str] = Counter()
        for words in sentences:
            for w in words:
                counts.update(w)
        return cls(sorted(ch for ch, n in counts.items() if n >= min_count))

    def __len__(self) -> int:
        return len(self.chars) + 2

    def encode(self, word: str, max_chars: int) -> list[int]:
        return [self.index.get(ch, 1) for ch in word[:max_chars]] or [1]

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"chars": self.chars}, f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharVocab:
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f)["chars"])


class CharIds:
    """A pipeline ``map`` step: ``extras["tokens"]`` (the words, sorted like the rows) ->
    ``extras["char_ids"]`` ``(B, T, C)`` int64 on the CPU, ``C`` = the longest word (capped at
    ``max_chars``). Words past a row's length (head truncation) are dropped."""

    def __init__(self, vocab: CharVocab, max_chars: int = 20):
        self.vocab = vocab
        self.max_chars = max_chars

    def __call__(self, batch):
        words = batch.extras.pop("tokens")
        B, T = batch.input_ids.shape
        lengths = batch.lengths.tolist()
        encoded = [[self.vocab.encode(w, self.max_chars) for w in row[:n]] for row, n in zip(words, lengths)]
        C = max((len(w) for row in encoded for w in row), default=1)
        out = np.zeros((B, T, C), dtype=np.int64)
        for b, row in enumerate(encoded):
            for t, w in enumerate(row):
                out[b, t, : len(w)] = w
        batch.extras["char_ids"] = torch.from_numpy(out)
        return batch
