"""ONNX export of a trained run (``load_run(path).export("model.onnx")``): a model that runs
without this package (``onnxruntime``: ``pip install "seqbucket_plugin[export]"``), with a dynamic
batch size and length.

How: the encoder runs its ``padded_static`` strategy, which has no data-dependent control flow:
one fused (bidirectional) LSTM/GRU call per layer over the right-padded batch, with one extra
input feature equal to 1 at padded positions whose weights saturate the gates exactly (see
:mod:`seqbucket_plugin.encoders.recurrent`). Traced by ``torch.onnx.export`` (the TorchScript
exporter, ``dynamo=False``), each layer becomes one ONNX ``LSTM``/``GRU`` node with a dynamic
sequence axis, so rows of any mix of lengths give the outputs they would get alone, without
``PackedSequence`` (whose pack/pad does not export) and without ONNX's ``sequence_lens`` input.
``torch.export``-based export (``dynamo=True``) unrolls the recurrence over time and would fix the
length, so it is not used.

Graph inputs: ``input_ids`` (B, T) int64 right-padded with the run's pad id, ``lengths`` (B,)
int64 (T >= 1, every length in 1..T), and for a tagger with character features ``char_ids``
(B, T, C) int64 (0 = padding, 1 = unknown; the ids of the run's ``chars.json`` + 2). Outputs:
classification ``probabilities`` (B, num_labels); tagging ``emissions`` (B, T, num_tags) and
``tags`` (B, T) int64 (-100 past each length; Viterbi over the CRF inside the graph, as an ONNX
``Loop``, for a CRF run). The label names, pad id and input/output names are stored in the
model's metadata (``seqbucket_plugin``: JSON).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from seqbucket_plugin.constants import IGNORE_INDEX
from seqbucket_plugin.errors import SeqBucketError

__all__ = ["export_onnx"]

OPSET = 17


class _ClassifierGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, lengths, strategy="padded_static").logits.softmax(-1)


def _viterbi(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
             transitions: torch.Tensor) -> torch.Tensor:
    """The CRF's Viterbi decode (as ``CRF.decode``), scripted by :func:`_scripted_viterbi` so that
    its loops export as ONNX ``Loop`` s with a dynamic number of steps."""
    T = emissions.size(1)
    score = start.unsqueeze(0) + emissions[:, 0]
    trans = transitions.unsqueeze(0)
    backptrs: list[torch.Tensor] = []
    for t in range(1, T):
        best, idx = (score.unsqueeze(2) + trans).max(dim=1)
        backptrs.append(idx)
        score = torch.where(mask[:, t].unsqueeze(1), best + emissions[:, t], score)
    cur = (score + end.unsqueeze(0)).argmax(dim=1)
    path = [cur]
    for k in range(T - 1):
        t = T - 1 - k
        prev = backptrs[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1)
        cur = torch.where(mask[:, t], prev, cur)
        path.append(cur)
    tags = torch.stack(path, dim=1).flip([1])  # (list.reverse() is lost in the ONNX export)
    return tags.masked_fill(~mask, -100)  # IGNORE_INDEX: TorchScript cannot read a module global


_SCRIPTED: list = []


def _scripted_viterbi():
    if not _SCRIPTED:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated; the exporter still uses it
            _SCRIPTED.append(torch.jit.script(_viterbi))
    return _SCRIPTED[0]


class _TaggerGraph(nn.Module):
    def __init__(self, model: nn.Module, chars: bool):
        super().__init__()
        self.model = model
        self.chars = chars

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor, char_ids: torch.Tensor | None = None):
        emissions, _, _, enc = self.model._emissions(input_ids, lengths, char_ids, None, "padded_static")
        mask = torch.arange(input_ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        crf = self.model.crf
        if crf is None:
            tags = emissions.argmax(-1).masked_fill(~mask, IGNORE_INDEX)
        else:
            tags = _scripted_viterbi()(emissions, mask, crf.start, crf.end, crf.transitions)
        return emissions, tags


def export_onnx(run: Any, path: str | os.PathLike, *, opset: int = OPSET) -> str:
    """Write ``run``'s model (a :class:`~seqbucket_plugin.runs.RunPredictor`) to ``path`` as ONNX;
    returns the path. See the module docstring for the graph's inputs and outputs.

    Raises:
        SeqBucketError: the run cannot be exported (truncated BPTT; an encoder without the
            ``padded_static`` strategy), or ``onnx`` is not installed.
    """
    try:
        import onnx
    except ImportError as err:
        raise SeqBucketError('ONNX export needs onnx: pip install "seqbucket_plugin[export]"') from err
    path = os.fspath(path)
    config = run.config
    if config.get("tbptt_chunk"):
        raise SeqBucketError("a run trained with truncated BPTT (tbptt_chunk > 0 in its config.json) classifies chunk by chunk; "
                             "it is not exported")
    model = run.model.cpu().eval()
    pad = run.tokenizer.pad_id
    ids = torch.full((3, 5), pad, dtype=torch.long)
    lengths = torch.tensor([5, 3, 1])
    for row, n in enumerate(lengths.tolist()):
        ids[row, :n] = torch.arange(2, 2 + n) % run.tokenizer.vocab_size
    dynamic = {"input_ids": {0: "batch", 1: "length"}, "lengths": {0: "batch"}}
    if run.task == "classification":
        graph, args = _ClassifierGraph(model), (ids, lengths)
        inputs, outputs = ["input_ids", "lengths"], ["probabilities"]
        dynamic["probabilities"] = {0: "batch"}
    else:
        chars = run.chars is not None
        graph = _TaggerGraph(model, chars)
        args = (ids, lengths, torch.ones(3, 5, 4, dtype=torch.long)) if chars else (ids, lengths)
        inputs = ["input_ids", "lengths", *(["char_ids"] if chars else [])]
        outputs = ["emissions", "tags"]
        if chars:
            dynamic["char_ids"] = {0: "batch", 1: "length", 2: "chars"}
        dynamic.update(emissions={0: "batch", 1: "length"}, tags={0: "batch", 1: "length"})
    import warnings

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks that are constant here
            torch.onnx.export(graph, args, path, dynamo=False, input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=opset)
    except SeqBucketError:
        raise
    except Exception as err:
        raise SeqBucketError(f"could not export the model of {run.path} to ONNX ({type(err).__name__}: {err})") from err
    finally:
        model.to(run.device)
    proto = onnx.load(path)
    meta = {"task": run.task, "labels": run.labels, "pad_id": pad, "inputs": inputs, "outputs": outputs,
            "naive": run.naive, "max_length": config.get("max_length")}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "seqbucket_plugin", json.dumps(meta)
    onnx.save(proto, path)
    return path
