"""Settings chosen from the training data: explicit values always win, every choice is in range and
explained, and the rules follow the data (lengths, size, label kinds), not a data set's name."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqbucket_plugin.training.auto_settings import (
    MAX_LENGTH_CAP,
    TARGET_ROWS,
    choose_data_settings,
    choose_schedule_settings,
)


def _lengths(n: int, mean: float, seed: int = 0) -> np.ndarray:
    return np.maximum(1, np.random.default_rng(seed).lognormal(np.log(mean), 0.6, n).astype(int))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200_000), mean=st.floats(2, 600), task=st.sampled_from(["classification", "tagging"]),
       span=st.booleans(), seed=st.integers(0, 5))
def test_every_choice_is_in_range_and_explained(n, mean, task, span, seed):
    lengths = _lengths(min(n, 5000), mean, seed)
    chosen = choose_data_settings({}, task=task, lengths=lengths, num_tokens=int(lengths.mean() * n),
                                  label_counts=[3, 1], span_tags=span)
    assert set(chosen.values) == set(chosen.reasons)
    assert 8 <= chosen.values["max_length"] <= MAX_LENGTH_CAP
    assert chosen.values["max_tokens"] >= 256 and chosen.values["max_batch_size"] >= TARGET_ROWS
    assert chosen.values["min_frequency"] in (1, 2)
    large = task == "tagging" or int(lengths.mean() * n) >= 75_000
    assert chosen.values["embedding_init"] == ("cooccurrence" if large else "random")
    assert 0 <= chosen.values["word_dropout"] <= 0.1
    assert chosen.values["hidden_size"] in (128, 256)
    batches = max(1, n // TARGET_ROWS)
    schedule = choose_schedule_settings({}, num_examples=n, batches_per_epoch=batches)
    assert 3 <= schedule.values["epochs"] <= 40
    assert 1 <= schedule.values["eval_every"] <= batches
    total = batches * schedule.values["epochs"]
    assert round(schedule.values["warmup_ratio"] * total) <= 250  # the Trainer rounds ratio x steps
    assert 1e-4 < schedule.values["lr"] < 1e-2


@pytest.mark.parametrize("task", ["classification", "tagging"])
def test_explicit_options_are_never_chosen(task):
    given_options = {"max_length": 100, "min_frequency": 3, "word_dropout": 0.2, "max_tokens": 999, "max_batch_size": 7,
                     "metric": "accuracy", "decoder": "softmax", "epochs": 2, "lr": 0.1, "warmup_ratio": 0.0,
                     "eval_every": 0, "patience": 0, "hidden_size": 64, "embedding_init": "random"}
    data = choose_data_settings(given_options, task=task, lengths=[5, 6, 7], label_counts=[9, 1], span_tags=True)
    schedule = choose_schedule_settings(given_options, num_examples=3, batches_per_epoch=1)
    assert data.values == {} and schedule.values == {}


def test_taggers_and_large_classification_sets_start_from_cooccurrence_vectors():
    """Tagging sets of any size and classification sets of 75k+ training tokens start from the
    texts' co-occurrence vectors; smaller classification sets start random; ``--embeddings FILE``
    leaves the choice to the file."""
    reviews = np.full(5_000, 250)  # 1.25M tokens

    def init(task, lengths, **given):
        return choose_data_settings(given, task=task, lengths=lengths, label_counts=[1, 1]).values.get("embedding_init")

    assert init("classification", reviews) == "cooccurrence"
    assert init("classification", reviews[:300]) == "cooccurrence"  # 75,000 tokens
    assert init("classification", reviews[:299]) == "random"
    assert init("tagging", reviews[:10]) == "cooccurrence"
    assert init("classification", reviews, embeddings="vectors.txt") is None


def test_large_tagging_sets_get_a_larger_encoder():
    """Every token of a tagging set is a decision: 100k of them (UD EWT has 204k) get 256 units per
    direction; a small tagging set and any classification set keep 128."""
    sentences = np.full(10_000, 20)  # 200k tokens
    assert choose_data_settings({}, task="tagging", lengths=sentences).values["hidden_size"] == 256
    assert choose_data_settings({}, task="tagging", lengths=sentences[:3_000]).values["hidden_size"] == 128
    assert choose_data_settings({}, task="classification", lengths=sentences, label_counts=[5_000, 5_000]
                                ).values["hidden_size"] == 128


def test_max_length_zero_means_whole_examples_and_batch_size_replaces_the_budget():
    chosen = choose_data_settings({"max_length": 0, "batch_size": 16}, task="classification",
                                  lengths=[10, 2000, 30])
    assert "max_length" not in chosen.values
    assert "max_tokens" not in chosen.values and "max_batch_size" not in chosen.values


def test_rows_per_batch_follow_the_lengths():
    """A token budget of ~32 rows of the mean length: short texts no longer get 300+ rows."""
    short = choose_data_settings({}, task="classification", lengths=_lengths(5000, 10)).values
    long = choose_data_settings({}, task="classification", lengths=_lengths(25000, 230)).values
    assert short["max_tokens"] < 32 * 20 and long["max_tokens"] > 32 * 150
    assert long["max_length"] == MAX_LENGTH_CAP  # long tails are truncated
    assert short["max_length"] >= _lengths(5000, 10).max()  # short texts are kept whole


def test_tagging_batches_count_token_decisions():
    """Tagging: ~2,048 tokens per batch (every token is a decision), at least 32 rows, up to 256 rows;
    the learning rate grows with the rows from a tagging base."""
    short = choose_data_settings({}, task="tagging", lengths=_lengths(5000, 16)).values
    long = choose_data_settings({}, task="tagging", lengths=_lengths(5000, 120)).values
    assert short["max_tokens"] == 2048 and short["max_batch_size"] == 256
    assert long["max_tokens"] >= 32 * 100  # long sentences still get about 32 rows
    tag = choose_schedule_settings({}, num_examples=32_000, batches_per_epoch=1000, task="tagging").values["lr"]
    cls = choose_schedule_settings({}, num_examples=32_000, batches_per_epoch=1000).values["lr"]
    assert tag > cls


def test_training_amount_is_counted_in_examples():
    small = choose_schedule_settings({}, num_examples=5_000, batches_per_epoch=156).values
    large = choose_schedule_settings({}, num_examples=25_000, batches_per_epoch=780).values
    assert small["epochs"] > large["epochs"] >= 3
    assert 156 * small["epochs"] == pytest.approx(780 * large["epochs"], rel=0.25)


def test_taggers_train_longer_and_short_texts_keep_every_word():
    cls = choose_schedule_settings({}, num_examples=12_000, batches_per_epoch=375).values["epochs"]
    tag = choose_schedule_settings({}, num_examples=12_000, batches_per_epoch=375, task="tagging").values["epochs"]
    assert tag > cls
    assert choose_data_settings({}, task="classification", lengths=_lengths(500, 10)).values["word_dropout"] == 0
    assert choose_data_settings({}, task="classification", lengths=_lengths(500, 200)).values["word_dropout"] > 0
    assert choose_data_settings({}, task="tagging", lengths=_lengths(500, 10)).values["word_dropout"] > 0


def test_learning_rate_grows_with_the_rows_per_step():
    base = choose_schedule_settings({}, num_examples=32_000, batches_per_epoch=1000).values["lr"]
    four_x = choose_schedule_settings({}, num_examples=32_000, batches_per_epoch=250).values["lr"]
    accum = choose_schedule_settings({"grad_accum": 4}, num_examples=32_000, batches_per_epoch=1000).values["lr"]
    assert four_x == pytest.approx(2 * base, rel=0.05) and accum == pytest.approx(four_x, rel=0.05)


@pytest.mark.parametrize("tags,metric,decoder", [(["O", "B-PER", "I-PER"], "f1", "crf"),
                                                 (["NOUN", "VERB", "DET"], "accuracy", "softmax")])
def test_tagging_metric_and_decoder_follow_the_tag_scheme(tags, metric, decoder):
    from seqbucket_plugin.training.metrics import is_span_scheme

    chosen = choose_data_settings({}, task="tagging", lengths=[5, 9], span_tags=is_span_scheme(tags)).values
    assert chosen["metric"] == metric and chosen["decoder"] == decoder


@pytest.mark.parametrize("counts,metric", [([500, 500], "accuracy"), ([86, 1250, 1160, 1220, 835, 900], "accuracy"),
                                           ([900, 100], "macro_f1"), ([60, 20, 20], "macro_f1")])
def test_classification_metric_follows_the_class_balance(counts, metric):
    assert choose_data_settings({}, task="classification", lengths=[5, 9], label_counts=counts).values["metric"] == metric


def test_bad_inputs():
    with pytest.raises(ValueError, match="task"):
        choose_data_settings({}, task="parsing", lengths=[1])
    from seqbucket_plugin.errors import SeqBucketError

    with pytest.raises(SeqBucketError, match="no examples"):
        choose_data_settings({}, task="tagging", lengths=[])
