"""Batches and loaders follow the conventions PyTorch / Hugging Face users rely on: mapping access
and ``model(**batch)``, ``attention_mask``, ``.to(device, dtype=..., non_blocking=...)``, ``len()``
and ``set_epoch``, a ``torch.utils.data`` bridge that splits work across ``DataLoader`` workers,
``pin_memory()`` without CUDA, and the same batch contents from map-style and streaming sources."""

from __future__ import annotations

import warnings

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seqbucket_plugin.datapipes import Pipe, TextTokenizer
from seqbucket_plugin.datapipes.packing import PackedBatch, collate_packed
from seqbucket_plugin.datapipes.pipe import WorkerSplitError
from seqbucket_plugin.heads import SequenceClassifier, SequenceTagger

RNG = np.random.default_rng(0)
WORDS = "the a cat dog sat ran on mat big small red blue".split()
TEXTS = [" ".join(RNG.choice(WORDS, size=int(n))) for n in RNG.integers(1, 30, size=400)]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(TEXTS, kind="word")


def data(extra: bool = True) -> datasets.Dataset:
    columns = {"text": TEXTS, "label": [i % 3 for i in range(len(TEXTS))]}
    if extra:
        columns |= {"idx": list(range(len(TEXTS))), "source": [f"doc{i}" for i in range(len(TEXTS))]}
    return datasets.Dataset.from_dict(columns)


def pipe(tok, **tokenize) -> Pipe:
    return Pipe.from_hf(data()).tokenize(tok, **tokenize).bucket_batch(max_tokens=256, seed=3).pack()


def test_packed_batch_is_read_like_a_mapping(tok):
    batch = next(iter(pipe(tok, keep_columns=["idx"])))
    assert isinstance(batch, PackedBatch)
    assert batch.keys() == ["input_ids", "attention_mask", "lengths", "labels", "num_tokens", "idx"]
    assert batch["input_ids"] is batch.input_ids and "labels" in batch and "nothing" not in batch
    assert batch["attention_mask"].dtype == torch.int64
    assert torch.equal(batch["attention_mask"].bool(), batch.mask)
    assert torch.equal(batch.attention_mask.sum(1), batch.lengths)
    assert dict(batch).keys() == set(batch.keys()) and batch.get("nothing", 5) == 5
    with pytest.raises(KeyError, match="a PackedBatch holds"):
        batch["nothing"]

    def forward(input_ids, attention_mask, lengths, labels, num_tokens, idx):
        return input_ids.shape

    assert forward(**batch) == batch.input_ids.shape
    model = SequenceClassifier(tok.vocab_size, 3, embedding_dim=8, hidden_size=8, encoder="lstm", pooling="mean")
    model.eval()
    by_names, positional = model(**batch), model(batch)
    torch.testing.assert_close(by_names.logits, positional.logits)
    torch.testing.assert_close(by_names.loss, positional.loss)
    # input_ids + attention_mask only (Hugging Face style): lengths come from the mask
    torch.testing.assert_close(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                               positional.logits)


def test_tagger_forward_takes_batch_names():
    ex = [{"input_ids": [1, 2, 3], "length": 3, "labels": [0, 1, 2]}, {"input_ids": [4], "length": 1, "labels": [1]}]
    batch = collate_packed(ex)
    tagger = SequenceTagger(10, 3, embedding_dim=4, hidden_size=4, encoder="lstm", decoder="softmax").eval()
    torch.testing.assert_close(tagger(**batch).emissions, tagger(batch).emissions)


def test_to_moves_and_casts_floats_only():
    ex = [{"input_ids": [1, 2], "length": 2, "label": 0, "score": 0.5},
          {"input_ids": [3], "length": 1, "label": 1, "score": 1.5}]
    batch = collate_packed(ex)
    half = batch.to("cpu", dtype=torch.float16, non_blocking=True)
    assert half.extras["score"].dtype == torch.float16 and half.input_ids.dtype == torch.int64
    assert half.labels.dtype == torch.int64 and half.lengths.device.type == "cpu"
    assert batch.to(torch.bfloat16).extras["score"].dtype == torch.bfloat16
    assert batch.to(device="cpu").input_ids.dtype == torch.int64
    with pytest.raises(TypeError, match="floating-point"):
        batch.to("cpu", dtype=torch.int32)


