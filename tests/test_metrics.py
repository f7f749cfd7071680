"""Metrics: span P/R/F1 against seqeval (test-only dependency), accuracy and macro-F1."""

from __future__ import annotations

import random

import pytest

from seqbucket_plugin.training.metrics import (
    accuracy,
    get_spans,
    is_span_scheme,
    macro_f1,
    span_prf,
    token_accuracy,
)


def _random_tags(rng: random.Random, scheme: str, n: int) -> list[str]:
    prefixes = {"BIO": "BI", "IOBES": "BIES"}[scheme]
    return [rng.choice(["O", "O"] + [f"{p}-{t}" for p in prefixes for t in ("PER", "LOC")]) for _ in range(n)]


@pytest.mark.parametrize("scheme", ["BIO", "IOBES"])
def test_span_prf_matches_seqeval(scheme):
    seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval is a test-only dependency")
    rng = random.Random(0)
    for _ in range(200):
        gold = [_random_tags(rng, scheme, rng.randint(0, 12)) for _ in range(rng.randint(1, 5))]
        pred = [[t if rng.random() < 0.7 else rng.choice(["O", "B-PER", "I-LOC", "E-PER", "S-LOC"]) for t in s]
                for s in gold]
        if scheme == "BIO":
            pred = [[t.replace("E-", "I-").replace("S-", "B-") for t in s] for s in pred]
        ours = span_prf(pred, gold)
        assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred, zero_division=0))
        assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred, zero_division=0))
        assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred, zero_division=0))


def test_spans_and_scheme():
    assert get_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_spans(["S-PER", "B-LOC", "E-LOC"]) == [("PER", 0, 0), ("LOC", 1, 2)]
    assert is_span_scheme(["O", "B-PER", "I-PER"]) and not is_span_scheme(["NOUN", "VERB"])
    with pytest.raises(ValueError):
        span_prf([["O"]], [["O", "O"]])


def test_accuracy_and_macro_f1():
    assert accuracy([1, 0, 1], [1, 1, 1]) == pytest.approx(2 / 3)
    # class 0: tp 1 fp 0 fn 1 -> 2/3; class 1: tp 2 fp 1 fn 0 -> 4/5
    assert macro_f1([0, 1, 1, 1], [0, 0, 1, 1]) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert macro_f1([0, 0], [0, 0], labels=[0, 1]) == pytest.approx(0.5)
    assert token_accuracy([[1, 2, 3]], [[1, 0, -100]]) == pytest.approx(0.5)
