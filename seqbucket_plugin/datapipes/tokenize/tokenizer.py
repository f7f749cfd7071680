"""The tokenizer of the text data stack: :class:`TextTokenizer`, a thin wrapper of a Hugging Face
``tokenizers.Tokenizer`` that knows its pad/unk/bos/eos tokens, is saved and loaded as plain JSON,
pickles deterministically and encodes whole batches with one Rust call; :func:`as_text_tokenizer`,
which adapts a ``tokenizers`` or ``transformers`` tokenizer to it; and :func:`word_tokenizer`, a
word-level vocabulary built from pre-tokenized sentences.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from tokenizers import Tokenizer

from seqbucket_plugin.datapipes.tokenize.special_tokens import _AUTO, _SPECIAL_CANDIDATES, _hf_special_tokens
from seqbucket_plugin.datapipes.tokenize.train import (
    WORD_PAD,
    WORD_UNK,
    train_tokenizer,
    word_level_tokenizer,
)
from seqbucket_plugin.errors import DataFormatError, SeqBucketError, TokenizerTypeError

__all__ = ["SETTINGS_FILE", "TOKENIZER_FILE", "TextTokenizer", "as_text_tokenizer", "word_tokenizer"]

TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "seqbucket_tokenizer.json"
_SETTINGS_VERSION = 1
_SETTINGS_KEYS = ("kind", "pad_token", "unk_token", "bos_token", "eos_token")


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
        tok = train_tokenizer(
            texts, kind=kind, vocab_size=vocab_size, min_frequency=min_frequency, lowercase=lowercase,
            special_tokens=special_tokens, strip_html_breaks=strip_html_breaks, text_column=text_column,
            batch_size=batch_size, show_progress=show_progress,
        )
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


def _not_a_tokenizer(obj: Any) -> str:
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if getattr(obj, "is_fast", None) is False:
        return (f"{name} is a slow (pure Python) transformers tokenizer, which has no Rust tokenizer to batch "
                "with; load the fast one: AutoTokenizer.from_pretrained(name, use_fast=True), or pass a "
                "tokenizers.Tokenizer (e.g. Tokenizer.from_file('tokenizer.json'))")
    return (f"expected a tokenizers.Tokenizer, a transformers fast tokenizer (with .backend_tokenizer) or a "
            f"TextTokenizer, got {name}")


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


def word_tokenizer(sentences: Iterable[Sequence[str]], *, min_frequency: int = 1, vocab_size: int = 50_000,
                   lowercase: bool = True) -> TextTokenizer:
    """A word-level :class:`TextTokenizer` over whole words (never split at punctuation).

    The vocabulary is ``<pad>``, ``<unk>`` then the ``vocab_size - 2`` most frequent (normalised)
    words seen at least ``min_frequency`` times; ties are broken alphabetically (deterministic).
    """
    tok = word_level_tokenizer(sentences, min_frequency=min_frequency, vocab_size=vocab_size, lowercase=lowercase)
    return TextTokenizer(tok, pad_token=WORD_PAD, unk_token=WORD_UNK, bos_token=None, eos_token=None, kind="word")


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
