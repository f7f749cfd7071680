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

Truncation (``max_length`` counts BOS/EOS; the text keeps ``max_length - n_special`` ids):

* ``"head"``: keep the first ids.
* ``"tail"``: keep the last ids.
* ``"head+tail"``: keep the first ``h = floor(head_fraction * budget + 0.5)`` ids and the last
  ``budget - h``; with ``head_fraction=0.25`` and ``budget=510`` that is the classic IMDB
  split of head 128 + tail 382 (Sun et al., 2019).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torchdata.nodes import BaseNode

from seqbucket_plugin.constants import IGNORE_INDEX

if TYPE_CHECKING:
    import datasets

from seqbucket_plugin.errors import (
    DataFormatError,
    MissingColumnError,
    SeqBucketError,
    StateDictError,
    UnknownLabelError,
)

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
]

logger = logging.getLogger(__name__)

"""Label of input ids that carry no tag (non-first sub-word pieces, BOS/EOS); ignored by
``torch.nn.CrossEntropyLoss`` by default."""

TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "seqbucket_tokenizer.json"
_SETTINGS_VERSION = 1

Truncation = Literal["head", "tail", "head+tail"]
_TRUNCATIONS = ("head", "tail", "head+tail")

# Candidate names when a tokenizer does not say which of its tokens are pad/unk/bos/eos.
_SPECIAL_CANDIDATES = {
    "pad_token": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "unk_token": ("<unk>", "[UNK]", "<|unk|>"),
    "bos_token": ("<bos>", "<s>", "[CLS]", "<|begin_of_text|>", "<|endoftext|>"),
    "eos_token": ("<eos>", "</s>", "[SEP]", "<|end_of_text|>", "<|endoftext|>"),
}
_AUTO = "auto"


