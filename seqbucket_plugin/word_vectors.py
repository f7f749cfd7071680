"""Word vectors learned from the training texts themselves: positive PMI of word co-occurrences
in a window, factorised by a truncated SVD (Levy, Goldberg and Dagan 2015, "Improving
distributional similarity with lessons learned from word embeddings").

A recipe starts its embedding from these on large training sets: the words then begin with
what their contexts say about them instead of from random vectors, which an LSTM classifier on long
documents otherwise spends its first epoch learning. No other data and no extra package are
needed; it runs in seconds on millions of tokens (numpy and torch, no per-token Python).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from seqbucket_plugin.errors import SeqBucketError

__all__ = ["WordVectorReport", "cooccurrence_vectors"]


@dataclass(frozen=True)
class WordVectorReport:
    """What :func:`cooccurrence_vectors` learned from: ``tokens`` counted, ``pairs`` distinct
    co-occurring word pairs kept (positive PMI), ``words`` rows with a vector, ``seconds``."""

    tokens: int
    pairs: int
    words: int
    seconds: float

    def summary(self) -> str:
        return (f"word vectors from the training texts: {self.tokens:,} tokens, {self.pairs:,} word pairs with "
                f"positive PMI, {self.words:,} words, {self.seconds:.1f} s")


def _flatten(sequences: pa.ChunkedArray | pa.Array | Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of every sequence end to end, and each token's sequence number."""
    if isinstance(sequences, pa.ChunkedArray):
        sequences = sequences.combine_chunks()
    if isinstance(sequences, (pa.ListArray, pa.LargeListArray)):
        offsets = np.asarray(sequences.offsets, dtype=np.int64)
        values = np.asarray(sequences.flatten(), dtype=np.int64)
        offsets = offsets - offsets[0]
    else:
        arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays], dtype=np.int64)])
    owner = np.repeat(np.arange(offsets.size - 1, dtype=np.int64), np.diff(offsets))
    return values, owner


def cooccurrence_vectors(
    sequences: pa.ChunkedArray | pa.Array | Iterable[Sequence[int]],
    vocab_size: int,
    dim: int,
    *,
    window: int = 5,
    context_smoothing: float = 0.75,
    exclude: Sequence[int] = (),
    niter: int = 4,
    seed: int = 0,
) -> tuple[torch.Tensor, WordVectorReport]:
    """Vectors for the ids ``0..vocab_size-1`` from their co-occurrences in ``sequences``.

    Every pair of tokens at most ``window`` apart in one sequence counts, weighted
    ``(window - distance + 1) / window`` (word2vec's dynamic window, in expectation); the
    positive PMI matrix, with the context counts raised to ``context_smoothing``, is factorised by
    :func:`torch.svd_lowrank` and each word's vector is its row of ``U`` (no singular-value
    weighting, which Levy et al. found better) scaled to norm ``sqrt(dim)``, the norm of an
    ``nn.Embedding`` row at its own N(0, 1) initialisation, so training starts at the usual scale.

    Args:
        sequences: token ids per text: an Arrow list column (e.g. a tokenized dataset's
            ``input_ids``) or any iterable of int sequences.
        vocab_size: number of ids; an id outside ``[0, vocab_size)`` is an error.
        dim: vector size (columns past ``vocab_size``, the most an SVD gives, are zeros).
        window: the largest distance counted.
        context_smoothing: the exponent of the context counts (0.75 as in word2vec).
        exclude: ids neither counted nor given a vector (padding): their rows are zeros.
        niter: power iterations of the randomised SVD.
        seed: of the randomised SVD (the global torch generator is restored afterwards).

    Returns:
        ``(vectors, report)``: ``vectors`` a float32 CPU tensor ``(vocab_size, dim)``; ids that
        never co-occur with another token have zero rows; ``report`` a :class:`WordVectorReport`.

    Raises:
        SeqBucketError: ids out of range, ``dim`` or ``vocab_size`` below 1, ``window < 1``, or
            no pair to learn from.
    """
    start = time.perf_counter()
    if window < 1:
        raise SeqBucketError(f"window must be at least 1, got {window}")
    if dim < 1 or vocab_size < 1:
        raise SeqBucketError(f"dim and vocab_size must be at least 1, got {dim} and {vocab_size}")
    values, owner = _flatten(sequences)
    if values.size and (values.min() < 0 or values.max() >= vocab_size):
        raise SeqBucketError(f"token ids must be in [0, {vocab_size}), found {int(values.min())}..{int(values.max())}")
    counted = np.ones(values.size, dtype=bool)
    if len(exclude):
        counted &= ~np.isin(values, np.asarray(list(exclude), dtype=np.int64))

    keys, weights = [], []
    for distance in range(1, window + 1):
        left, right = slice(None, -distance), slice(distance, None)
        keep = (owner[left] == owner[right]) & counted[left] & counted[right]
        a, b = values[left][keep], values[right][keep]
        unique, count = np.unique(np.concatenate([a * vocab_size + b, b * vocab_size + a]), return_counts=True)
        keys.append(unique)
        weights.append(count.astype(np.float64) * (window - distance + 1) / window)
    key, inverse = np.unique(np.concatenate(keys), return_inverse=True)  # the distances' pairs merged
    if key.size == 0:
        raise SeqBucketError("no two tokens share a window: nothing to learn word vectors from")
    weight = np.bincount(inverse, weights=np.concatenate(weights))
    rows, cols = key // vocab_size, key % vocab_size

    word_totals = np.bincount(rows, weights=weight, minlength=vocab_size)
    context = np.bincount(cols, weights=weight, minlength=vocab_size) ** context_smoothing
    total = weight.sum()
    pmi = np.log(weight) + math.log(total) - np.log(word_totals[rows]) - np.log(context[cols] / context.sum() * total)
    positive = pmi > 0
    rows, cols, pmi = rows[positive], cols[positive], pmi[positive]
    if rows.size == 0:
        raise SeqBucketError("no word pair co-occurs more often than chance: nothing to learn word vectors from")

    # the keys are unique and sorted, so (rows, cols) is already in coalesced order
    matrix = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(pmi).float(),
                                     (vocab_size, vocab_size), is_coalesced=True, check_invariants=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, _, _ = torch.svd_lowrank(matrix, q=min(dim, vocab_size), niter=niter)
    vectors = torch.nn.functional.pad(u.float(), (0, dim - u.shape[1]))  # zero columns past the rank
    has_vector = torch.from_numpy(np.bincount(rows, minlength=vocab_size) > 0)
    vectors[~has_vector] = 0
    vectors = torch.nn.functional.normalize(vectors, dim=1) * math.sqrt(dim)
    report = WordVectorReport(tokens=int(counted.sum()), pairs=int(rows.size), words=int(has_vector.sum()),
                              seconds=time.perf_counter() - start)
    return vectors, report
