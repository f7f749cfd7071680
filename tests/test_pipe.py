"""The fluent chain end to end: map-style and streaming, resume through the Loader."""

from __future__ import annotations

import datasets
import pytest
import torch
from torchdata.nodes import Loader

from seqbucket_plugin.datapipes import BucketBatcher, Pipe, TextTokenizer


@pytest.fixture(scope="module")
def reviews():
    words = ["good", "bad", "plot", "actor", "film", "scene", "boring", "great"]
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + (i * 37) % 90)) for i in range(400)]
    return datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(400)]})


@pytest.fixture(scope="module")
def tokenizer(reviews):
    return TextTokenizer.train(reviews, kind="word")


def _signature(batches):
    return [(b.input_ids.tolist(), b.labels.tolist()) for b in batches]


@pytest.mark.parametrize("streaming", [False, True])
def test_chain_to_packed_batches(reviews, tokenizer, streaming):
    source = reviews.to_iterable_dataset(num_shards=4) if streaming else reviews
    pipe = Pipe.from_hf(source).tokenize(tokenizer).bucket_batch(max_tokens=512, buffer_size=128).pack()
    assert isinstance(pipe.batcher, BucketBatcher)
    batches = list(pipe.loader())
    assert sum(b.batch_size for b in batches) == 400
    for b in batches:
        assert b.batch_size * b.input_ids.shape[1] <= 512
        assert torch.all(b.lengths[:-1] >= b.lengths[1:])
        assert (b.input_ids[b.mask] != tokenizer.pad_id).all()
    assert pipe.stats.examples == 400 and 0.5 < pipe.stats.padding_efficiency <= 1.0


@pytest.mark.parametrize("streaming", [False, True])
def test_chain_resumes_through_loader_state(reviews, tokenizer, streaming):
    def build():
        source = reviews.to_iterable_dataset(num_shards=4) if streaming else reviews
        return Pipe.from_hf(source).tokenize(tokenizer).bucket_batch(max_tokens=300, buffer_size=100).pack()

    reference = _signature(build().loader())
    loader = build().loader()
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    state = loader.state_dict()
    resumed = build().loader()
    resumed.load_state_dict(state)
    assert _signature(head) + _signature(resumed) == reference


@pytest.mark.parametrize("seen_before", [5, 400])
def test_a_stream_iterated_before_still_gives_every_example_each_epoch(reviews, tokenizer, seen_before):
    """``datasets`` keeps the position of a stream's latest iterator in the dataset object: a user
    who peeked at it (``next(iter(ds))``), or went through it, must still get all 400 in epoch 0."""
    stream = reviews.to_iterable_dataset(num_shards=4)
    it = iter(stream)
    for _ in range(seen_before):
        next(it)
    loader = Pipe.from_hf(stream).tokenize(tokenizer).bucket_batch(max_tokens=512, buffer_size=128).pack().loader()
    for _ in range(2):
        assert sum(b.batch_size for b in loader) == 400


def test_node_composes_with_torchdata(reviews, tokenizer):
    pipe = Pipe.from_hf(reviews).tokenize(tokenizer).bucket_batch(batch_size=16).pack().prefetch(2)
    batches = list(Loader(pipe.node))
    assert sum(b.batch_size for b in batches) == 400
    mapped = Pipe.from_hf(reviews).tokenize(tokenizer).bucket_batch(batch_size=16).pack().map(
        lambda b: b.batch_size, num_workers=2)
    assert sum(mapped.loader()) == 400


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["thread", "process"])
@pytest.mark.parametrize("streaming", [False, True])
def test_collation_in_workers_keeps_order_and_state(reviews, tokenizer, method, streaming):
    """pack(num_workers=2): the same batches in the same order as in-line collation, and the
    loader's state restores exactly mid-epoch and across epochs (torchdata's contract)."""
    from seqbucket_plugin.testing import check_save_load_state

    def build(workers):
        source = reviews.to_iterable_dataset(num_shards=4) if streaming else reviews
        return (Pipe.from_hf(source).tokenize(tokenizer).bucket_batch(max_tokens=512, buffer_size=128)
                .pack(num_workers=workers, method=method))

    assert _signature(build(2).loader()) == _signature(build(0).loader())
    check_save_load_state(build(2).node, midpoint=7, equal=lambda a, b: _signature(a) == _signature(b))
