"""Sequence-tagging pieces of the recipe: word vocabulary, character ids, train step, evaluation.

Batches are :class:`~seqbucket_plugin.datapipes.PackedBatch` es with ``labels`` ``(B, T)`` padded
with -100 and, for character features, ``extras["char_ids"]`` ``(B, T, C)`` int64 (added by
:class:`CharIds` as a pipeline ``map`` step, so it runs in the loader, not in the model).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from torch import nn

from seqbucket_plugin.constants import IGNORE_INDEX
from seqbucket_plugin.datapipes import TextTokenizer
from seqbucket_plugin.training.classification import naive_batch
from seqbucket_plugin.training.distributed import map_batches
from seqbucket_plugin.training.engine import StepOutput
from seqbucket_plugin.training.metrics import is_span_scheme, span_prf, token_accuracy

__all__ = ["CharIds", "CharVocab", "evaluate_tagger", "predict_tags", "tagging_step", "word_tokenizer"]

PAD, UNK = "<pad>", "<unk>"


def word_tokenizer(sentences: Iterable[Sequence[str]], *, min_frequency: int = 1, vocab_size: int = 50_000,
                   lowercase: bool = True) -> TextTokenizer:
    """A word-level :class:`TextTokenizer` over whole words (never split at punctuation).

    The vocabulary is ``<pad>``, ``<unk>`` then the ``vocab_size - 2`` most frequent (normalised)
    words seen at least ``min_frequency`` times; ties are broken alphabetically (deterministic).
    """
    norm = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()] if lowercase else [normalizers.NFKC()])
    counts: Counter[str] = Counter()
    for words in sentences:
        counts.update(norm.normalize_str(w) for w in words)
    kept = sorted((w for w, n in counts.items() if n >= min_frequency), key=lambda w: (-counts[w], w))
    vocab = {PAD: 0, UNK: 1}
    for w in kept[: max(0, vocab_size - 2)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = norm
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return TextTokenizer(tok, pad_token=PAD, unk_token=UNK, bos_token=None, eos_token=None, kind="word")


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


def _maybe_naive(batch, naive: bool):
    if not naive:
        return batch
    return naive_batch(batch)


def tagging_step(naive: bool = False, autocast: Callable | None = None):
    """A ``train_step`` for :class:`~seqbucket_plugin.training.Trainer` over a SequenceTagger."""
    ctx = autocast or contextlib.nullcontext

    def step(model, batch, backward):
        with ctx():
            out = model(_maybe_naive(batch, naive))
        backward(out.loss)
        return StepOutput(out.loss.detach(), batch.num_tokens)

    return step


def _decode_rows(model: nn.Module, batch, naive: bool) -> tuple[list[list[int]], list[list[int]]]:
    pred = model.decode(_maybe_naive(batch, naive)).cpu()
    gold = batch.labels.cpu()
    lengths = batch.lengths.tolist()
    return ([pred[i, :n].tolist() for i, n in enumerate(lengths)],
            [gold[i, :n].tolist() for i, n in enumerate(lengths)])


def evaluate_tagger(model: nn.Module, batches: Iterable, device: torch.device, tag_names: Sequence[str], *,
                    naive: bool = False, dist=None) -> dict[str, float]:
    """``{"accuracy"}`` (token accuracy, gold -100 skipped) plus span ``precision``/``recall``/``f1``
    when the tags are a span scheme (BIO/IOB2/IOBES/BILOU).

    ``dist``: as in :func:`~seqbucket_plugin.training.classification.evaluate_classifier` (the
    batches are shared out among the ranks; every rank gets the metrics of all of them)."""
    predicted, gold = [], []
    for p, g in map_batches(batches, lambda b: _decode_rows(model, b.to(device, non_blocking=True), naive), dist):
        predicted += p
        gold += g
    metrics = {"accuracy": token_accuracy(predicted, gold)}
    if is_span_scheme(tag_names):
        def names(rows, ref):
            return [[tag_names[t] if t >= 0 else "O" for t, r in zip(row, ref_row) if r != IGNORE_INDEX]
                    for row, ref_row in zip(rows, ref)]
        metrics.update(span_prf(names(predicted, gold), names(gold, gold)))
    return metrics


@torch.no_grad()
def predict_tags(model: nn.Module, batches: Iterable, device: torch.device) -> dict[int, list[int]]:
    """``{example index: [tag id per token]}``; batches carry the index in ``extras["idx"]``."""
    out: dict[int, list[int]] = {}
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        pred = model.decode(batch).cpu()
        for row, (i, n) in enumerate(zip(batch.extras["idx"].tolist(), batch.lengths.tolist())):
            out[int(i)] = pred[row, :n].tolist()
    return out
