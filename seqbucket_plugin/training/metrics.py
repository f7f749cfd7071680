"""Evaluation metrics for the recipes: accuracy, macro-F1, token accuracy and span P/R/F1.

All functions take plain Python sequences (or anything iterable) of ids or tag strings; they run
on the CPU and never touch torch. Span extraction follows the CoNLL ``conlleval`` rules that
``seqeval`` uses in its default (non-strict) mode, so ``span_prf`` matches
``seqeval.metrics.{precision,recall,f1}_score`` (micro average) for IOB1/IOB2(BIO)/IOBES tags.
BILOU tags are read as IOBES (``L`` = ``E``, ``U`` = ``S``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from seqbucket_plugin.constants import IGNORE_INDEX

__all__ = [
    "accuracy",
    "get_spans",
    "is_span_scheme",
    "macro_f1",
    "span_prf",
    "token_accuracy",
]

_SPAN_TAG = re.compile(r"^[BIESLU]-.+$")


def accuracy(predicted: Sequence[int], gold: Sequence[int]) -> float:
    """Fraction of positions where ``predicted == gold`` (0.0 for empty input).

    Raises:
        ValueError: the sequences have different lengths.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold labels")
    if not gold:
        return 0.0
    return sum(int(p == g) for p, g in zip(predicted, gold)) / len(gold)


def macro_f1(predicted: Sequence[int], gold: Sequence[int], labels: Iterable[int] | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: classes present in gold or predicted,
    as in ``sklearn.metrics.f1_score(average="macro")``). A class with no true and no predicted
    example is not averaged; a class with precision + recall = 0 counts as 0."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold labels")
    classes = sorted(set(gold) | set(predicted)) if labels is None else list(labels)
    if not classes:
        return 0.0
    f1s = []
    for c in classes:
        tp = sum(1 for p, g in zip(predicted, gold) if p == c and g == c)
        fp = sum(1 for p, g in zip(predicted, gold) if p == c and g != c)
        fn = sum(1 for p, g in zip(predicted, gold) if p != c and g == c)
        denom = 2 * tp + fp + fn
        f1s.append(0.0 if denom == 0 else 2 * tp / denom)
    return sum(f1s) / len(f1s)


def token_accuracy(predicted: Sequence[Sequence[int]], gold: Sequence[Sequence[int]], ignore: int = IGNORE_INDEX) -> float:
    """Token-level accuracy over all sentences, skipping gold positions equal to ``ignore``."""
    right = total = 0
    for p_row, g_row in zip(predicted, gold):
        for p, g in zip(p_row, g_row):
            if g == ignore:
                continue
            total += 1
            right += int(p == g)
    return right / total if total else 0.0


def is_span_scheme(tag_names: Iterable[str]) -> bool:
    """True when every tag is ``O`` or ``X-TYPE`` with X in B/I/E/S/L/U (BIO, IOB2, IOBES, BILOU)."""
    names = list(tag_names)
    return bool(names) and all(n == "O" or _SPAN_TAG.match(n) for n in names) and any(n != "O" for n in names)


def _split(tag: str) -> tuple[str, str]:
    if tag == "O" or not tag:
        return "O", "_"
    prefix, _, kind = tag.partition("-")
    prefix = {"L": "E", "U": "S"}.get(prefix, prefix)
    return prefix, (kind or "_")


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Spans ``(type, first, last)`` (inclusive token indices) of one sentence's tag strings."""
    spans = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = _split(chunk)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            spans.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return spans


def span_prf(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro span precision / recall / F1 over sentences of tag strings.

    A predicted span counts when its type and both ends equal a gold span's. Returns
    ``{"precision", "recall", "f1"}`` (each 0.0 when undefined).

    Raises:
        ValueError: different numbers of sentences, or a sentence with different lengths.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted sentences for {len(gold)} gold sentences")
    n_pred = n_gold = n_right = 0
    for i, (p, g) in enumerate(zip(predicted, gold)):
        if len(p) != len(g):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags for {len(g)} gold tags")
        ps, gs = set(get_spans(p)), set(get_spans(g))
        n_pred += len(ps)
        n_gold += len(gs)
        n_right += len(ps & gs)
    precision = n_right / n_pred if n_pred else 0.0
    recall = n_right / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
