"""Sequence-tagging pieces of the recipe: train step, evaluation, prediction.

Batches are :class:`~seqbucket_plugin.datapipes.PackedBatch` es with ``labels`` ``(B, T)`` padded
with -100 and, for character features, ``extras["char_ids"]`` ``(B, T, C)`` int64 (added by
:class:`~seqbucket_plugin.datapipes.CharIds` as a pipeline ``map`` step, so it runs in the loader,
not in the model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from seqbucket_plugin.constants import IGNORE_INDEX
from seqbucket_plugin.training.classification import naive_batch
from seqbucket_plugin.training.distributed import map_batches
from seqbucket_plugin.training.engine import StepOutput
from seqbucket_plugin.training.metrics import is_span_scheme, span_prf, token_accuracy

__all__ = ["evaluate_tagger", "predict_tags", "tagging_step"]


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
