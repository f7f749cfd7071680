"""Pretrained word vectors: word2vec (text and binary), GloVe and fastText ``.vec`` files, and an
embedding built from a tokenizer's vocabulary plus such vectors (what torchtext's ``Vectors``,
``GloVe`` and ``FastText`` did).

>>> from seqbucket_plugin import load_vectors
>>> from seqbucket_plugin.vectors import build_embedding
>>> vectors = load_vectors("glove.6B.100d.txt", vocab=tokenizer)   # only the rows the vocabulary needs
>>> embedding = build_embedding(tokenizer, vectors, freeze=False)
>>> embedding.coverage                                              # how much of the vocabulary was found
>>> model = SequenceClassifier(tokenizer.vocab_size, 2, embedding=embedding)

Files are streamed: with ``vocab=`` only the rows of words in the vocabulary are parsed and
kept, so a multi-GB file costs the memory of the kept rows, not of the file. Nothing in a file is
executed or unpickled.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from seqbucket_plugin.errors import DataFormatError, SeqBucketError

__all__ = ["PretrainedEmbedding", "VectorCoverage", "Vectors", "build_embedding", "load_vectors", "vectors_dim"]

VectorFormat = Literal["auto", "word2vec", "word2vec-binary", "glove", "fasttext"]
_FORMATS = ("auto", "word2vec", "word2vec-binary", "glove", "fasttext")


@dataclasses.dataclass
class Vectors:
    """Word vectors read from a file.

    Attributes:
        words: the words, in file order (first occurrence of each).
        vectors: ``(len(words), dim)`` float32 CPU tensor; row ``i`` is ``words[i]``'s vector.
        path: the file they were read from (or None).
        format: the file's format (``"word2vec"``, ``"word2vec-binary"``, ``"glove"``; a fastText
            ``.vec`` file is word2vec text).
        rows_in_file: rows the file holds (kept or not).
    """

    words: list[str]
    vectors: torch.Tensor
    path: str | None = None
    format: str = "word2vec"
    rows_in_file: int = 0
    _index: dict[str, int] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def dim(self) -> int:
        """The vectors' size."""
        return int(self.vectors.shape[1])

    @property
    def stoi(self) -> dict[str, int]:
        """Word -> row (torchtext's name)."""
        if self._index is None:
            self._index = {w: i for i, w in enumerate(self.words)}
        return self._index

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __getitem__(self, word: str) -> torch.Tensor:
        """``(dim,)`` vector of ``word``; zeros for a word that has none (torchtext's behaviour)."""
        row = self.stoi.get(word)
        return torch.zeros(self.dim) if row is None else self.vectors[row]

    def get_vecs_by_tokens(self, tokens: Iterable[str], lower_case_backup: bool = False) -> torch.Tensor:
        """``(n, dim)`` vectors of ``tokens`` (zeros where missing), optionally trying the
        lower-cased token when the token itself has none."""
        tokens = list(tokens)
        rows = _rows_of(tokens, self.stoi, lower_case_backup)
        out = torch.zeros(len(tokens), self.dim)
        found = rows >= 0
        out[torch.from_numpy(found)] = self.vectors[torch.from_numpy(rows[found])]
        return out


def _rows_of(tokens: list[str], index: Mapping[str, int], lower_case_backup: bool) -> np.ndarray:
    rows = np.fromiter((index.get(t, -1) for t in tokens), dtype=np.int64, count=len(tokens))
    if lower_case_backup:
        missing = np.flatnonzero(rows < 0)
        rows[missing] = np.fromiter((index.get(tokens[i].lower(), -1) for i in missing), dtype=np.int64,
                                    count=missing.size)
    return rows


def _vocabulary(vocab: Any) -> set[str] | None:
    """The words of ``vocab``: a tokenizer (ours, ``tokenizers`` or ``transformers``), a mapping
    (its keys) or an iterable of strings."""
    if vocab is None:
        return None
    get_vocab = getattr(vocab, "get_vocab", None)
    if callable(get_vocab):
        return set(get_vocab())
    if isinstance(vocab, Mapping):
        return set(vocab)
    if isinstance(vocab, str):
        raise TypeError("vocab must be a tokenizer, a mapping or an iterable of words, not a single string")
    return set(vocab)


