"""Batches of texts, or of pre-tokenized words with their tags, encoded into Arrow id arrays: one
Rust ``encode_batch`` call per batch, then label alignment, truncation and BOS/EOS vectorised over
the flattened ids. The map-style functions and the streaming node share these kernels, so both give
the same ids."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqbucket_plugin.constants import IGNORE_INDEX
from seqbucket_plugin.datapipes.tokenize.truncation import Truncation, _finish_ids
from seqbucket_plugin.errors import DataFormatError, SeqBucketError, UnknownLabelError

if TYPE_CHECKING:
    from seqbucket_plugin.datapipes.tokenize.tokenizer import TextTokenizer


def _ragged(ids: list[list[int]] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 values, int64 offsets of length n+1) of a list of id lists."""
    arr = ids if isinstance(ids, pa.Array) else pa.array(ids, type=pa.list_(pa.int32()))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    values = values[offsets[0] : offsets[-1]]
    return values, offsets - offsets[0]


def _encode_text_arrays(
    tokenizer: TextTokenizer,
    texts: list[str],
    truncation: Truncation,
) -> tuple[pa.ListArray, np.ndarray, np.ndarray]:
    """Encode ``texts`` with one batched call, then truncate and frame them.

    Returns (input_ids list<int32>, length int32[n], num_tokens int32[n])."""
    encs = tokenizer._encode(texts)
    values, offsets = _ragged([e.ids for e in encs])
    ids, length, num_tokens, _ = _finish_ids(values, offsets, truncation)
    return ids, length, num_tokens


def _encode_tagged_arrays(
    tokenizer: TextTokenizer,
    words: list[list[str]],
    tags: pa.Array,
    *,
    subword: bool,
    truncation: Truncation,
) -> tuple[pa.ListArray, np.ndarray, np.ndarray, pa.ListArray, pa.ListArray]:
    """Encode pre-tokenized words; ``tags`` is a list<int> array aligned with ``words``.

    Returns (input_ids, length, num_tokens, labels, word_ids).

    Raises:
        DataFormatError: an example has different numbers of words and tags.
        SeqBucketError: word-level, a word encodes to no token and there is no unknown token.
    """
    tag_values, tag_offsets = _ragged(tags.cast(pa.list_(pa.int32())))
    n_words = np.diff(tag_offsets)
    word_counts = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    bad = np.nonzero(word_counts != n_words)[0]
    if len(bad):
        i = int(bad[0])
        raise DataFormatError(f"example {i} has {word_counts[i]} tokens but {n_words[i]} tags")
    encs = tokenizer._encode_words(words, subword)
    # word_ids: None only for special tokens, which we never add here.
    wid_values, offsets = _ragged(pa.array([e.word_ids for e in encs], type=pa.list_(pa.int32())))
    wid_values = np.nan_to_num(np.asarray(wid_values, dtype=np.float64), nan=-1).astype(np.int64)
    first = np.ones(len(wid_values), dtype=bool)
    first[1:] = wid_values[1:] != wid_values[:-1]
    first[offsets[:-1][np.diff(offsets) > 0]] = True  # each row's first piece
    first &= wid_values >= 0  # (None word ids only for special tokens, never added here)
    tag_index = np.repeat(tag_offsets[:-1], np.diff(offsets)) + np.maximum(wid_values, 0)
    if subword:
        id_values, _ = _ragged([e.ids for e in encs])
        label_values = np.where(first, tag_values[tag_index], IGNORE_INDEX)
        label_values = label_values.astype(np.int32)
        wid_out = wid_values.astype(np.int32)
        values, out_offsets = id_values, offsets
    else:
        # one id per word: the word's first piece (a word normally is exactly one piece);
        # a word that normalises to nothing gets the unknown id.
        unk = tokenizer.unk_id
        piece_ids, _ = _ragged([e.ids for e in encs])
        values = np.full(len(tag_values), -1 if unk is None else unk, dtype=np.int32)
        values[tag_index[first]] = piece_ids[first]
        if unk is None and (values < 0).any():
            raise SeqBucketError("a word encodes to no token and the tokenizer has no unknown token")
        label_values = tag_values.astype(np.int32)
        out_offsets = tag_offsets
        wid_out = (np.arange(len(tag_values), dtype=np.int64) - np.repeat(tag_offsets[:-1], n_words)).astype(np.int32)
    ids, length, num_tokens, (labels, word_ids) = _finish_ids(
        values, out_offsets, truncation, extra=((label_values, IGNORE_INDEX), (wid_out, -1)),
    )
    return ids, length, num_tokens, labels, word_ids


def _tags_to_ids(tags: pa.Array, tag_to_id: Mapping[str, int] | None) -> pa.Array:
    """list<int> tags as they are; list<str> tags mapped through ``tag_to_id``.

    Raises:
        DataFormatError: the tags are neither ints nor strings.
        SeqBucketError: string tags without ``tag_to_id``.
        UnknownLabelError: a string tag is not in ``tag_to_id``.
    """
    if isinstance(tags, pa.ChunkedArray):
        tags = tags.combine_chunks()
    value_type = tags.type.value_type
    if pa.types.is_integer(value_type):
        return tags
    if not pa.types.is_string(value_type) and not pa.types.is_large_string(value_type):
        raise DataFormatError(f"tags must be lists of int or str, got {tags.type}")
    if tag_to_id is None:
        raise SeqBucketError("tags are strings: pass tag_to_id={tag: id} (or cast the column to ClassLabel)")
    flat = tags.flatten()
    keys = pa.array(list(tag_to_id.keys()), type=pa.string())
    idx = pc.index_in(flat.cast(pa.string()), value_set=keys)
    if idx.null_count:
        unknown = pc.filter(flat, pc.is_null(idx)).unique().to_pylist()
        raise UnknownLabelError(f"tags not in tag_to_id: {unknown[:20]}")
    values = np.asarray(list(tag_to_id.values()), dtype=np.int32)[idx.to_numpy()]
    return pa.ListArray.from_arrays(tags.offsets, pa.array(values))
