"""Text-classification pieces of the recipe: train step, evaluation, truncated BPTT, prediction.

Batches are :class:`~seqbucket_plugin.datapipes.PackedBatch` es with ``labels`` ``(B,)``; models
are :class:`~seqbucket_plugin.heads.SequenceClassifier` s. ``naive=True`` reproduces the baseline
set-up: the model runs over every padded position (lengths = the padded width), as a plain
``nn.LSTM`` over a padded tensor would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from seqbucket_plugin.training.distributed import map_batches
from seqbucket_plugin.training.engine import StepOutput
from seqbucket_plugin.training.metrics import accuracy, macro_f1

__all__ = ["chunked_logits", "classification_step", "evaluate_classifier", "naive_batch", "predict_classifier"]


def naive_batch(batch):
    """``batch`` with every row's length set to the padded width (the model sees the padding)."""
    T = batch.input_ids.shape[1]
    return dataclasses.replace(batch, lengths=torch.full_like(batch.lengths, T))


def _logits(model: nn.Module, batch, naive: bool, tbptt_chunk: int) -> torch.Tensor:
    if tbptt_chunk:
        return chunked_logits(model, batch, tbptt_chunk)
    return model(naive_batch(batch) if naive else batch).logits


def classification_step(naive: bool = False, tbptt_chunk: int = 0, autocast: Callable = None
                        ) -> Callable[[nn.Module, object, Callable], StepOutput]:
    """A ``train_step`` for :class:`~seqbucket_plugin.training.Trainer`.

    With ``tbptt_chunk`` > 0 each batch is cut into chunks of that many tokens; each chunk's
    loss is back-propagated on its own and the detached recurrent state is carried into the next
    chunk (:meth:`~seqbucket_plugin.heads.SequenceClassifier.chunked_forward`); the gradients of
    all chunks add up to one optimizer step.
    """
    import contextlib

    ctx = autocast or contextlib.nullcontext

    def step(model, batch, backward):
        if tbptt_chunk:
            total = torch.zeros((), device=batch.input_ids.device)
            for logits, rows, weight in model.chunked_forward(batch, tbptt_chunk, ctx):
                loss = F.cross_entropy(logits.float(), batch.labels[:rows]) * weight
                backward(loss)
                total += loss.detach()
            return StepOutput(total, batch.num_tokens)
        with ctx():
            out = model(naive_batch(batch) if naive else batch)
        backward(out.loss)
        return StepOutput(out.loss.detach(), batch.num_tokens)

    return step


def evaluate_classifier(model: nn.Module, batches: Iterable, device: torch.device, *, naive: bool = False,
                        tbptt_chunk: int = 0, num_classes: int | None = None, dist=None) -> dict[str, float]:
    """``{"accuracy", "macro_f1"}`` over ``batches`` (CPU PackedBatches with labels).

    With ``dist`` (a :class:`~seqbucket_plugin.training.distributed.DistContext` of several
    processes) every rank passes the same unsharded batches, runs the model on its share of them
    and gets the metrics of all of them (see :func:`~seqbucket_plugin.training.distributed.map_batches`).
    """
    def run(batch):
        batch = batch.to(device, non_blocking=True)
        return _logits(model, batch, naive, tbptt_chunk).argmax(-1).tolist(), batch.labels.tolist()

    predicted: list[int] = []
    gold: list[int] = []
    for p, g in map_batches(batches, run, dist):
        predicted += p
        gold += g
    labels = range(num_classes) if num_classes else None
    return {"accuracy": accuracy(predicted, gold), "macro_f1": macro_f1(predicted, gold, labels)}


@torch.no_grad()
def predict_classifier(model: nn.Module, batches: Iterable, device: torch.device, *, naive: bool = False,
                       tbptt_chunk: int = 0) -> dict[int, tuple[int, float]]:
    """``{example index: (class id, probability)}``; batches carry the index in ``extras["idx"]``."""
    out: dict[int, tuple[int, float]] = {}
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        probs = _logits(model, batch, naive, tbptt_chunk).float().softmax(-1)
        best, ids = probs.max(-1)
        for i, c, p in zip(batch.extras["idx"].tolist(), ids.tolist(), best.tolist()):
            out[int(i)] = (int(c), float(p))
    return out


# ---------------------------------------------------------------------------- truncated BPTT
def chunked_logits(model: nn.Module, batch, chunk: int) -> torch.Tensor:
    """``(B, C)`` logits of each row from its last chunk (the state carried through all chunks):
    :meth:`~seqbucket_plugin.heads.SequenceClassifier.chunked_logits`."""
    return model.chunked_logits(batch, chunk)
