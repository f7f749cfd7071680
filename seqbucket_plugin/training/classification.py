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

from seqbucket_plugin.encoders.errors import EncoderInputError
from seqbucket_plugin.encoders.recurrent import RecurrentEncoder
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
    chunk (see :func:`chunked_logits`); the gradients of all chunks add up to one optimizer step.
    """
    import contextlib

    ctx = autocast or contextlib.nullcontext

    def step(model, batch, backward):
        if tbptt_chunk:
            total = torch.zeros((), device=batch.input_ids.device)
            for logits, rows, weight in _iter_chunks(model, batch, tbptt_chunk, ctx):
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
def _shell(encoder: RecurrentEncoder) -> nn.RNNBase:
    """A parameter-less ``nn.LSTM``/``nn.GRU`` with the encoder's shape (same parameter names)."""
    cls = nn.LSTM if encoder.mode == "lstm" else nn.GRU
    shell = getattr(encoder, "_tbptt_shell", None)
    if shell is None:
        shell = cls(encoder.input_size, encoder.hidden_size, encoder.num_layers, batch_first=True,
                    bidirectional=encoder.bidirectional, dropout=encoder.dropout, device="meta")
        object.__setattr__(encoder, "_tbptt_shell", shell)  # not a submodule: no extra parameters
    shell.train(encoder.training)
    return shell


def _iter_chunks(model: nn.Module, batch, chunk: int, autocast: Callable):
    """Yield ``(logits (rows, C), rows, weight)`` for each chunk of ``batch``.

    ``rows`` are the leading rows still running in this chunk (the batch is sorted by length);
    ``weight`` = rows / B, so the chunk losses sum to a per-row mean. The state that enters each
    chunk is the detached final state of the previous one (forward directions; a backward
    direction starts fresh in every chunk, it cannot see the future across a cut).
    """
    encoder = model.encoder
    if not isinstance(encoder, RecurrentEncoder):
        raise EncoderInputError("truncated BPTT needs a recurrent encoder (lstm, bilstm, gru, bigru)")
    shell = _shell(encoder)
    params = {name: p for name, p in encoder.named_parameters() if name.startswith(("weight_", "bias_"))}
    lengths = batch.lengths
    B, T = batch.input_ids.shape
    dirs, L, H = encoder.num_directions, encoder.num_layers, encoder.hidden_size
    device = batch.input_ids.device
    h = torch.zeros(L * dirs, B, H, device=device)
    c = torch.zeros_like(h) if encoder.mode == "lstm" else None
    forward_only = torch.tensor([1.0 if d == 0 else 0.0 for _ in range(L) for d in range(dirs)],
                                device=device).view(-1, 1, 1)
    for start in range(0, max(T, 1), chunk):
        chunk_len = (lengths - start).clamp(0, chunk)
        rows = int((chunk_len > 0).sum())
        if rows == 0:
            break
        with autocast():
            x = model.embedding(batch.input_ids[:rows, start:start + chunk])
            packed = nn.utils.rnn.pack_padded_sequence(x, chunk_len[:rows], batch_first=True, enforce_sorted=True)
            hx = (h[:, :rows] * forward_only, c[:, :rows] * forward_only) if c is not None else h[:, :rows] * forward_only
            out, final = torch.func.functional_call(shell, params, (packed, hx))
            states, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            mask = torch.arange(x.shape[1], device=device).unsqueeze(0) < chunk_len[:rows].to(device).unsqueeze(1)
            pooled = encoder.pooler(states, mask, chunk_len[:rows])
            logits = model.mlp(pooled)
        if c is not None:
            h = torch.cat([final[0].detach().to(h.dtype), h[:, rows:]], 1)
            c = torch.cat([final[1].detach().to(c.dtype), c[:, rows:]], 1)
        else:
            h = torch.cat([final.detach().to(h.dtype), h[:, rows:]], 1)
        yield logits, rows, rows / B


def chunked_logits(model: nn.Module, batch, chunk: int) -> torch.Tensor:
    """``(B, C)`` logits of each row from its last chunk (the state carried through all chunks)."""
    import contextlib

    B = batch.input_ids.shape[0]
    result = None
    for logits, rows, _ in _iter_chunks(model, batch, chunk, contextlib.nullcontext):
        if result is None:
            result = logits.new_zeros(B, logits.shape[-1])
        result = torch.cat([logits, result[rows:]], 0)  # rows that end later overwrite their entries
    if result is None:
        raise EncoderInputError("cannot classify a batch in which every text is empty")
    return result
