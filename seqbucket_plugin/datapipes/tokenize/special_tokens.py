"""Which tokens of a tokenizer are its pad/unk/bos/eos: the common names looked for when a tokenizer
does not say, the ones a ``transformers`` tokenizer names, and the id to pad with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from seqbucket_plugin.errors import MissingPadTokenError

if TYPE_CHECKING:
    from seqbucket_plugin.datapipes.tokenize.tokenizer import TextTokenizer

__all__ = ["resolve_pad_id"]

_AUTO = "auto"

# Candidate names when a tokenizer does not say which of its tokens are pad/unk/bos/eos.
_SPECIAL_CANDIDATES = {
    "pad_token": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "unk_token": ("<unk>", "[UNK]", "<|unk|>"),
    "bos_token": ("<bos>", "<s>", "[CLS]", "<|begin_of_text|>", "<|endoftext|>"),
    "eos_token": ("<eos>", "</s>", "[SEP]", "<|end_of_text|>", "<|endoftext|>"),
}


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
