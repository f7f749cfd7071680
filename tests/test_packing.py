"""PackedBatch and collation: sorting, order restoration, padding, labels, devices."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from conftest import make_examples
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pad_packed_sequence

from seqbucket_plugin import DataFormatError, MissingColumnError
from seqbucket_plugin.datapipes import LABEL_PAD_ID, collate_packed, collate_table


def test_sorted_descending_and_order_restored():
    examples = make_examples([3, 7, 0, 5, 7])
    batch = collate_packed(examples)
    assert batch.lengths.tolist() == [7, 7, 5, 3, 0]
    assert batch.lengths.dtype == torch.int64 and batch.lengths.device.type == "cpu"
    assert batch.sorted_indices.tolist() == [1, 4, 3, 0, 2], "stable sort: ties keep the caller's order"
    restored = batch.restore_order(batch.lengths)
    assert restored.tolist() == [3, 7, 0, 5, 7]
    assert batch.extras["id"][batch.unsorted_indices].tolist() == [0, 1, 2, 3, 4]
    assert batch.labels.tolist() == [1, 0, 1, 0, 0]
    for row, index in enumerate(batch.sorted_indices.tolist()):
        n = examples[index]["length"]
        assert batch.input_ids[row, :n].tolist() == examples[index]["input_ids"]
        assert (batch.input_ids[row, n:] == 0).all()
    assert batch.mask.sum(1).tolist() == batch.lengths.tolist()


def test_pad_to_multiple_and_pad_id():
    batch = collate_packed(make_examples([3, 9]), pad_id=5, pad_to_multiple_of=8)
    assert batch.input_ids.shape == (2, 16)
    assert (batch.input_ids[1, 3:] == 5).all()
    assert batch.padding_efficiency == pytest.approx(12 / 32)


def test_token_labels_padded_with_minus_100():
    examples = [{"input_ids": [1, 2, 3], "length": 3, "labels": [4, 5, 6]},
                {"input_ids": [7], "length": 1, "labels": [8]}]
    batch = collate_packed(examples, pad_to_multiple_of=4)
    assert batch.labels.tolist() == [[4, 5, 6, LABEL_PAD_ID], [8, LABEL_PAD_ID, LABEL_PAD_ID, LABEL_PAD_ID]]


def test_extras_carried_through_sorted():
    examples = [{"input_ids": [1], "length": 1, "label": 0, "name": "a", "score": 0.5},
                {"input_ids": [1, 2], "length": 2, "label": 1, "name": "b", "score": 1.5}]
    batch = collate_packed(examples)
    assert batch.extras["name"] == ["b", "a"]
    assert batch.extras["score"].tolist() == [1.5, 0.5]


def test_pack_to_packed_sequence_round_trip():
    batch = collate_packed(make_examples([4, 2, 0, 3]))
    embedded = torch.randn(batch.batch_size, batch.input_ids.shape[1], 3)
    packed = batch.pack(embedded)
    assert packed.batch_sizes.tolist() == [3, 3, 2, 1]
    unpacked, lengths = pad_packed_sequence(packed, batch_first=True)
    assert lengths.tolist() == [4, 3, 2]
    mask = batch.mask[:3].unsqueeze(-1)
    assert torch.equal(unpacked * mask, embedded[:3, :4] * mask)
    with pytest.raises(ValueError, match="empty"):
        collate_packed(make_examples([0, 0])).pack(torch.zeros(2, 0, 3))


def test_to_keeps_lengths_on_cpu():
    batch = collate_packed(make_examples([2, 1]))
    moved = batch.to("meta")
    assert moved.input_ids.device.type == "meta" and moved.labels.device.type == "meta"
    assert moved.lengths.device.type == "cpu" and moved.unsorted_indices.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory():
    batch = collate_packed(make_examples([2, 1])).pin_memory()
    assert batch.input_ids.is_pinned() and batch.lengths.is_pinned()


def test_bad_input_errors():
    with pytest.raises(MissingColumnError, match="available columns"):
        collate_packed([{"input_ids": [1]}])
    with pytest.raises(DataFormatError, match="length=3 but input_ids has 2"):
        collate_packed([{"input_ids": [1, 2], "length": 3}])
    with pytest.raises(ValueError, match="empty list"):
        collate_packed([])


def test_pin_memory_node_pins_packed_batches(monkeypatch):
    """torchdata's PinMemory node reaches PackedBatch.pin_memory (real pinning needs CUDA).

    On a CPU-only build the CUDA calls are stubbed and ``Tensor.pin_memory`` marks its result, so
    the test checks the plumbing: every tensor of every batch goes through ``pin_memory`` and the
    node's state still resumes.
    """
    from torchdata.nodes import IterableWrapper, PinMemory

    pinned = set()

    def fake_pin(tensor, device=None):
        copy = tensor.clone()
        pinned.add(id(copy))
        return copy

    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batches = [make_examples([3, 1, 2]), make_examples([5, 4])]
    node = PinMemory(IterableWrapper([collate_packed(b) for b in batches]))
    out = list(node)
    assert [b.lengths.tolist() for b in out] == [[3, 2, 1], [5, 4]]
    if not torch.cuda.is_available():
        for batch in out:
            for tensor in (batch.input_ids, batch.lengths, batch.labels, batch.unsorted_indices):
                assert id(tensor) in pinned


# ------------------------------------------------------------------ the vectorised Arrow path
def _same_batch(a, b):
    assert torch.equal(a.input_ids, b.input_ids) and a.input_ids.dtype == b.input_ids.dtype
    assert torch.equal(a.lengths, b.lengths)
    assert torch.equal(a.sorted_indices, b.sorted_indices) and torch.equal(a.unsorted_indices, b.unsorted_indices)
    assert (a.labels is None) == (b.labels is None)
    if a.labels is not None:
        assert torch.equal(a.labels, b.labels) and a.labels.dtype == b.labels.dtype
    assert a.extras.keys() == b.extras.keys()
    for key, value in a.extras.items():
        other = b.extras[key]
        if isinstance(value, torch.Tensor):
            assert isinstance(other, torch.Tensor) and value.dtype == other.dtype and torch.equal(value, other), key
        else:
            assert value == other, key


def _truncated(rows, limit):
    out = []
    for row in rows:
        row = dict(row)
        if limit is not None and row["length"] > limit:
            row["input_ids"] = row["input_ids"][:limit]
            if isinstance(row.get("labels"), list):
                row["labels"] = row["labels"][:limit]
            row["length"] = limit
        out.append(row)
    return out


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=30), labels=st.sampled_from(["seq", "token", None]),
       multiple=st.sampled_from([None, 1, 8]), limit=st.sampled_from([None, 1, 7, 25]), pad_id=st.integers(0, 3))
def test_collate_table_equals_collate_packed(lengths, labels, multiple, limit, pad_id):
    """The Arrow path gives exactly the PackedBatch of the row path (after the batcher's truncation)."""
    rows = []
    for i, n in enumerate(lengths):
        row = {"input_ids": [(i * 7 + j) % 50 + 1 for j in range(n)], "length": n}
        if labels == "seq":
            row["label"] = i % 3
        elif labels == "token":
            row["labels"] = [(i + j) % 5 for j in range(n)]
        row.update(idx=i, score=i / 4, word=f"w{i}", flag=bool(i % 2))
        rows.append(row)
    table = pa.Table.from_pylist(rows)
    got = collate_table(table, pad_id=pad_id, pad_to_multiple_of=multiple, truncate_to=limit)
    want = collate_packed(_truncated(rows, limit), pad_id=pad_id, pad_to_multiple_of=multiple)
    _same_batch(got, want)


def test_collate_table_errors_name_the_example():
    with pytest.raises(DataFormatError, match="example 1: length=5 but input_ids has 2 ids"):
        collate_table(pa.table({"input_ids": [[1], [1, 2]], "length": [1, 5]}))
    with pytest.raises(DataFormatError, match="example 0: 1 token labels for 2 ids"):
        collate_table(pa.table({"input_ids": [[1, 2]], "length": [2], "labels": [[0]]}))
    with pytest.raises(MissingColumnError, match="available columns"):
        collate_table(pa.table({"ids": [[1]], "length": [1]}))


def test_pipe_packs_map_style_batches_in_arrow_form():
    """bucket_batch(...).pack() on a map-style dataset takes the Arrow path and yields exactly the
    batches of the row path (a map() in between keeps the rows)."""
    import datasets

    from seqbucket_plugin.datapipes import ColumnarBatch, Pipe

    lengths = [int(n) for n in torch.randint(0, 60, (300,), generator=torch.Generator().manual_seed(0))]
    ds = datasets.Dataset.from_list(make_examples(lengths))
    fast = Pipe.from_hf(ds).bucket_batch(max_tokens=256, oversize="truncate", seed=3).pack(pad_id=0)
    assert fast.batcher.columnar
    slow = Pipe.from_hf(ds).bucket_batch(max_tokens=256, oversize="truncate", seed=3).map(list).pack(pad_id=0)
    assert not slow.batcher.columnar
    a, b = list(fast.loader()), list(slow.loader())
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        _same_batch(x, y)
    assert isinstance(fast.batcher._fetch(fast.batcher._plan[0]), ColumnarBatch)
