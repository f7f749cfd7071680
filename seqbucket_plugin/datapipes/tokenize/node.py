"""Streaming tokenization for ``torchdata.nodes`` pipelines: :class:`TokenizeNode` encodes chunks of
example dicts with one batched call, yields them one by one and resumes exactly from its state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from tokenizers import Tokenizer
from torchdata.nodes import BaseNode

from seqbucket_plugin.datapipes.tokenize.dataset import _resolve_keep
from seqbucket_plugin.datapipes.tokenize.encode import (
    _encode_tagged_arrays,
    _encode_text_arrays,
    _tags_to_ids,
)
from seqbucket_plugin.datapipes.tokenize.report import TokenizeReport
from seqbucket_plugin.datapipes.tokenize.tokenizer import TextTokenizer, as_text_tokenizer
from seqbucket_plugin.datapipes.tokenize.truncation import Truncation, TruncationKind
from seqbucket_plugin.errors import DataFormatError, MissingColumnError, StateDictError

__all__ = ["TokenizeNode"]


class TokenizeNode(BaseNode[dict]):
    """Streaming tokenisation for ``torchdata.nodes``: pulls up to ``batch_size`` example
    dicts from ``source``, encodes them with one ``encode_batch`` call and yields them one
    by one.

    Text mode (default) yields, per example, a dict with ``input_ids`` (``list[int]``),
    ``length`` (int), ``num_tokens`` (int, before truncation), ``label`` (from
    ``label_column``, if not None) and the ``keep_columns`` (names, ``"all"``/``True`` for every
    other key, ``()`` for none: the same columns as
    :func:`~seqbucket_plugin.datapipes.tokenize_dataset` /
    :func:`~seqbucket_plugin.datapipes.tokenize_tagged_dataset` keep with the same options, so
    map-style and streaming pipelines give batches with the same contents). Tagging mode
    (``tokens_column`` given) reads ``tokens_column`` words and ``tags_column`` int tags and yields
    ``labels`` (``list[int]``, one per id, ``-100`` off first pieces) instead of ``label`` (plus
    ``word_ids`` when ``subword``), dropping both input columns; see
    :func:`~seqbucket_plugin.datapipes.tokenize_tagged_dataset`.

    State is exact and cheap: the source's state at the start of the current chunk plus the
    offset within it (re-reading at most one chunk on restore), and the report counts.
    ``node.report`` counts what was yielded in the current epoch (since the last
    ``reset``).

    Raises (from ``next``):
        MissingColumnError: an example lacks a required key.
        DataFormatError: a null text, or words/tags counts differ.
    """

    SOURCE_KEY = "source"
    OFFSET_KEY = "offset"
    REPORT_KEY = "report"

    def __init__(
        self,
        source: BaseNode[dict],
        tokenizer: TextTokenizer | Tokenizer | Any,
        *,
        text_column: str = "text",
        label_column: str | None = "label",
        max_length: int | None = None,
        truncation: TruncationKind = "head",
        head_fraction: float = 0.25,
        add_special_tokens: bool = False,
        batch_size: int = 256,
        tokens_column: str | None = None,
        tags_column: str = "tags",
        subword: bool = False,
        tag_to_id: Mapping[str, int] | None = None,
        keep_columns: Sequence[str] | str | bool | None = (),
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        tokenizer = as_text_tokenizer(tokenizer)
        self._truncation = Truncation.of(tokenizer, max_length=max_length, truncation=truncation,
                                         head_fraction=head_fraction, add_special_tokens=add_special_tokens)
        self.source = source
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.label_column = label_column
        self.add_special_tokens = add_special_tokens
        self.batch_size = batch_size
        self.tokens_column = tokens_column
        self.tags_column = tags_column
        self.subword = subword
        self.tag_to_id = tag_to_id
        self.keep_columns = keep_columns
        self._chunk: list[dict] = []
        self._offset = 0
        self._chunk_state: dict[str, Any] | None = None
        self._counts = TokenizeReport()

    @property
    def max_length(self) -> int | None:
        """The longest ``input_ids`` yielded (BOS/EOS included), or None."""
        return self._truncation.max_length

    @property
    def truncation(self) -> TruncationKind:
        """Which ids a too long example keeps: ``"head"``, ``"tail"`` or ``"head+tail"``."""
        return self._truncation.kind

    @property
    def head_fraction(self) -> float:
        """Share of the budget kept from the head in ``"head+tail"`` truncation."""
        return self._truncation.head_fraction

    @property
    def report(self) -> TokenizeReport:
        """Counts over the examples yielded since the last reset (restored with the state)."""
        return self._counts

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._chunk = []
        self._offset = 0
        if initial_state is None:
            self.source.reset(None)
            self._chunk_state = None
            self._counts = TokenizeReport()
            return
        source_state, offset, counts = self._parse_state(initial_state)
        self.source.reset(source_state)
        self._chunk_state = source_state
        self._counts = counts
        if offset:
            self._fill()
            if offset > len(self._chunk):
                raise StateDictError(f"offset {offset} beyond the re-read chunk of {len(self._chunk)} examples")
            self._offset = offset

    def _parse_state(self, state: Any) -> tuple[Any, int, TokenizeReport]:
        """(source state, offset, counts) of a state from :meth:`get_state`; StateDictError otherwise."""
        if not isinstance(state, Mapping):
            raise StateDictError(f"not a TokenizeNode state: expected a dict, got {type(state).__name__}")
        missing = [k for k in (self.SOURCE_KEY, self.OFFSET_KEY, self.REPORT_KEY) if k not in state]
        if missing:
            raise StateDictError(f"not a TokenizeNode state: missing {missing}")
        offset, report = state[self.OFFSET_KEY], state[self.REPORT_KEY]
        if type(offset) is not int or offset < 0:
            raise StateDictError(f"TokenizeNode state: offset must be a non-negative int, got {offset!r}")
        fields = list(TokenizeReport.__dataclass_fields__)
        if (
            not isinstance(report, Mapping)
            or sorted(report) != sorted(fields)
            or any(type(report[k]) is not int or report[k] < 0 for k in fields)
        ):
            raise StateDictError(
                f"TokenizeNode state: report must map {fields} to non-negative ints, got {report!r}"
            )
        return state[self.SOURCE_KEY], offset, TokenizeReport(**report)

    def get_state(self) -> dict[str, Any]:
        if self._offset >= len(self._chunk):  # between chunks: no need to re-read anything
            state, offset = self.source.state_dict(), 0
        else:
            if self._chunk_state is None:
                self._chunk_state = self.source.state_dict()
            state, offset = self._chunk_state, self._offset
        return {self.SOURCE_KEY: state, self.OFFSET_KEY: offset, self.REPORT_KEY: self._counts.as_dict()}

    def next(self) -> dict:
        if self._offset >= len(self._chunk):
            self._fill()
        item = self._chunk[self._offset]
        self._offset += 1
        c = self._counts
        n, length = item["num_tokens"], item["length"]
        self._counts = TokenizeReport(
            examples=c.examples + 1,
            tokens=c.tokens + length,
            tokens_before_truncation=c.tokens_before_truncation + n,
            truncated=c.truncated + (n > length),
            truncated_tokens=c.truncated_tokens + n - length,
            max_num_tokens=max(c.max_num_tokens, n),
        )
        return item

    def _fill(self) -> None:
        self._chunk_state = self.source.state_dict()
        raw: list[dict] = []
        for _ in range(self.batch_size):
            try:
                raw.append(next(self.source))
            except StopIteration:
                break
        if not raw:
            self._chunk, self._offset = [], 0
            raise StopIteration
        self._chunk = self._encode_chunk(raw)
        self._offset = 0

    def _require(self, raw: list[dict], col: str) -> None:
        for ex in raw:
            if col not in ex:
                raise MissingColumnError(col, list(ex.keys()), "TokenizeNode input example")

    def _encode_chunk(self, raw: list[dict]) -> list[dict]:
        if self.tokens_column is None:
            self._require(raw, self.text_column)
            if self.label_column is not None:
                self._require(raw, self.label_column)
            texts = [ex[self.text_column] for ex in raw]
            if any(t is None for t in texts):
                raise DataFormatError(f"key {self.text_column!r} holds a null text")
            ids, length, num_tokens = _encode_text_arrays(self.tokenizer, texts, self._truncation)
            drop = {self.text_column, self.label_column}
            extra: dict[str, list] = {}
            if self.label_column is not None:
                extra["label"] = [ex[self.label_column] for ex in raw]
        else:
            self._require(raw, self.tokens_column)
            self._require(raw, self.tags_column)
            tags = _tags_to_ids(pa.array([ex[self.tags_column] for ex in raw]), self.tag_to_id)
            ids, length, num_tokens, labels, word_ids = _encode_tagged_arrays(
                self.tokenizer, [list(ex[self.tokens_column]) for ex in raw], tags, subword=self.subword,
                truncation=self._truncation,
            )
            drop = {self.tokens_column, self.tags_column}
            extra = {"labels": labels.to_pylist()}
            if self.subword:
                extra["word_ids"] = word_ids.to_pylist()
        ids_list = ids.to_pylist()
        length_list = length.tolist()
        num_list = num_tokens.tolist()
        outputs = ("input_ids", "length", "num_tokens", *extra)
        keep = [c for c in _resolve_keep(self.keep_columns, list(raw[0]), [c for c in drop if c is not None])
                if c not in outputs]
        for column in keep:  # a stream's examples may differ: every kept column must be in each
            self._require(raw, column)
        out = []
        for i, ex in enumerate(raw):
            item = {k: ex[k] for k in keep} if keep else {}
            item["input_ids"] = ids_list[i]
            item["length"] = length_list[i]
            item["num_tokens"] = num_list[i]
            for k, v in extra.items():
                item[k] = v[i]
            out.append(item)
        return out
