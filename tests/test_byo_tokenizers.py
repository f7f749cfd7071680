"""Bring your own tokenizer: a ``tokenizers.Tokenizer`` or a ``transformers`` fast tokenizer goes
wherever a ``TextTokenizer`` does, with its special tokens found; a tokenizer without a padding
token needs an explicit choice (never a silent real id)."""

from __future__ import annotations

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from seqbucket_plugin.datapipes import Pipe, TextTokenizer, TokenizeNode, tokenize_dataset
from seqbucket_plugin.datapipes.sources import IterableDatasetSource
from seqbucket_plugin.datapipes.tokenize import MissingPadTokenError, TokenizerTypeError, as_text_tokenizer
from seqbucket_plugin.errors import SeqBucketError

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
TEXTS = ["the cat sat on the mat", "a dog ran", "the dog sat", "a cat", "the mat ran on a dog sat"]


def word_tokenizer(specials=("[PAD]", "[UNK]")) -> Tokenizer:
    vocab = {t: i for i, t in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]" if "[UNK]" in vocab else None))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def dataset() -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": TEXTS, "label": [0, 1, 0, 1, 0]})


def test_pipe_tokenize_takes_a_tokenizers_tokenizer():
    tok = word_tokenizer()
    pipe = Pipe.from_hf(dataset()).tokenize(tok).bucket_batch(batch_size=8, shuffle=False).pack()
    batch = next(iter(pipe.loader()))
    assert isinstance(pipe.tokenizer, TextTokenizer) and pipe.tokenizer.pad_id == 0
    assert batch.pad_id == 0 and batch.batch_size == 5
    first = batch.input_ids[batch.positions.argsort()]
    assert first[0, :6].tolist() == tok.encode(TEXTS[0]).ids


def test_tokenize_dataset_and_streaming_node_take_a_tokenizers_tokenizer():
    tok = word_tokenizer()
    out = tokenize_dataset(dataset(), tok)
    assert out["input_ids"][2] == tok.encode("the dog sat").ids
    stream = dataset().to_iterable_dataset()
    node = TokenizeNode(IterableDatasetSource(stream), tok)
    node.reset()
    assert node.next()["input_ids"] == tok.encode(TEXTS[0]).ids


def test_a_tokenizer_without_a_pad_token_needs_an_explicit_pad_id():
    tok = word_tokenizer(specials=("[UNK]",))  # id 0 is the real token [UNK]
    pipe = Pipe.from_hf(dataset()).tokenize(tok).bucket_batch(batch_size=8, shuffle=False)
    with pytest.raises(MissingPadTokenError, match="pad_id=") as err:
        pipe.pack()
    assert isinstance(err.value, SeqBucketError)
    batch = next(iter(pipe.pack(pad_id=len(WORDS) + 1).loader()))
    assert batch.pad_id == len(WORDS) + 1
    assert (batch.input_ids[~batch.mask] == len(WORDS) + 1).all()


def test_not_a_tokenizer_names_the_fix():
    with pytest.raises(TokenizerTypeError, match="tokenizers.Tokenizer") as err:
        TextTokenizer(object())
    assert isinstance(err.value, TypeError) and isinstance(err.value, SeqBucketError)

    class SlowTokenizer:  # what a slow transformers tokenizer looks like
        is_fast = False

    with pytest.raises(TokenizerTypeError, match="use_fast=True"):
        Pipe.from_hf(dataset()).tokenize(SlowTokenizer())


def test_transformers_fast_tokenizer():
    transformers = pytest.importorskip("transformers")
    # special tokens with names the candidates list does not know: only the HF tokenizer can say
    vocab = {t: i for i, t in enumerate(["<blank>", "<oov>", "<start>", "<end>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<oov>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<blank>", unk_token="<oov>",
                                              bos_token="<start>", eos_token="<end>")
    text = TextTokenizer(hf)
    assert (text.pad_id, text.unk_id, text.bos_id, text.eos_id) == (0, 1, 2, 3)
    assert as_text_tokenizer(hf).encode("the cat", add_special_tokens=True) == [2, 4, 5, 3]
    pipe = Pipe.from_hf(dataset()).tokenize(hf).bucket_batch(batch_size=8, shuffle=False).pack()
    batch = next(iter(pipe.loader()))
    assert batch.pad_id == 0
    row = batch.input_ids[batch.positions.argsort()][1]
    assert row.tolist()[:3] == hf("a dog ran", add_special_tokens=False)["input_ids"]
    assert tokenize_dataset(dataset(), hf)["input_ids"][3] == hf("a cat", add_special_tokens=False)["input_ids"]


def test_transformers_tokenizer_without_pad_token():
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=word_tokenizer(specials=("[UNK]",)),
                                              unk_token="[UNK]")
    with pytest.raises(MissingPadTokenError):
        Pipe.from_hf(dataset()).tokenize(hf).bucket_batch(batch_size=8).pack()
    batch = next(iter(Pipe.from_hf(dataset()).tokenize(hf).bucket_batch(batch_size=8).pack(pad_id=99).loader()))
    assert torch.all(batch.input_ids[~batch.mask] == 99)
