"""Tokenizers learnt from data: the ``tokenizers`` pipelines (normaliser, pre-tokeniser, model,
decoder) behind :meth:`TextTokenizer.train <seqbucket_plugin.datapipes.TextTokenizer.train>` and
:func:`~seqbucket_plugin.datapipes.word_tokenizer`, and the training texts read in batches (a dataset
column is never copied whole into a Python list)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from seqbucket_plugin.datapipes.tokenize.special_tokens import _SPECIAL_CANDIDATES
from seqbucket_plugin.errors import MissingColumnError

__all__ = ["WORD_PAD", "WORD_UNK", "train_tokenizer", "word_level_tokenizer"]

WORD_PAD, WORD_UNK = "<pad>", "<unk>"
"""The padding and unknown tokens of :func:`word_level_tokenizer` (ids 0 and 1)."""


def train_tokenizer(
    texts: Iterable[str] | Any,
    *,
    kind: str,
    vocab_size: int,
    min_frequency: int,
    lowercase: bool,
    special_tokens: Sequence[str],
    strip_html_breaks: bool,
    text_column: str,
    batch_size: int,
    show_progress: bool,
) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` trained on ``texts``; the arguments and the pipeline are those of
    :meth:`TextTokenizer.train <seqbucket_plugin.datapipes.TextTokenizer.train>`.

    Raises:
        ValueError: unknown ``kind``, or no unknown token where one is needed.
        MissingColumnError: ``texts`` is a dataset without ``text_column``.
    """
    special_tokens = list(special_tokens)
    unk = next((t for t in _SPECIAL_CANDIDATES["unk_token"] if t in special_tokens), None)
    norm: list[normalizers.Normalizer] = []
    if strip_html_breaks:
        norm.append(normalizers.Replace(Regex(r"<br\s*/?>"), " "))
    norm.append(normalizers.NFKC())
    if lowercase:
        norm.append(normalizers.Lowercase())
    if kind == "word":
        if unk is None:
            raise ValueError("a word-level tokenizer needs an unknown token, e.g. '<unk>', in special_tokens")
        tok = Tokenizer(models.WordLevel(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            show_progress=show_progress,
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=unk, end_of_word_suffix="</w>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            end_of_word_suffix="</w>",
            show_progress=show_progress,
        )
    elif kind == "wordpiece":
        if unk is None:
            raise ValueError("a WordPiece tokenizer needs an unknown token, e.g. '<unk>', in special_tokens")
        tok = Tokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix="##"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            continuing_subword_prefix="##",
            show_progress=show_progress,
        )
    else:
        raise ValueError(f"kind must be 'word', 'bpe' or 'wordpiece', got {kind!r}")
    tok.normalizer = normalizers.Sequence(norm)
    batches, length = _text_batches(texts, text_column, batch_size)
    tok.train_from_iterator(batches, trainer=trainer, length=length)
    return tok


def word_level_tokenizer(sentences: Iterable[Sequence[str]], *, min_frequency: int, vocab_size: int,
                         lowercase: bool) -> Tokenizer:
    """A WordLevel ``tokenizers.Tokenizer`` over whole words (split on whitespace only).

    The vocabulary is :data:`WORD_PAD`, :data:`WORD_UNK` then the ``vocab_size - 2`` most frequent
    (normalised: NFKC, lower-cased if ``lowercase``) words seen at least ``min_frequency`` times;
    ties are broken alphabetically (deterministic).
    """
    norm = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()] if lowercase else [normalizers.NFKC()])
    counts: Counter[str] = Counter()
    for words in sentences:
        counts.update(norm.normalize_str(w) for w in words)
    kept = sorted((w for w, n in counts.items() if n >= min_frequency), key=lambda w: (-counts[w], w))
    vocab = {WORD_PAD: 0, WORD_UNK: 1}
    for w in kept[: max(0, vocab_size - 2)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=WORD_UNK))
    tok.normalizer = norm
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def _text_batches(texts: Any, text_column: str, batch_size: int) -> tuple[Iterator[list[str]], int | None]:
    """Iterate ``texts`` as lists of strings without materialising a whole dataset column."""
    import datasets

    column_type = getattr(datasets, "Column", None)  # datasets >= 4: ds["text"] is a lazy Column
    if column_type is not None and isinstance(texts, column_type):
        texts, text_column = texts.source, texts.column_name
        if not isinstance(texts, datasets.Dataset):  # nested column: plain iteration
            return _chunks(iter(datasets.Column(texts, text_column)), batch_size), None
    if isinstance(texts, datasets.Dataset):
        if text_column not in texts.column_names:
            raise MissingColumnError(text_column, texts.column_names, "dataset")
        table = texts.select_columns([text_column]).with_format("arrow")

        def gen() -> Iterator[list[str]]:
            for batch in table.iter(batch_size=batch_size):
                yield [t for t in batch.column(0).to_pylist() if t is not None]

        return gen(), math.ceil(len(texts) / batch_size)
    if isinstance(texts, datasets.IterableDataset):
        if texts.column_names is not None and text_column not in texts.column_names:
            raise MissingColumnError(text_column, texts.column_names, "dataset")
        return _chunks((row[text_column] for row in texts), batch_size), None
    if isinstance(texts, str):
        texts = [texts]
    return _chunks(iter(texts), batch_size), None


def _chunks(it: Iterator[Any], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in it:
        if t is None:
            continue
        if not isinstance(t, str):
            raise TypeError(f"expected str texts, got {type(t).__name__}")
        batch.append(t)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