# --------------------------------------------------------------------------------------
# TextTokenizer
# --------------------------------------------------------------------------------------


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` plus the names of its pad/unk/bos/eos tokens.

    Construct with :meth:`train`, :meth:`from_file`, :meth:`load` or :meth:`from_pretrained`.
    Pickles deterministically (as its ``tokenizer.json`` text and settings), so a
    ``datasets`` ``map`` using it gets the same fingerprint in every process and its cache is
    reused.

    Args:
        tokenizer: the wrapped tokenizer (not copied): a ``tokenizers.Tokenizer``, or a
            ``transformers`` fast tokenizer (``PreTrainedTokenizerFast``, what
            ``AutoTokenizer.from_pretrained`` returns), whose ``backend_tokenizer`` is wrapped and
            whose own ``pad_token``/``unk_token``/``bos_token`` (or ``cls_token``)/``eos_token``
            (or ``sep_token``) are taken for ``"auto"``.
        pad_token, unk_token, bos_token, eos_token: token strings, ``None`` for none, or
            ``"auto"`` to pick the first common name present in the vocabulary
            (e.g. ``<pad>``/``[PAD]``).
        kind: free-form description of the model (``"word"``, ``"bpe"``, ``"wordpiece"``...).

    Raises:
        SeqBucketError: a named special token is not in the vocabulary.
        TokenizerTypeError: ``tokenizer`` is neither (a slow ``transformers`` tokenizer, a
            :class:`TextTokenizer` itself...); the message says what to pass instead.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        pad_token: str | None = _AUTO,
        unk_token: str | None = _AUTO,
        bos_token: str | None = _AUTO,
        eos_token: str | None = _AUTO,
        kind: str | None = None,
    ):
        hf_special: dict[str, str | None] = {}
        if not isinstance(tokenizer, Tokenizer):
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if not isinstance(backend, Tokenizer):
                raise TokenizerTypeError(_not_a_tokenizer(tokenizer))
            hf_special = _hf_special_tokens(tokenizer)
            if kind is None:
                kind = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
            tokenizer = backend
        self._tokenizer = tokenizer
        self.kind = kind if kind is not None else type(tokenizer.model).__name__.lower()
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        names = {"pad_token": pad_token, "unk_token": unk_token, "bos_token": bos_token, "eos_token": eos_token}
        for key, value in names.items():
            if value == _AUTO and hf_special.get(key) is not None and hf_special[key] in vocab:
                value = hf_special[key]  # what the transformers tokenizer says its special tokens are
            if value == _AUTO:
                value = next((c for c in _SPECIAL_CANDIDATES[key] if c in vocab), None)
            elif value is not None and value not in vocab:
                raise SeqBucketError(f"{key} {value!r} is not in the tokenizer's vocabulary")
            setattr(self, key, value)
        self._word_lookup: Tokenizer | None = None

    # ---- construction -------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str] | Any,
        *,
        kind: Literal["word", "bpe", "wordpiece"] = "word",
        vocab_size: int = 30_000,
        min_frequency: int = 1,
        lowercase: bool = True,
        special_tokens: Sequence[str] = ("<pad>", "<unk>", "<bos>", "<eos>"),
        strip_html_breaks: bool = True,
        text_column: str = "text",
        batch_size: int = 1000,
        show_progress: bool = False,
    ) -> TextTokenizer:
        """Train a tokenizer from texts.

        Common pipeline: normaliser = (``<br />`` → space if ``strip_html_breaks``) + NFKC
        + (lower-case if ``lowercase``); pre-tokeniser splits on whitespace and punctuation
        (``\\w+|[^\\w\\s]+``; WordPiece uses the BERT pre-tokeniser, one symbol per
        punctuation character). Models:

        * ``"word"``: WordLevel, the classic LSTM vocabulary: the ``vocab_size`` most
          frequent words (special tokens included in the count) seen at least
          ``min_frequency`` times; anything else maps to the unknown token.
        * ``"bpe"``: BPE with ``</w>`` end-of-word suffix and the matching BPE decoder.
        * ``"wordpiece"``: WordPiece with ``##`` continuation prefix and its decoder.

        Args:
            texts: an iterable of ``str`` (``None`` entries skipped), a ``datasets.Dataset``
                (its ``text_column`` is read in Arrow batches, never copied whole into a
                Python list), a ``datasets.Column`` (``ds["text"]``) or an
                ``IterableDataset``.
            special_tokens: added first, in order (ids 0, 1, ...). The first four are taken
                as pad, unk, bos, eos when named ``<pad>``/``<unk>``/``<bos>``/``<eos>`` or a
                common alternative (``[PAD]``...). An unknown token is required for
                ``"word"`` and ``"wordpiece"``.

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
        return cls(tok, kind=kind)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **special: str | None) -> TextTokenizer:
        """Load a ``tokenizer.json`` file, or a directory holding one.

        A directory written by :meth:`save` also restores the special-token settings;
        keyword arguments (``pad_token=...``) override them.

        Only JSON is read (``tokenizers`` parses ``tokenizer.json`` in Rust, the settings file is
        read with :func:`json.load`); nothing in either file is executed or unpickled.

        Raises:
            FileNotFoundError: no such file, or no ``tokenizer.json`` in the directory.
            DataFormatError: the file is not a valid tokenizer, or the settings file is corrupt,
                has missing or wrongly typed entries, or names a special token that is not in
                the vocabulary (the message names the file).
        """
        path = os.fspath(path)
        settings: dict[str, Any] = {}
        settings_path = None
        if os.path.isdir(path):
            settings_path = os.path.join(path, SETTINGS_FILE)
            if os.path.isfile(settings_path):
                settings = _read_settings(settings_path)
            path = os.path.join(path, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(path)
        except Exception as err:  # the Rust side raises a bare Exception
            raise DataFormatError(f"not a valid tokenizers JSON file ({err})", path) from err
        if settings:
            vocab = tok.get_vocab(with_added_tokens=True)
            for key, value in settings.items():
                if key.endswith("_token") and key not in special and value not in (None, _AUTO) and value not in vocab:
                    raise DataFormatError(
                        f"{key} {value!r} is not in the vocabulary of {path}", settings_path
                    )
        settings.update(special)
        return cls(tok, **settings)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextTokenizer:
        """Load a directory written by :meth:`save` (no pickle involved). See :meth:`from_file`."""
        return cls.from_file(directory)

    @classmethod
    def from_pretrained(cls, name: str, *, revision: str = "main", token: str | None = None,
                        **special: str | None) -> TextTokenizer:
        """Download ``name``'s ``tokenizer.json`` from the Hugging Face Hub.

        Special tokens default to ``"auto"`` (common names such as ``[PAD]``/``[CLS]``/
        ``[SEP]``/``<s>``/``</s>``); pass ``pad_token=...`` etc. to override.

        Raises:
            SeqBucketError: the Hub is unreachable or has no such tokenizer (the message says
                how to load a local file instead).
        """
        try:
            tok = Tokenizer.from_pretrained(name, revision=revision, token=token)
        except Exception as err:
            raise SeqBucketError(
                f"could not load tokenizer {name!r} (revision {revision!r}) from the Hugging Face Hub: {err}. "
                "If you are offline, download its tokenizer.json elsewhere and use TextTokenizer.from_file(path)."
            ) from err
        return cls(tok, kind=name, **special)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``seqbucket_tokenizer.json`` (our settings) to ``directory``
        (created if needed). Load back with :meth:`load`."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self._tokenizer.save(os.path.join(directory, TOKENIZER_FILE))
        with open(os.path.join(directory, SETTINGS_FILE), "w", encoding="utf-8") as f:
            json.dump(self._settings(), f, indent=2, sort_keys=True)
            f.write("\n")

    # ---- pickling (deterministic, so datasets can fingerprint maps using it) -------

    def _settings(self) -> dict[str, Any]:
        return {
            "version": _SETTINGS_VERSION,
            "kind": self.kind,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenizer_json": self._tokenizer.to_str(), "settings": self._settings()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        settings = dict(state["settings"])
        settings.pop("version", None)
        self.__init__(Tokenizer.from_str(state["tokenizer_json"]), **settings)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TextTokenizer):
            return NotImplemented
        return self.__getstate__() == other.__getstate__()

    __hash__ = None  # mutable wrapper; equality is by content

    def __repr__(self) -> str:
        return (
            f"TextTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, pad={self.pad_token!r}, "
            f"unk={self.unk_token!r}, bos={self.bos_token!r}, eos={self.eos_token!r})"
        )

    # ---- vocabulary -----------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids, added/special tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tokenizer.token_to_id(token)

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token, or None."""
        return self._id(self.pad_token)

    @property
    def unk_id(self) -> int | None:
        """Id of the unknown token, or None."""
        return self._id(self.unk_token)

    @property
    def bos_id(self) -> int | None:
        """Id of the begin-of-sequence token, or None."""
        return self._id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sequence token, or None."""
        return self._id(self.eos_token)

    def get_vocab(self) -> dict[str, int]:
        """Token → id, added tokens included."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and self._tokenizer.token_to_id(token) is not None

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token`` as is (no normalisation), or None if absent."""
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, index: int) -> str:
        """Token of ``index``.

        Raises:
            IndexError: ``index`` is outside ``[0, vocab_size)``.
        """
        token = self._tokenizer.id_to_token(index) if index >= 0 else None
        if token is None:
            raise IndexError(f"token id {index} out of range [0, {self.vocab_size})")
        return token

    def lookup_indices(self, tokens: Iterable[str]) -> list[int]:
        """Ids of ``tokens`` (as is, no normalisation); absent tokens → ``unk_id``.

        Raises:
            KeyError: a token is absent and there is no unknown token.
        """
        vocab = self.get_vocab()
        unk = self.unk_id
        out = []
        for t in tokens:
            i = vocab.get(t, unk)
            if i is None:
                raise KeyError(f"token {t!r} not in the vocabulary and the tokenizer has no unknown token")
            out.append(i)
        return out

    def lookup_tokens(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``. Raises ``IndexError`` on an out-of-range id."""
        return [self.id_to_token(int(i)) for i in ids]

    # ---- encoding -------------------------------------------------------------------

    def _special_ids(self, add_special_tokens: bool) -> tuple[int | None, int | None]:
        if not add_special_tokens:
            return None, None
        bos, eos = self.bos_id, self.eos_id
        if bos is None and eos is None:
            raise SeqBucketError("add_special_tokens=True but the tokenizer has neither a BOS nor an EOS token")
        return bos, eos

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        """Encode ``texts`` with one batched Rust call.

        Returns:
            one ``list[int]`` of ids per text; with ``add_special_tokens`` the BOS id (if any)
            is prepended and the EOS id (if any) appended. The tokenizer's own post-processor
            is never applied.

        Raises:
            SeqBucketError: ``add_special_tokens`` but no BOS/EOS token.
        """
        bos, eos = self._special_ids(add_special_tokens)
        encs = self._encode(list(texts))
        if bos is None and eos is None:
            return [e.ids for e in encs]
        pre = [] if bos is None else [bos]
        post = [] if eos is None else [eos]
        return [pre + e.ids + post for e in encs]

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Encode one text; see :meth:`encode_batch`."""
        return self.encode_batch([text], add_special_tokens=add_special_tokens)[0]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Decode ids back to text with the tokenizer's decoder."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], *, skip_special_tokens: bool = True) -> list[str]:
        """Decode many id lists with one batched call."""
        return self._tokenizer.decode_batch([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens)

    def _encode(self, texts: list[str]) -> list[Any]:
        # encode_batch_fast skips offset tracking (tokenizers >= 0.20); same ids.
        fast = getattr(self._tokenizer, "encode_batch_fast", None)
        if fast is not None:
            return fast(texts, add_special_tokens=False)
        return self._tokenizer.encode_batch(texts, add_special_tokens=False)

    def _encode_words(self, words: list[list[str]], subword: bool) -> list[Any]:
        """Encode pre-tokenized words. Word-level: each word is normalised and looked up whole
        (pre-tokeniser disabled), so a word never splits at punctuation."""
        if subword:
            return self._tokenizer.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
        if self._word_lookup is None:
            lookup = Tokenizer.from_str(self._tokenizer.to_str())
            lookup.pre_tokenizer = None
            lookup.post_processor = None
            self._word_lookup = lookup
        return self._word_lookup.encode_batch(words, is_pretokenized=True, add_special_tokens=False)


class TokenizerTypeError(SeqBucketError, TypeError):
    """Something that is not a tokenizer this package can use was given as one."""


class MissingPadTokenError(SeqBucketError, ValueError):
    """The tokenizer has no padding token and no explicit ``pad_id`` was given: padding with some
    id (0 is a real token in most vocabularies) would be a silent error."""


def _not_a_tokenizer(obj: Any) -> str:
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if getattr(obj, "is_fast", None) is False:
        return (f"{name} is a slow (pure Python) transformers tokenizer, which has no Rust tokenizer to batch "
                "with; load the fast one: AutoTokenizer.from_pretrained(name, use_fast=True), or pass a "
                "tokenizers.Tokenizer (e.g. Tokenizer.from_file('tokenizer.json'))")
    return (f"expected a tokenizers.Tokenizer, a transformers fast tokenizer (with .backend_tokenizer) or a "
            f"TextTokenizer, got {name}")


def _hf_special_tokens(hf: Any) -> dict[str, str | None]:
    """The special tokens a transformers tokenizer names (``cls``/``sep`` stand in for bos/eos)."""

    def token(*attrs: str) -> str | None:
        for attr in attrs:
            try:
                value = getattr(hf, attr, None)
            except Exception:  # transformers logs and raises for some unset special tokens
                value = None
            if isinstance(value, str):
                return value
            if value is not None and isinstance(getattr(value, "content", None), str):  # an AddedToken
                return value.content
        return None

    return {"pad_token": token("pad_token"), "unk_token": token("unk_token"),
            "bos_token": token("bos_token", "cls_token"), "eos_token": token("eos_token", "sep_token")}


def as_text_tokenizer(tokenizer: Any, **special: str | None) -> TextTokenizer:
    """``tokenizer`` as a :class:`TextTokenizer`: returned as is when it is one, else wrapped.

    Accepts a ``tokenizers.Tokenizer`` or a ``transformers`` fast tokenizer (duck-typed through its
    ``backend_tokenizer``; ``transformers`` is never imported here). ``special``
    (``pad_token=...``) goes to :class:`TextTokenizer`; with a :class:`TextTokenizer` it must be
    empty.

    Raises:
        TokenizerTypeError: ``tokenizer`` is none of these (the message names the fix).
        SeqBucketError: a named special token is not in the vocabulary.
    """
    if isinstance(tokenizer, TextTokenizer):
        if any(v != _AUTO for v in special.values()):
            raise SeqBucketError("special tokens of a TextTokenizer are set when it is built, not here")
        return tokenizer
    return TextTokenizer(tokenizer, **special)


def resolve_pad_id(tokenizer: TextTokenizer | None, pad_id: int | None) -> int:
    """The id to pad with: ``pad_id`` when given, else the tokenizer's padding id.

    Raises:
        MissingPadTokenError: neither is set (a tokenizer without a pad token needs an explicit
            choice; the message says which).
    """
    if pad_id is not None:
        return int(pad_id)
    if tokenizer is not None and tokenizer.pad_id is not None:
        return tokenizer.pad_id
    vocab = "" if tokenizer is None else f" (its vocabulary has {tokenizer.vocab_size} ids, 0..{tokenizer.vocab_size - 1})"
    raise MissingPadTokenError(
        f"the tokenizer has no padding token{vocab}; choose one explicitly: pass pad_id=N (an id the "
        "embedding reserves for padding, e.g. the vocabulary size with an embedding one row larger), or "
        "add one: tok.add_special_tokens(['<pad>']) then TextTokenizer(tok, pad_token='<pad>')"
    )


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


_SETTINGS_KEYS = ("kind", "pad_token", "unk_token", "bos_token", "eos_token")


def _read_settings(path: str) -> dict[str, Any]:
    """The settings written by :meth:`TextTokenizer.save`; DataFormatError naming ``path`` otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as err:  # ValueError: invalid JSON or invalid UTF-8
        raise DataFormatError(f"cannot read tokenizer settings ({err})", path) from err
    except RecursionError as err:
        raise DataFormatError("cannot read tokenizer settings (JSON nested too deeply)", path) from err
    version = raw.get("version") if isinstance(raw, dict) else None
    if type(version) is not int or version != _SETTINGS_VERSION:
        raise DataFormatError(f"unsupported settings (expected version {_SETTINGS_VERSION})", path)
    missing = [k for k in _SETTINGS_KEYS if k not in raw]
    if missing:
        raise DataFormatError(f"tokenizer settings lack {missing}", path)
    wrong = [k for k in _SETTINGS_KEYS if raw[k] is not None and not isinstance(raw[k], str)]
    if wrong:
        raise DataFormatError(
            f"tokenizer settings {wrong} must be strings or null, got {[raw[k] for k in wrong]!r}", path
        )
    return {k: raw[k] for k in _SETTINGS_KEYS}


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


def _check_truncation(max_length: int | None, truncation: str, head_fraction: float, n_special: int) -> None:
    if truncation not in _TRUNCATIONS:
        raise ValueError(f"truncation must be one of {_TRUNCATIONS}, got {truncation!r}")
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must be in [0, 1], got {head_fraction}")
    if max_length is not None and max_length < n_special + 1:
        raise ValueError(f"max_length={max_length} leaves no room for text next to {n_special} special token(s)")


def _head_size(budget: int, head_fraction: float) -> int:
    """Ids kept from the head in ``head+tail`` truncation: ``floor(head_fraction * budget + 0.5)``."""
    return min(budget, int(math.floor(head_fraction * budget + 0.5)))


def _ragged(ids: list[list[int]] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 values, int64 offsets of length n+1) of a list of id lists."""
    arr = ids if isinstance(ids, pa.Array) else pa.array(ids, type=pa.list_(pa.int32()))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    values = values[offsets[0] : offsets[-1]]
    return values, offsets - offsets[0]


def _keep_mask(lengths: np.ndarray, budget: int, truncation: str, head_fraction: float) -> np.ndarray:
    """Boolean mask over the flattened ids of rows with ``lengths``: which ids survive."""
    total = int(lengths.sum())
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    if truncation == "head":
        return pos < budget
    row_len = np.repeat(lengths, lengths)
    if truncation == "tail":
        return pos >= row_len - budget
    head = _head_size(budget, head_fraction)
    return (pos < head) | (pos >= row_len - (budget - head))


def _finish_ids(
    values: np.ndarray,
    offsets: np.ndarray,
    *,
    max_length: int | None,
    truncation: str,
    head_fraction: float,
    bos: int | None,
    eos: int | None,
    extra: Sequence[tuple[np.ndarray, int]] = (),
) -> tuple[pa.ListArray, np.ndarray, np.ndarray, list[pa.ListArray]]:
    """Truncate and add BOS/EOS, vectorised.

    ``extra`` holds other per-id arrays (e.g. labels) with the fill value used at BOS/EOS.

    Returns:
        (input_ids list<int32>, length int32[n], num_tokens int32[n], extra list arrays)
    """
    lengths = np.diff(offsets)
    n_special = (bos is not None) + (eos is not None)
    num_tokens = (lengths + n_special).astype(np.int32)
    extras = [e for e, _ in extra]
    if max_length is not None and len(lengths) and int(lengths.max()) > max_length - n_special:
        budget = max_length - n_special
        keep = _keep_mask(lengths, budget, truncation, head_fraction)
        values = values[keep]
        extras = [e[keep] for e in extras]
        lengths = np.minimum(lengths, budget)
    if n_special:
        out_len = lengths + n_special
        out_off = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(out_len, out=out_off[1:])
        inner = np.ones(int(out_off[-1]), dtype=bool)
        if bos is not None:
            inner[out_off[:-1]] = False
        if eos is not None:
            inner[out_off[1:] - 1] = False
        new_values = np.empty(len(inner), dtype=np.int32)
        new_values[inner] = values
        if bos is not None:
            new_values[out_off[:-1]] = bos
        if eos is not None:
            new_values[out_off[1:] - 1] = eos
        new_extras = []
        for e, (_, fill) in zip(extras, extra):
            ne = np.full(len(inner), fill, dtype=e.dtype)
            ne[inner] = e
            new_extras.append(ne)
        values, extras, lengths, offsets = new_values, new_extras, out_len, out_off
    else:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
    pa_off = pa.array(offsets.astype(np.int32))
    ids = pa.ListArray.from_arrays(pa_off, pa.array(values.astype(np.int32, copy=False)))
    extra_arrays = [pa.ListArray.from_arrays(pa_off, pa.array(e)) for e in extras]
    return ids, lengths.astype(np.int32), num_tokens, extra_arrays


def _encode_text_arrays(
    tokenizer: TextTokenizer,
    texts: list[str],
    *,
    max_length: int | None,
    truncation: str,
    head_fraction: float,
    add_special_tokens: bool,
) -> tuple[pa.ListArray, np.ndarray, np.ndarray]:
    bos, eos = tokenizer._special_ids(add_special_tokens)
    encs = tokenizer._encode(texts)
    values, offsets = _ragged([e.ids for e in encs])
    ids, length, num_tokens, _ = _finish_ids(
        values, offsets, max_length=max_length, truncation=truncation, head_fraction=head_fraction,
        bos=bos, eos=eos,
    )
    return ids, length, num_tokens


def _encode_tagged_arrays(
    tokenizer: TextTokenizer,
    words: list[list[str]],
    tags: pa.Array,
    *,
    subword: bool,
    max_length: int | None,
    truncation: str,
    head_fraction: float,
    add_special_tokens: bool,
) -> tuple[pa.ListArray, np.ndarray, np.ndarray, pa.ListArray, pa.ListArray]:
    """Encode pre-tokenized words; ``tags`` is a list<int> array aligned with ``words``.

    Returns (input_ids, length, num_tokens, labels, word_ids)."""
    bos, eos = tokenizer._special_ids(add_special_tokens)
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
        values, out_offsets, max_length=max_length, truncation=truncation, head_fraction=head_fraction,
        bos=bos, eos=eos, extra=((label_values, IGNORE_INDEX), (wid_out, -1)),
    )
    return ids, length, num_tokens, labels, word_ids


def _tags_to_ids(tags: pa.Array, tag_to_id: Mapping[str, int] | None) -> pa.Array:
    """list<int> tags as they are; list<str> tags mapped through ``tag_to_id``."""
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


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizeReport:
    """Counts over a tokenized dataset (or what a :class:`TokenizeNode` has yielded).

    Attributes:
        examples: number of examples.
        tokens: total ids kept (sum of ``length``, BOS/EOS included).
        tokens_before_truncation: sum of ``num_tokens``.
        truncated: examples that lost ids to truncation.
        truncated_tokens: ids dropped by truncation.
        max_num_tokens: longest pre-truncation length (0 when empty).
    """

    examples: int = 0
    tokens: int = 0
    tokens_before_truncation: int = 0
    truncated: int = 0
    truncated_tokens: int = 0
    max_num_tokens: int = 0

    @property
    def truncated_fraction(self) -> float:
        """``truncated / examples`` (0.0 when empty)."""
        return self.truncated / self.examples if self.examples else 0.0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_arrays(cls, length: Any, num_tokens: Any) -> TokenizeReport:
        """Vectorised counts from ``length`` and ``num_tokens`` columns (Arrow or numpy)."""
        length = pa.array(length) if not isinstance(length, (pa.Array, pa.ChunkedArray)) else length
        num_tokens = pa.array(num_tokens) if not isinstance(num_tokens, (pa.Array, pa.ChunkedArray)) else num_tokens
        length = pc.cast(length, pa.int64())
        num_tokens = pc.cast(num_tokens, pa.int64())
        dropped = pc.subtract(num_tokens, length)
        return cls(
            examples=len(length),
            tokens=int(pc.sum(length).as_py() or 0),
            tokens_before_truncation=int(pc.sum(num_tokens).as_py() or 0),
            truncated=int(pc.sum(pc.greater(dropped, 0)).as_py() or 0),
            truncated_tokens=int(pc.sum(dropped).as_py() or 0),
            max_num_tokens=int(pc.max(num_tokens).as_py() or 0),
        )


def tokenize_report(ds: Any) -> TokenizeReport:
    """:class:`TokenizeReport` of a dataset made by :func:`tokenize_dataset` or
    :func:`tokenize_tagged_dataset` (also a cached one): vectorised over its ``length`` and
    ``num_tokens`` Arrow columns.

    Raises:
        MissingColumnError: ``length`` or ``num_tokens`` is absent.
    """
    for col in ("length", "num_tokens"):
        if col not in ds.column_names:
            raise MissingColumnError(col, ds.column_names, "tokenized dataset")
    table = ds.with_format("arrow", columns=["length", "num_tokens"])[:]
    return TokenizeReport.from_arrays(table.column("length"), table.column("num_tokens"))


def _warn_truncated(report: TokenizeReport, max_length: int | None, what: str) -> None:
    if report.truncated:
        logger.warning(
            "%s: truncated %d of %d examples to max_length=%s (%d of %d tokens dropped)",
            what, report.truncated, report.examples, max_length,
            report.truncated_tokens, report.tokens_before_truncation,
        )


# --------------------------------------------------------------------------------------
# map-style
# --------------------------------------------------------------------------------------


def _resolve_keep(keep_columns: Any, available: list[str], used: Sequence[str]) -> list[str]:
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

    def __init__(self, tokenizer, text_column, label_column, keep, max_length, truncation, head_fraction,
                 add_special_tokens):
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.label_column = label_column
        self.keep = keep
        self.max_length = max_length
        self.truncation = truncation
        self.head_fraction = head_fraction
        self.add_special_tokens = add_special_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        text = batch.column(self.text_column)
        if text.null_count:
            raise DataFormatError(f"column {self.text_column!r} contains {text.null_count} null text(s)")
        ids, length, num_tokens = _encode_text_arrays(
            self.tokenizer, text.to_pylist(), max_length=self.max_length, truncation=self.truncation,
            head_fraction=self.head_fraction, add_special_tokens=self.add_special_tokens,
        )
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
    truncation: Truncation = "head",
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
    truncation: Truncation = "head",
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
    truncation: Truncation = "head",
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
        truncation: ``"head"``, ``"tail"`` or ``"head+tail"`` (module docstring).
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
    bos, eos = tokenizer._special_ids(add_special_tokens)
    _check_truncation(max_length, truncation, head_fraction, (bos is not None) + (eos is not None))
    keep = _resolve_keep(keep_columns, available, [text_column, label_column])
    keep = [c for c in keep if c not in ("input_ids", "length", "num_tokens", "label")]
    fn = _TextMapFn(tokenizer, text_column, label_column, keep, max_length, truncation, head_fraction,
                    add_special_tokens)
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
    def __init__(self, tokenizer, tokens_column, tags_column, subword, keep, max_length, truncation,
                 head_fraction, add_special_tokens, tag_to_id, return_word_ids):
        self.tokenizer = tokenizer
        self.tokens_column = tokens_column
        self.tags_column = tags_column
        self.subword = subword
        self.keep = keep
        self.max_length = max_length
        self.truncation = truncation
        self.head_fraction = head_fraction
        self.add_special_tokens = add_special_tokens
        self.tag_to_id = None if tag_to_id is None else dict(sorted(tag_to_id.items()))
        self.return_word_ids = return_word_ids

    def __call__(self, batch: pa.Table) -> pa.Table:
        words = batch.column(self.tokens_column)
        tags = _tags_to_ids(batch.column(self.tags_column), self.tag_to_id)
        ids, length, num_tokens, labels, word_ids = _encode_tagged_arrays(
            self.tokenizer, words.to_pylist(), tags, subword=self.subword, max_length=self.max_length,
            truncation=self.truncation, head_fraction=self.head_fraction,
            add_special_tokens=self.add_special_tokens,
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
    truncation: Truncation = "head",
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
    truncation: Truncation = "head",
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
    truncation: Truncation = "head",
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
    bos, eos = tokenizer._special_ids(add_special_tokens)
    _check_truncation(max_length, truncation, head_fraction, (bos is not None) + (eos is not None))
    keep = _resolve_keep(keep_columns, available, [tokens_column, tags_column])
    keep = [c for c in keep if c not in ("input_ids", "length", "num_tokens", "labels", "word_ids")]
    fn = _TaggedMapFn(tokenizer, tokens_column, tags_column, subword, keep, max_length, truncation,
                      head_fraction, add_special_tokens, tag_to_id,
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


# --------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------


class TokenizeNode(BaseNode[dict]):
    """Streaming tokenisation for ``torchdata.nodes``: pulls up to ``batch_size`` example
    dicts from ``source``, encodes them with one ``encode_batch`` call and yields them one
    by one.

    Text mode (default) yields, per example, a dict with ``input_ids`` (``list[int]``),
    ``length`` (int), ``num_tokens`` (int, before truncation), ``label`` (from
    ``label_column``, if not None) and the ``keep_columns`` (names, ``"all"``/``True`` for every
    other key, ``()`` for none: the same columns as :func:`tokenize_dataset` /
    :func:`tokenize_tagged_dataset` keep with the same options, so map-style and streaming
    pipelines give batches with the same contents). Tagging mode (``tokens_column`` given) reads ``tokens_column`` words and
    ``tags_column`` int tags and yields ``labels`` (``list[int]``, one per id, ``-100`` off
    first pieces) instead of ``label`` (plus ``word_ids`` when ``subword``), dropping both
    input columns; see :func:`tokenize_tagged_dataset`.

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
        truncation: Truncation = "head",
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
        bos, eos = tokenizer._special_ids(add_special_tokens)
        _check_truncation(max_length, truncation, head_fraction, (bos is not None) + (eos is not None))
        self.source = source
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.label_column = label_column
        self.max_length = max_length
        self.truncation = truncation
        self.head_fraction = head_fraction
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
            ids, length, num_tokens = _encode_text_arrays(
                self.tokenizer, texts, max_length=self.max_length, truncation=self.truncation,
                head_fraction=self.head_fraction, add_special_tokens=self.add_special_tokens,
            )
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
                max_length=self.max_length, truncation=self.truncation, head_fraction=self.head_fraction,
                add_special_tokens=self.add_special_tokens,
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
