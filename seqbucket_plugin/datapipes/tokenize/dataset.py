"""Map-style tokenization of Hugging Face ``datasets.Dataset`` objects: :func:`tokenize_dataset`
(text classification) and :func:`tokenize_tagged_dataset` (sequence tagging), each one batched
``Dataset.map`` over Arrow tables whose function pickles deterministically, so ``datasets``
fingerprints it the same in every process and reuses its cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import pyarrow as pa
from tokenizers import Tokenizer

from seqbucket_plugin.datapipes.tokenize.encode import (
    _encode_tagged_arrays,
    _encode_text_arrays,
    _tags_to_ids,
)
from seqbucket_plugin.datapipes.tokenize.report import TokenizeReport, _warn_truncated, tokenize_report
from seqbucket_plugin.datapipes.tokenize.tokenizer import TextTokenizer, as_text_tokenizer
from seqbucket_plugin.datapipes.tokenize.truncation import Truncation, TruncationKind
from seqbucket_plugin.errors import DataFormatError, MissingColumnError

if TYPE_CHECKING:
    import datasets

__all__ = ["tokenize_dataset", "tokenize_tagged_dataset"]


def _resolve_keep(keep_columns: Any, available: list[str], used: Sequence[str]) -> list[str]:
    """The input columns ``keep_columns`` names (``"all"``/``True``: every one not in ``used``), for
    the map functions and :class:`~seqbucket_plugin.datapipes.TokenizeNode` alike.

    Raises:
        MissingColumnError: a named column is not in ``available``.
    """
    if keep_columns is True or keep_columns == "all":
        return [c for c in available if c not in used]
    if keep_columns is None or keep_columns is False:
        return []
    if isinstance(keep_columns, str):
        keep_columns = [keep_columns]
    keep = list(keep_columns)
    for c in keep:
        if c not in available:
            raise MissingColumnError(c, available, "dataset (keep_columns)")
    return keep


class _TextMapFn:
    """Picklable batched ``map`` function (Arrow table in, Arrow table out). Deterministic
    pickle → stable ``datasets`` fingerprint."""

    def __init__(self, tokenizer, text_column, label_column, keep, truncation):
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.label_column = label_column
        self.keep = keep
        self.truncation = truncation

    def __call__(self, batch: pa.Table) -> pa.Table:
        text = batch.column(self.text_column)
        if text.null_count:
            raise DataFormatError(f"column {self.text_column!r} contains {text.null_count} null text(s)")
        ids, length, num_tokens = _encode_text_arrays(self.tokenizer, text.to_pylist(), self.truncation)
        cols = {"input_ids": ids, "length": pa.array(length), "num_tokens": pa.array(num_tokens)}
        if self.label_column is not None:
            cols["label"] = batch.column(self.label_column)
        for c in self.keep:
            cols[c] = batch.column(c)
        return pa.table(cols)


def _output_features(extra: dict[str, Any]) -> Any:
    import datasets

    return datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "length": datasets.Value("int32"),
        "num_tokens": datasets.Value("int32"),
        **extra,
    })


def _map_kwargs(batch_size: int, num_proc: int | None, cache_file_name: str | None, load_from_cache_file,
                desc: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"batched": True, "batch_size": batch_size, "num_proc": num_proc, "desc": desc}
    if cache_file_name is not None:
        kwargs["cache_file_name"] = cache_file_name
    if load_from_cache_file is not None:
        kwargs["load_from_cache_file"] = load_from_cache_file
    return kwargs


@overload
def tokenize_dataset(
    ds: Any,
    tokenizer: TextTokenizer | Tokenizer | Any,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    max_length: int | None = None,
    truncation: TruncationKind = "head",
    head_fraction: float = 0.25,
    add_special_tokens: bool = False,
    batch_size: int = 1000,
    num_proc: int | None = None,
    keep_columns: Sequence[str] | str | bool | None = (),
    cache_file_name: str | None = None,
    load_from_cache_file: bool | None = None,
    return_report: Literal[False] = False,
) -> datasets.Dataset: ...


@overload
def tokenize_dataset(
    ds: Any,
    tokenizer: TextTokenizer | Tokenizer | Any,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    max_length: int | None = None,
    truncation: TruncationKind = "head",
    head_fraction: float = 0.25,
    add_special_tokens: bool = False,
    batch_size: int = 1000,
    num_proc: int | None = None,
    keep_columns: Sequence[str] | str | bool | None = (),
    cache_file_name: str | None = None,
    load_from_cache_file: bool | None = None,
    return_report: Literal[True],
) -> tuple[datasets.Dataset, TokenizeReport]: ...


def tokenize_dataset(
    ds: Any,
    tokenizer: TextTokenizer | Tokenizer | Any,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    max_length: int | None = None,
    truncation: TruncationKind = "head",
    head_fraction: float = 0.25,
    add_special_tokens: bool = False,
    batch_size: int = 1000,
    num_proc: int | None = None,
    keep_columns: Sequence[str] | str | bool | None = (),
    cache_file_name: str | None = None,
    load_from_cache_file: bool | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, TokenizeReport]:
    """Tokenize a text-classification ``datasets.Dataset`` with a cached batched ``map``.

    The map function is a deterministic picklable object, so a second call with the same
    dataset, tokenizer and arguments loads the cached Arrow file instead of re-encoding
    (for datasets backed by cache files, e.g. from ``load_dataset``; in-memory datasets are
    never cached by ``datasets``).

    Args:
        ds: the dataset.
        tokenizer: a :class:`TextTokenizer`, a ``tokenizers.Tokenizer`` or a ``transformers`` fast
            tokenizer (wrapped with :func:`as_text_tokenizer`).
        text_column: column of ``str`` texts (no nulls).
        label_column: copied to the output as ``label``; ``None`` for unlabelled data.
        max_length: maximum ``length`` (BOS/EOS included); ``None`` = no truncation.
        truncation: ``"head"``, ``"tail"`` or ``"head+tail"`` (:mod:`~seqbucket_plugin.datapipes.tokenize.truncation`).
        head_fraction: share of the budget kept from the head in ``"head+tail"``.
        add_special_tokens: prepend BOS / append EOS (whichever the tokenizer has).
        batch_size, num_proc, cache_file_name, load_from_cache_file: passed to ``Dataset.map``.
        keep_columns: other input columns to keep (names), ``"all"``/``True`` for all of
            them, ``()`` for none.
        return_report: also return the :class:`TokenizeReport`.

    Returns:
        ``datasets.Dataset`` with columns ``input_ids`` (``list<int32>``), ``length``
        (int32), ``num_tokens`` (int32, pre-truncation length), ``label`` (as in the input,
        if ``label_column``) and ``keep_columns``; or ``(dataset, report)``. Logs a warning
        with the number of truncated examples.

    Raises:
        MissingColumnError: ``text_column``, ``label_column`` or a kept column is absent.
        DataFormatError: a text is null.
        ValueError: bad ``truncation``/``head_fraction``/``max_length``.
        SeqBucketError: ``add_special_tokens`` but the tokenizer has no BOS/EOS.
    """
    available = list(ds.column_names)
    if text_column not in available:
        raise MissingColumnError(text_column, available, "dataset (text_column)")
    if label_column is not None and label_column not in available:
        raise MissingColumnError(label_column, available, "dataset (label_column)")
    tokenizer = as_text_tokenizer(tokenizer)
    cut = Truncation.of(tokenizer, max_length=max_length, truncation=truncation, head_fraction=head_fraction,
                        add_special_tokens=add_special_tokens)
    keep = _resolve_keep(keep_columns, available, [text_column, label_column])
    keep = [c for c in keep if c not in ("input_ids", "length", "num_tokens", "label")]
    fn = _TextMapFn(tokenizer, text_column, label_column, keep, cut)
    extra = {} if label_column is None else {"label": ds.features[label_column]}
    extra.update({c: ds.features[c] for c in keep})
    out = ds.with_format("arrow").map(
        fn, remove_columns=available, features=_output_features(extra),
        **_map_kwargs(batch_size, num_proc, cache_file_name, load_from_cache_file, "Tokenizing"),
    ).with_format(None)
    report = tokenize_report(out)
    _warn_truncated(report, max_length, "tokenize_dataset")
    return (out, report) if return_report else out


class _TaggedMapFn:
    """The tagging counterpart of :class:`_TextMapFn` (same pickling guarantee)."""

    def __init__(self, tokenizer, tokens_column, tags_column, subword, keep, truncation, tag_to_id, return_word_ids):
        self.tokenizer = tokenizer
        self.tokens_column = tokens_column
        self.tags_column = tags_column
        self.subword = subword
        self.keep = keep
        self.truncation = truncation
        self.tag_to_id = None if tag_to_id is None else dict(sorted(tag_to_id.items()))
        self.return_word_ids = return_word_ids

    def __call__(self, batch: pa.Table) -> pa.Table:
        words = batch.column(self.tokens_column)
        tags = _tags_to_ids(batch.column(self.tags_column), self.tag_to_id)
        ids, length, num_tokens, labels, word_ids = _encode_tagged_arrays(
            self.tokenizer, words.to_pylist(), tags, subword=self.subword, truncation=self.truncation,
        )
        cols = {"input_ids": ids, "length": pa.array(length), "num_tokens": pa.array(num_tokens), "labels": labels}
        if self.return_word_ids:
            cols["word_ids"] = word_ids
        for c in self.keep:
            cols[c] = batch.column(c)
        return pa.table(cols)


@overload
def tokenize_tagged_dataset(
    ds: Any,
    tokenizer: TextTokenizer | Tokenizer | Any,
    *,
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    subword: bool = False,
    max_length: int | None = None,
    truncation: TruncationKind = "head",
    head_fraction: float = 0.25,
    add_special_tokens: bool = False,
    tag_to_id: Mapping[str, int] | None = None,
    return_word_ids: bool | None = None,
    batch_size: int = 1000,
    num_proc: int | None = None,
    keep_columns: Sequence[str] | str | bool | None = (),
    cache_file_name: str | None = None,
    load_from_cache_file: bool | None = None,
    return_report: Literal[False] = False,
) -> datasets.Dataset: ...


@overload
def tokenize_tagged_dataset(
    ds: Any,
    tokenizer: TextTokenizer | Tokenizer | Any,
    *,
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    subword: bool = False,
    max_length: int | None = None,
    truncation: TruncationKind = "head",
    head_fraction: float = 0.25,
    add_special_tokens: bool = False,
    tag_to_id: Mapping[str, int] | None = None,
    return_word_ids: bool | None = None,
    batch_size: int = 1000,
    num_proc: int | None = None,
    keep_columns: Sequence[str] | str | bool | None = (),
    cache_file_name: str | None = None,
    load_from_cache_file: bool | None = None,
    return_report: Literal[True],
) -> tuple[datasets.Dataset, TokenizeReport]: ...


def tokenize_tagged_dataset(
    ds: Any,
    tokenizer: TextTokenizer | Tokenizer | Any,
    *,
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    subword: bool = False,
    max_length: int | None = None,
    truncation: TruncationKind = "head",
    head_fraction: float = 0.25,
    add_special_tokens: bool = False,
    tag_to_id: Mapping[str, int] | None = None,
    return_word_ids: bool | None = None,
    batch_size: int = 1000,
    num_proc: int | None = None,
    keep_columns: Sequence[str] | str | bool | None = (),
    cache_file_name: str | None = None,
    load_from_cache_file: bool | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, TokenizeReport]:
    """Tokenize a sequence-tagging dataset of pre-tokenized words (cached batched ``map``).

    * ``subword=False`` (word-level): exactly one id per word. Each word is normalised by
      the tokenizer's normaliser (e.g. lower-cased) and looked up whole, never split at
      punctuation; out-of-vocabulary words get ``unk_id``. ``labels`` = the tags.
    * ``subword=True``: words are encoded with ``is_pretokenized=True``; each word's tag goes
      on its first piece and ``-100`` (:data:`IGNORE_INDEX`) on its other pieces.

    BOS/EOS (``add_special_tokens``) get label ``-100`` and word id ``-1``.

    Args:
        tokens_column: ``list<str>`` words per example.
        tags_column: ``list<int>`` tags (e.g. ``Sequence(ClassLabel)``), or ``list<str>``
            with ``tag_to_id``; one per word.
        return_word_ids: add ``word_ids`` (``list<int32>``: the word index of each id, ``-1``
            for BOS/EOS) to map predictions back to words; default: only when ``subword``.
        others: as in :func:`tokenize_dataset`.

    Returns:
        ``datasets.Dataset`` with ``input_ids`` (``list<int32>``), ``length`` (int32, number
        of ids), ``num_tokens`` (int32, before truncation), ``labels`` (``list<int32>``, one
        per id), optionally ``word_ids``, and ``keep_columns``; or ``(dataset, report)``.

    Raises:
        MissingColumnError: a named column is absent.
        DataFormatError: an example has different numbers of words and tags.
        UnknownLabelError: a string tag is not in ``tag_to_id``.
        SeqBucketError: string tags without ``tag_to_id``.
    """
    import datasets

    available = list(ds.column_names)
    for col, what in ((tokens_column, "tokens_column"), (tags_column, "tags_column")):
        if col not in available:
            raise MissingColumnError(col, available, f"dataset ({what})")
    tokenizer = as_text_tokenizer(tokenizer)
    cut = Truncation.of(tokenizer, max_length=max_length, truncation=truncation, head_fraction=head_fraction,
                        add_special_tokens=add_special_tokens)
    keep = _resolve_keep(keep_columns, available, [tokens_column, tags_column])
    keep = [c for c in keep if c not in ("input_ids", "length", "num_tokens", "labels", "word_ids")]
    fn = _TaggedMapFn(tokenizer, tokens_column, tags_column, subword, keep, cut, tag_to_id,
                      subword if return_word_ids is None else return_word_ids)
    extra = {"labels": datasets.List(datasets.Value("int32"))}
    if fn.return_word_ids:
        extra["word_ids"] = datasets.List(datasets.Value("int32"))
    extra.update({c: ds.features[c] for c in keep})
    out = ds.with_format("arrow").map(
        fn, remove_columns=available, features=_output_features(extra),
        **_map_kwargs(batch_size, num_proc, cache_file_name, load_from_cache_file, "Tokenizing (tagged)"),
    ).with_format(None)
    report = tokenize_report(out)
    _warn_truncated(report, max_length, "tokenize_tagged_dataset")
    return (out, report) if return_report else out