def _header(first: bytes) -> tuple[int, int] | None:
    parts = first.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def _is_binary(path: str, body_start: bytes, dim: int) -> bool:
    """True when the rows after a word2vec header are raw float32 bytes (the binary format)."""
    line = body_start.split(b"\n", 1)[0]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    fields = text.rstrip().split(" ")
    if len(fields) < dim + 1:
        return True
    try:
        [float(x) for x in fields[-dim:]]
    except ValueError:
        return True
    return False


def vectors_dim(path: str | os.PathLike) -> int:
    """The dimension of the vectors in ``path``, read from its first line only (a header
    ``rows dim``, or the number of values of the first row of a GloVe file).

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: the first line is neither a header nor a vector row.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    header = _header(first)
    if header is not None:
        if header[1] < 1:
            raise DataFormatError(f"header says the vectors have {header[1]} dimensions", path, 1)
        return header[1]
    fields = first.split()
    values = 0  # the trailing fields that are numbers (a word may hold spaces, or be a number itself)
    for field in reversed(fields[1:]):
        try:
            float(field)
        except ValueError:
            break
        values += 1
    if values == 0:
        raise DataFormatError("not a word-vectors file: the first line is neither 'rows dim' nor "
                              f"'word v1 v2 ...': {first[:80]!r}", path, 1)
    return values


def load_vectors(
    path: str | os.PathLike,
    *,
    vocab: Any = None,
    format: VectorFormat = "auto",
    max_vectors: int | None = None,
    lowercase: bool = False,
    encoding: str = "utf-8",
) -> Vectors:
    """Read word vectors from a word2vec (text or binary), GloVe or fastText ``.vec`` file.

    Formats (``format="auto"`` tells them apart from the first two lines):

    * word2vec text and fastText ``.vec``: a header line ``rows dim``, then ``word v1 ... vdim``
      per line (trailing spaces allowed);
    * word2vec binary (``.bin`` from the original tool or gensim's
      ``save_word2vec_format(binary=True)``): the same header, then per row the word, a space and
      ``dim`` little-endian float32;
    * GloVe: no header; ``word v1 ... vdim`` per line. A row with more than ``dim`` fields is a
      word with spaces (GloVe 840B has a few, such as ``". . ."``): the last ``dim`` are its values.

    The file is streamed (a binary file is memory-mapped): with ``vocab`` only rows whose word is
    in the vocabulary are parsed and kept, so a multi-GB file of millions of rows costs the
    memory of the few thousand rows a vocabulary needs. The first occurrence of a word wins.

    Args:
        path: the file.
        vocab: keep only these words: a tokenizer (a :class:`~seqbucket_plugin.datapipes.TextTokenizer`,
            a ``tokenizers.Tokenizer``, a ``transformers`` tokenizer: its vocabulary), a mapping
            (its keys) or an iterable of words. None keeps every row (up to ``max_vectors``).
        format: ``"auto"``, ``"word2vec"`` (text; also fastText), ``"word2vec-binary"``,
            ``"glove"`` or ``"fasttext"``.
        max_vectors: read at most this many rows of the file (files are usually sorted by
            frequency, so these are the most frequent words).
        lowercase: lower-case the file's words before matching and keeping (for a lower-cased
            vocabulary and cased vectors; the first, usually most frequent, casing wins).
        encoding: of the words.

    Returns:
        :class:`Vectors` (float32, CPU).

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: a malformed header or row (a kept row with too few values or
            a value that is not a number; a truncated binary file), naming the file and line (the
            row number for binary files). Rows that are not kept are not parsed.
        ValueError: an unknown ``format``.
    """
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"word-vectors file not found: {path}")
    words_wanted = _vocabulary(vocab)
    wanted: set[bytes] | None = None
    if words_wanted is not None:
        wanted = {w.encode(encoding, "surrogateescape") for w in words_wanted}
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
        body_start = f.read(1 << 16)
    header = _header(first)
    if format == "auto":
        if header is None:
            format = "glove"
        else:
            format = "word2vec-binary" if _is_binary(path, body_start, header[1]) else "word2vec"
    if format == "fasttext":
        format = "word2vec"
    if format in ("word2vec", "word2vec-binary") and header is None:
        raise DataFormatError(f"a {format} file starts with a header 'rows dim'; got {first[:80]!r} "
                              "(a GloVe file has no header: format='glove')", path, 1)
    if format == "glove" and header is not None:
        raise DataFormatError("a GloVe file has no header line, but this one starts with 'rows dim' "
                              "(word2vec/fastText: format='auto')", path, 1)
    if format == "word2vec-binary":
        assert header is not None
        words, rows, seen = _read_binary(path, len(first), header, wanted, max_vectors, lowercase, encoding)
    else:
        dim = header[1] if header is not None else vectors_dim(path)
        words, rows, seen = _read_text(path, header is not None, dim, wanted, max_vectors, lowercase, encoding)
        header = header or (seen, dim)
    dim = header[1]
    matrix = np.concatenate(rows).astype(np.float32, copy=False) if rows else np.zeros((0, dim), dtype=np.float32)
    return Vectors(words=words, vectors=torch.from_numpy(matrix), path=path, format=format, rows_in_file=seen)


_PARSE_ROWS = 4096  # kept text rows parsed together with one C call


def _parse_rows(rests: list[bytes], numbers: list[int], words: list[bytes], dim: int, path: str,
                encoding: str) -> np.ndarray:
    """``(len(rests), dim)`` float32 from the value parts of text rows (counts already checked),
    parsed in one ``np.fromstring`` call; a value that is not a number is found row by row."""
    try:
        with warnings.catch_warnings():
            # numpy < 2.3 warns and stops at a value that is not a number, newer ones raise
            warnings.simplefilter("ignore", DeprecationWarning)
            values = np.fromstring(b" ".join(rests), dtype=np.float32, sep=" ")
    except ValueError:
        values = np.zeros(0, dtype=np.float32)
    if values.size == len(rests) * dim:
        return values.reshape(len(rests), dim)
    for rest, number, word in zip(rests, numbers, words):
        try:
            np.array(rest.split(), dtype=np.float32)
        except ValueError as err:
            raise DataFormatError(f"a value of {word.decode(encoding, 'replace')!r} is not a number ({err})",
                                  path, number) from err
    raise DataFormatError("values that are not numbers", path)  # pragma: no cover - found above


def _read_text(path: str, has_header: bool, dim: int, wanted: set[bytes] | None, max_vectors: int | None,
               lowercase: bool, encoding: str) -> tuple[list[str], list[np.ndarray], int]:
    words: list[str] = []
    blocks: list[np.ndarray] = []
    kept: set[bytes] = set()
    rests: list[bytes] = []
    numbers: list[int] = []
    raw_words: list[bytes] = []
    seen = 0
    # a vocabulary word with a space can only be matched after splitting every row (slower)
    spaced = wanted is None or any(b" " in w for w in wanted)
    with open(path, "rb", buffering=1 << 20) as f:
        if has_header:
            f.readline()
        for number, line in enumerate(f, start=2 if has_header else 1):
            if max_vectors is not None and seen >= max_vectors:
                break
            word, _, rest = line.partition(b" ")
            if not rest.strip():
                if not line.strip():
                    continue  # a blank line (e.g. at the end)
                raise DataFormatError(f"a row holds a word without values: {line[:80]!r}", path, number)
            seen += 1
            if lowercase:
                word = word.decode(encoding, "surrogateescape").lower().encode(encoding, "surrogateescape")
            if not spaced and ((wanted is not None and word not in wanted) or word in kept):
                continue  # the common case: decided by the first field alone
            values = rest.split()
            if len(values) > dim:  # a word with spaces (GloVe 840B has some: ". . ."): the last dim are values
                word = b" ".join([word, *values[:len(values) - dim]])
                rest = b" ".join(values[len(values) - dim:])
                if lowercase:
                    word = word.decode(encoding, "surrogateescape").lower().encode(encoding, "surrogateescape")
            if (wanted is not None and word not in wanted) or word in kept:
                continue
            if len(values) < dim:
                raise DataFormatError(f"{word.decode(encoding, 'replace')!r} has {len(values)} values, "
                                      f"expected {dim}", path, number)
            kept.add(word)
            words.append(word.decode(encoding, "surrogateescape"))
            rests.append(rest)
            numbers.append(number)
            raw_words.append(word)
            if len(rests) == _PARSE_ROWS:
                blocks.append(_parse_rows(rests, numbers, raw_words, dim, path, encoding))
                rests, numbers, raw_words = [], [], []
    if rests:
        blocks.append(_parse_rows(rests, numbers, raw_words, dim, path, encoding))
    return words, blocks, seen


def _read_binary(path: str, header_bytes: int, header: tuple[int, int], wanted: set[bytes] | None,
                 max_vectors: int | None, lowercase: bool, encoding: str
                 ) -> tuple[list[str], list[np.ndarray], int]:
    count, dim = header
    size = 4 * dim
    limit = count if max_vectors is None else min(count, max_vectors)
    words: list[str] = []
    rows: list[np.ndarray] = []
    kept: set[bytes] = set()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= header_bytes:
            if limit:
                raise DataFormatError(f"the header announces {count} rows but the file ends after it", path, 1)
            return words, rows, 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            end = len(mm)
            pos = header_bytes
            for row in range(limit):
                while pos < end and mm[pos] in b"\n\r":  # the original tool ends each row with a newline
                    pos += 1
                space = mm.find(b" ", pos, min(end, pos + (1 << 16)))
                if space < 0 or space + 1 + size > end:
                    raise DataFormatError(f"truncated binary file: row {row + 1} of {count} is incomplete",
                                          path, None)
                word = mm[pos:space]
                start = space + 1
                pos = start + size
                if lowercase:
                    word = word.decode(encoding, "surrogateescape").lower().encode(encoding, "surrogateescape")
                if (wanted is not None and word not in wanted) or word in kept:
                    continue
                rows.append(np.frombuffer(mm, dtype="<f4", count=dim, offset=start).reshape(1, dim).copy())
                kept.add(word)
                words.append(word.decode(encoding, "surrogateescape"))
    return words, rows, limit


# --------------------------------------------------------------------------------------
# embedding
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VectorCoverage:
    """How much of a vocabulary the vectors cover (special tokens not counted).

    Attributes:
        vocab_size: ids in the vocabulary, special tokens included.
        words: ids counted (the vocabulary without its special tokens).
        found: of those, ids with a vector (exact or lower-cased match).
        found_lowercased: of ``found``, those matched through their lower-cased form.
        missing_examples: up to 20 words without a vector, in id order (frequent words first for a
            frequency-sorted vocabulary such as a trained word-level one).
    """

    vocab_size: int
    words: int
    found: int
    found_lowercased: int
    missing_examples: tuple[str, ...]

    @property
    def fraction(self) -> float:
        """``found / words`` (1.0 for an empty vocabulary)."""
        return 1.0 if self.words == 0 else self.found / self.words

    def summary(self) -> str:
        """One line: ``"vectors for 9,412 of 10,000 words (94.1%); missing e.g. ..."``."""
        text = f"vectors for {self.found:,} of {self.words:,} words ({100 * self.fraction:.1f}%)"
        if self.missing_examples:
            text += "; missing e.g. " + ", ".join(repr(w) for w in self.missing_examples[:8])
        return text


class PretrainedEmbedding(nn.Embedding):
    """An ``nn.Embedding`` initialised from word vectors, with its :attr:`coverage`. Its state dict
    is a plain ``nn.Embedding``'s (``weight``), so a model saved with it loads into one."""

    coverage: VectorCoverage


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set()
    for attr in ("pad_id", "unk_id", "bos_id", "eos_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            ids.add(value)
    return ids


def build_embedding(
    tokenizer: Any,
    vectors: Vectors,
    *,
    freeze: bool = False,
    oov: Literal["random", "zeros", "mean"] = "random",
    lower_case_backup: bool = True,
    padding_idx: int | None | Literal["auto"] = "auto",
    seed: int = 0,
) -> PretrainedEmbedding:
    """An embedding for ``tokenizer``'s ids initialised from ``vectors``.

    Row ``i`` is the vector of token ``i`` (or of its lower-cased form with ``lower_case_backup``).
    Tokens without a vector (OOV) get, with ``oov="random"``, draws from a normal distribution
    with the found vectors' per-dimension mean and standard deviation (so they look like the
    others, the usual practice), ``"zeros"``, or ``"mean"`` (the found vectors' mean); the
    padding row is zeros. Special tokens other than padding are initialised as OOV.

    Args:
        tokenizer: a :class:`~seqbucket_plugin.datapipes.TextTokenizer`, ``tokenizers.Tokenizer``
            or ``transformers`` fast tokenizer (wrapped with ``as_text_tokenizer``).
        vectors: from :func:`load_vectors` (best with ``vocab=tokenizer``).
        freeze: keep the weights fixed in training (``weight.requires_grad = False``).
        oov: how rows without a vector start.
        lower_case_backup: try the lower-cased token when the token has no vector.
        padding_idx: ``"auto"``: the tokenizer's padding id; an int; or None.
        seed: of the random OOV rows (the global torch generator is not touched).

    Returns:
        a :class:`PretrainedEmbedding` ``(vocab_size, vectors.dim)`` on the CPU, float32, with
        ``.coverage`` (a :class:`VectorCoverage`).

    Raises:
        SeqBucketError: no vector for any word of the vocabulary (wrong file or casing; the
            message names a few missing words), or an unknown ``oov``.
    """
    from seqbucket_plugin.datapipes.tokenize import as_text_tokenizer

    if oov not in ("random", "zeros", "mean"):
        raise SeqBucketError(f"oov must be 'random', 'zeros' or 'mean', got {oov!r}")
    tok = as_text_tokenizer(tokenizer)
    size = tok.vocab_size
    vocab = tok.get_vocab()
    tokens = [""] * size
    for token, index in vocab.items():
        if 0 <= index < size:
            tokens[index] = token
    specials = _special_ids(tok)
    rows = _rows_of(tokens, vectors.stoi, False)
    exact = rows >= 0
    if lower_case_backup:
        rows = _rows_of(tokens, vectors.stoi, True)
    special_mask = np.zeros(size, dtype=bool)
    special_mask[list(specials)] = True
    rows[special_mask] = -1
    found = rows >= 0
    words = int((~special_mask).sum())
    missing = [tokens[i] for i in np.flatnonzero(~found & ~special_mask)[:20]]
    coverage = VectorCoverage(vocab_size=size, words=words, found=int(found.sum()),
                              found_lowercased=int((found & ~exact).sum()), missing_examples=tuple(missing))
    if coverage.found == 0 and words > 0:
        raise SeqBucketError(f"{vectors.path or 'the vectors'}: no vector for any of the {words:,} words of the "
                             f"vocabulary (e.g. {missing[:5]}); check the file and the casing", path=vectors.path)
    dim = vectors.dim
    weight = torch.zeros(size, dim)
    found_t = torch.from_numpy(found)
    weight[found_t] = vectors.vectors[torch.from_numpy(rows[found])]
    if coverage.found and oov != "zeros":
        mean = weight[found_t].mean(0)
        std = weight[found_t].std(0, unbiased=False) if coverage.found > 1 else torch.zeros(dim)
        missing_t = ~found_t
        if oov == "mean":
            weight[missing_t] = mean
        else:
            g = torch.Generator().manual_seed(seed)
            weight[missing_t] = mean + std * torch.randn(int(missing_t.sum()), dim, generator=g)
    if padding_idx == "auto":
        padding_idx = tok.pad_id
    if padding_idx is not None:
        weight[padding_idx] = 0
    embedding = PretrainedEmbedding(size, dim, padding_idx=padding_idx, _weight=weight, _freeze=freeze)
    embedding.coverage = coverage
    return embedding
