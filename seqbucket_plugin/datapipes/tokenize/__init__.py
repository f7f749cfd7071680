"""Tokenisation for the text data stack: a thin :class:`TextTokenizer` over Hugging Face
``tokenizers``, map-style tokenisation of ``datasets.Dataset`` objects (cached), and a
streaming :class:`TokenizeNode` for ``torchdata.nodes`` pipelines.

Every path encodes whole batches with one Rust ``encode_batch`` call; truncation, BOS/EOS
insertion and label alignment are vectorised with numpy/pyarrow over the flattened ids.

Output columns (map-style and streaming alike):

* ``input_ids``: token ids, ``list[int]`` per example (Arrow ``list<int32>`` on disk).
* ``length``: ``len(input_ids)`` after truncation and BOS/EOS, int32; later stages use it
  and never re-measure.
* ``num_tokens``: the length the example would have had *without* truncation (same BOS/EOS
  convention), int32. ``num_tokens > length`` exactly when the example was truncated, so
  truncation counts are available from any (also cached) output; see :func:`tokenize_report`.
* ``label``: the label column, renamed to ``label`` (text classification), or ``labels``:
  one tag per input id, ``-100`` where no tag applies (tagging).

Truncation (``max_length`` counts BOS/EOS; ``"head"``, ``"tail"`` or ``"head+tail"``) is
described in :mod:`~seqbucket_plugin.datapipes.tokenize.truncation`.

Modules: ``tokenizer`` (:class:`TextTokenizer`, :func:`as_text_tokenizer`, :func:`word_tokenizer`),
``special_tokens`` (pad/unk/bos/eos names, :func:`resolve_pad_id`), ``train`` (the trained
``tokenizers`` pipelines), ``truncation`` (:class:`Truncation` and the vectorised cut and
BOS/EOS framing), ``encode`` (batches encoded into Arrow id arrays, tags aligned), ``report``
(:class:`TokenizeReport`), ``dataset`` (:func:`tokenize_dataset`, :func:`tokenize_tagged_dataset`)
and ``node`` (:class:`TokenizeNode`).
"""

from seqbucket_plugin.constants import IGNORE_INDEX
from seqbucket_plugin.datapipes.tokenize.dataset import _TaggedMapFn as _TaggedMapFn
from seqbucket_plugin.datapipes.tokenize.dataset import _TextMapFn as _TextMapFn
from seqbucket_plugin.datapipes.tokenize.dataset import tokenize_dataset, tokenize_tagged_dataset
from seqbucket_plugin.datapipes.tokenize.node import TokenizeNode
from seqbucket_plugin.datapipes.tokenize.report import TokenizeReport, tokenize_report
from seqbucket_plugin.datapipes.tokenize.special_tokens import resolve_pad_id
from seqbucket_plugin.datapipes.tokenize.tokenizer import SETTINGS_FILE as SETTINGS_FILE
from seqbucket_plugin.datapipes.tokenize.tokenizer import TOKENIZER_FILE as TOKENIZER_FILE
from seqbucket_plugin.datapipes.tokenize.tokenizer import TextTokenizer, as_text_tokenizer, word_tokenizer
from seqbucket_plugin.datapipes.tokenize.tokenizer import _read_settings as _read_settings
from seqbucket_plugin.datapipes.tokenize.truncation import _head_size as _head_size
from seqbucket_plugin.errors import MissingPadTokenError, TokenizerTypeError

__all__ = [
    "IGNORE_INDEX",
    "MissingPadTokenError",
    "TextTokenizer",
    "TokenizerTypeError",
    "as_text_tokenizer",
    "resolve_pad_id",
    "TokenizeNode",
    "TokenizeReport",
    "tokenize_dataset",
    "tokenize_report",
    "tokenize_tagged_dataset",
    "word_tokenizer",
]