def test_len_and_set_epoch(tok):
    p = pipe(tok)
    loader = p.loader()
    assert len(p) == len(loader) == p.batcher.num_batches(0) == len(list(loader))
    it = iter(loader)
    epoch1 = [next(it).positions.tolist()]
    count = len(loader)  # during an epoch: that epoch's batches
    epoch1 += [b.positions.tolist() for b in it]
    assert count == len(epoch1) == p.batcher.num_batches(1)
    p2 = pipe(tok)
    l2 = p2.loader()
    l2.set_epoch(1)
    assert [b.positions.tolist() for b in l2] == epoch1  # epoch 1, chosen explicitly
    l2.set_epoch(1)
    assert [b.positions.tolist() for b in l2] == epoch1  # again: like DistributedSampler.set_epoch
    stream = Pipe.from_hf(data().to_iterable_dataset()).tokenize(tok).bucket_batch(max_tokens=256).pack()
    with pytest.raises(TypeError, match="streaming"):
        len(stream)


WORKERS_WARNING = "ignore:This DataLoader will create:UserWarning"  # a 1-core CI machine


@pytest.mark.filterwarnings(WORKERS_WARNING)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_workers_split_the_epoch_without_duplicates(tok, num_workers):
    p = pipe(tok, keep_columns=["idx"])
    expected = [b["idx"].tolist() for b in pipe(tok, keep_columns=["idx"])]
    ds = p.as_iterable_dataset()
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    assert len(loader) == len(expected)
    got = [b["idx"].tolist() for b in loader]
    assert all(isinstance(b, PackedBatch) for b in DataLoader(ds, batch_size=None, num_workers=0))
    assert got == expected  # every batch once, in the pipe's own order
    seen = sorted(i for b in got for i in b)
    assert seen == list(range(len(TEXTS)))
    ds.set_epoch(1)
    second = [b["idx"].tolist() for b in DataLoader(ds, batch_size=None, num_workers=num_workers)]
    reference = pipe(tok, keep_columns=["idx"])
    reference.set_epoch(1)
    assert second == [b["idx"].tolist() for b in reference] and second != got


@pytest.mark.filterwarnings(WORKERS_WARNING)
def test_a_stream_across_workers_is_a_clear_error(tok):
    stream = Pipe.from_hf(data().to_iterable_dataset()).tokenize(tok).bucket_batch(max_tokens=256).pack()
    with pytest.raises(WorkerSplitError, match="without duplicates"):
        list(DataLoader(stream.as_iterable_dataset(), batch_size=None, num_workers=2))
    assert len(list(DataLoader(stream.as_iterable_dataset(), batch_size=None, num_workers=0))) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_pin_memory_without_cuda_warns_and_passes_through(tok):
    with pytest.warns(UserWarning, match="without CUDA"):
        pinned = pipe(tok).pin_memory()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = list(pinned)
    assert len(batches) == len(pipe(tok)) and not batches[0].input_ids.is_pinned()


@pytest.mark.parametrize("keep", [(), ["idx"], "all"])
def test_map_style_and_streaming_batches_hold_the_same_contents(tok, keep):
    kwargs = {"keep_columns": keep}
    mapped = list(Pipe.from_hf(data()).tokenize(tok, **kwargs).bucket_batch(batch_size=16, shuffle=False).pack())
    streamed = list(Pipe.from_hf(data().to_iterable_dataset()).tokenize(tok, **kwargs)
                    .bucket_batch(batch_size=16, shuffle=False, buffer_size=10_000).pack())

    def contents(batches):
        rows = {}
        for b in batches:
            order = b.positions.tolist()
            for r, pos in enumerate(order):
                rows[pos] = {k: (v[r].tolist() if isinstance(v, torch.Tensor) else v[r])
                             for k, v in b.items() if k not in ("input_ids", "attention_mask")}
                rows[pos]["ids"] = b.input_ids[r, : b.lengths[r]].tolist()
        return rows, {k: (type(v), getattr(v, "dtype", None)) for k, v in batches[0].items()}

    (rows_m, types_m), (rows_s, types_s) = contents(mapped), contents(streamed)
    assert rows_m == rows_s and types_m == types_s
    assert set(mapped[0].keys()) == {"input_ids", "attention_mask", "lengths", "labels", "num_tokens",
                                     *({"idx"} if keep == ["idx"] else {"idx", "source"} if keep == "all" else ())}
