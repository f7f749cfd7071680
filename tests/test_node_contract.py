"""Every node of the project passes torchdata's save/load-state contract.

The node factories below are the single list of nodes; a new node is added here and gets every
check for free.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from conftest import make_examples
from torchdata.nodes import IterableWrapper

from seqbucket_plugin.datapipes import (
    BucketBatcher,
    IterableDatasetSource,
    MapDatasetSource,
    Pack,
    PackedBatch,
    Pipe,
    TextTokenizer,
    TokenizeNode,
)
from seqbucket_plugin.errors import StateDictError
from seqbucket_plugin.testing import check_save_load_state

LENGTHS = np.random.default_rng(7).integers(0, 40, 300)
EXAMPLES = make_examples(LENGTHS)


def _ids(items):
    """A comparable view of node outputs: ids of examples, batches or packed batches."""
    out = []
    for item in items:
        if isinstance(item, PackedBatch):
            out.append((item.extras["id"].tolist(), item.input_ids.tolist(), item.lengths.tolist()))
        elif isinstance(item, list):
            out.append([e["id"] for e in item])
        else:
            out.append(item["id"])
    return out


TEXTS = [{"text": " ".join(["a", "b", "c", "d"][: 1 + i % 4] * (1 + i % 9)), "label": i % 2, "id": i}
         for i in range(120)]
TOKENIZER = TextTokenizer.train([t["text"] for t in TEXTS], kind="word")


def _text_stream():
    return IterableDatasetSource(datasets.Dataset.from_list(TEXTS).to_iterable_dataset(num_shards=3))


def _map_source():
    return MapDatasetSource(datasets.Dataset.from_list(EXAMPLES), read_size=32)


def _stream_source():
    return IterableDatasetSource(datasets.Dataset.from_list(EXAMPLES).to_iterable_dataset(num_shards=4))


def _generated_stream(n: int):
    yield from EXAMPLES[:n]


NODE_FACTORIES = {
    "MapDatasetSource": _map_source,
    "IterableDatasetSource": _stream_source,
    # several reads per epoch, states taken inside a read (the midpoints 3 and 11)
    "IterableDatasetSource/read_size=5": lambda: IterableDatasetSource(
        datasets.Dataset.from_list(EXAMPLES).to_iterable_dataset(num_shards=4), read_size=5),
    "IterableDatasetSource/generator/read_size=4": lambda: IterableDatasetSource(
        datasets.IterableDataset.from_generator(_generated_stream, gen_kwargs={"n": 50}), read_size=4),
    "BucketBatcher/map/max_tokens": lambda: BucketBatcher(_map_source(), max_tokens=128),
    "BucketBatcher/map/batch_size": lambda: BucketBatcher(_map_source(), batch_size=8, drop_last=True),
    "BucketBatcher/map/truncate+multiple": lambda: BucketBatcher(
        _map_source(), max_tokens=24, pad_to_multiple_of=8, oversize="truncate"),
    "BucketBatcher/map/rank1of3": lambda: BucketBatcher(_map_source(), max_tokens=96, rank=1, world_size=3),
    "BucketBatcher/stream/max_tokens": lambda: BucketBatcher(_stream_source(), max_tokens=128, buffer_size=64),
    "BucketBatcher/stream/list": lambda: BucketBatcher(IterableWrapper(EXAMPLES), batch_size=8, buffer_size=50),
    "BucketBatcher/stream/skip+longest_first": lambda: BucketBatcher(
        IterableWrapper(EXAMPLES), max_tokens=30, oversize="skip", longest_first=True, buffer_size=70),
    "BucketBatcher/no-shuffle": lambda: BucketBatcher(_map_source(), max_tokens=128, shuffle=False),
    "Pack/map": lambda: Pack(BucketBatcher(_map_source(), max_tokens=128), pad_to_multiple_of=8),
    "Pack/stream": lambda: Pack(BucketBatcher(_stream_source(), max_tokens=128, buffer_size=100)),
    "TokenizeNode": lambda: TokenizeNode(_text_stream(), TOKENIZER, batch_size=16, max_length=20, keep_columns="all"),
    "Pipe/stream/tokenize+bucket+pack": lambda: Pipe.from_hf(
        datasets.Dataset.from_list(TEXTS).to_iterable_dataset(num_shards=2)
    ).tokenize(TOKENIZER, batch_size=32, keep_columns="all").bucket_batch(max_tokens=64, buffer_size=50).pack().node,
    "Pipe/map/tokenize+bucket+pack+prefetch": lambda: Pipe.from_hf(datasets.Dataset.from_list(TEXTS))
    .tokenize(TOKENIZER, keep_columns=["id"]).bucket_batch(max_tokens=64).pack().prefetch(2).node,
}


@pytest.mark.parametrize("name", sorted(NODE_FACTORIES))
@pytest.mark.parametrize("midpoint", [0, 3, 11])
def test_save_load_state_contract(name, midpoint):
    check_save_load_state(NODE_FACTORIES[name](), midpoint, equal=lambda a, b: _ids(a) == _ids(b))


@pytest.mark.parametrize("name", sorted(NODE_FACTORIES))
def test_state_dict_is_plain_data(name):
    """States hold indices and counters, never examples or tensors, so they save anywhere."""
    node = NODE_FACTORIES[name]()
    next(node)
    next(node)

    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                assert isinstance(k, (str, int)), k
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        else:
            assert value is None or isinstance(value, (int, float, str, bool)), type(value)
            assert not isinstance(value, torch.Tensor)

    walk(node.state_dict())


def test_stream_source_refuses_states_it_cannot_resume():
    node = IterableDatasetSource(datasets.Dataset.from_list(EXAMPLES).to_iterable_dataset(num_shards=4), read_size=5)
    for _ in range(7):
        next(node)
    state = node.state_dict()
    other = IterableDatasetSource(datasets.Dataset.from_list(EXAMPLES).to_iterable_dataset(num_shards=4), read_size=8)
    with pytest.raises(StateDictError, match="read_size=5"):
        other.reset(state)
    row_by_row = {k: v for k, v in state.items() if k not in ("offset", "read_size")}  # an earlier version's
    with pytest.raises(StateDictError, match="not a state of IterableDatasetSource"):
        other.reset(row_by_row)
    with pytest.raises(StateDictError, match="offset"):
        node.reset({**state, "offset": 6})


def test_stream_source_ranks_read_disjoint_parts_that_cover_the_stream():
    stream = datasets.Dataset.from_list(EXAMPLES).to_iterable_dataset(num_shards=4)
    seen = [[row["id"] for row in IterableDatasetSource(stream, rank=r, world_size=2, read_size=7)] for r in range(2)]
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [e["id"] for e in EXAMPLES]
