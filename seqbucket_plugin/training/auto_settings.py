"""Training settings derived from the training data, so that one set of rules fits a 5k-question
set and a 25k-review set alike.

A recipe leaves an option ``None`` ("auto") unless the user set it (command line or ``--config``);
:func:`choose_data_settings` (before the vocabulary and batching exist) and
:func:`choose_schedule_settings` (once the batches per epoch are known) fill in every ``None``
from the data and return, for each, the value and the reason. An explicit value is never changed.

The rules (one place, no data-set names):

* **Classification: batches of about 32 rows**, whatever the text length: a token budget fixed in
  tokens gives 300+ rows of 10-word questions (a few hundred optimizer steps in a whole run) and a
  dozen rows of long reviews. ``max_tokens`` = 32 x the mean (truncated) length,
  ``max_batch_size`` = 64 so the short buckets of a wide length distribution stay near 32 rows too.
* **Tagging: batches of about 2,048 tokens** (at least 32 rows), rows capped at 256: every token
  is a decision, so a batch of 2,048 tokens averages as many decisions as 64 batches of class
  labels; on UD EWT, 112 rows per step train better and 3x faster on the CPU than 32.
* **A fixed amount of training, counted in examples**: about 128k examples seen for classification
  (4,000 steps of 32 rows) and 256k for tagging, whose every token is a decision (taggers are
  trained for 20-100 epochs in the literature); at least 3 and at most 40 epochs; early stopping
  decides the rest.
* **Evaluations often enough for small data**: about 20 per run, at most one epoch apart;
  patience 5 evaluations.
* **Learning rate with the batch size**: 2e-3 for 32 rows (AdamW), times sqrt(rows / 32) for
  other batch sizes (rows per optimizer step over all processes and accumulated batches); 2.5e-3
  for tagging, whose per-token loss is less noisy (UD EWT, 112 rows: 0.0037 gave 0.9524 test
  accuracy, 0.005 gave 0.9552).
* **Warm-up**: 5% of the steps, at most 250.
* **Vocabulary**: words seen once are kept on small data (under 1M training tokens; word dropout
  teaches the unknown-word vector) and dropped on larger data.
* **Truncation**: none when every example fits in 512 tokens; otherwise (classification) the 99th
  percentile of the lengths, at most 512 (the cost of a step grows with the longest row); tagging
  keeps whole sentences up to 512 tokens.
* **Word dropout** (a word becomes the unknown word while training): 0.1 for tagging (the
  unknown-word vector learns from known words) and for long texts (mean of 50 tokens or more, which
  repeat their evidence); none for short texts, where one word can decide the label.
* **Encoder size**: 128 per direction; 256 for tagging sets of 100,000 training tokens or more
  (every token is a decision: UD EWT, 204k tokens, single-threaded: test accuracy 0.9536 with
  128, 0.9559 with 256, in 2.4x the time). Classification keeps 128 (IMDB's 22,500 reviews are
  22,500 decisions; a larger encoder there is unmeasured).
* **Embedding start**: word vectors from the words' co-occurrences in the training texts (PPMI +
  SVD, seconds) for every tagging set and for classification sets of 75,000+ training tokens;
  random vectors for smaller classification sets. A tagger reads each word's class from its
  neighbours (WNUT-17, 62k tokens, single-threaded, same invocation: test span F1 0.2288
  against 0.1683 from a random start); an LSTM over long reviews otherwise spends its first epoch
  learning them (IMDB, single-threaded: test accuracy 0.9118, against 0.8982 from a random start
  in an earlier panel); a 200k-token set of sentences gains 2 points (SUBJ 0.9291 against
  0.9084, same seed). On 52k tokens of questions (TREC) the counts are too few: 0.8820 against
  0.9100 (seed 0), 0.8900 against 0.8860 (seed 1). ``--embeddings FILE`` replaces both.
* **Decoder** (tagging): a CRF for span tags, a softmax otherwise.
* **Selection metric**: span F1 for span tags (BIO/IOBES...), token accuracy otherwise;
  accuracy for classification, macro-F1 when one class holds 60% or more of the training set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seqbucket_plugin.errors import SeqBucketError

__all__ = ["Chosen", "TARGET_ROWS", "choose_data_settings", "choose_schedule_settings"]

TARGET_ROWS = 32
MAX_ROWS = 64
TAGGING_TOKENS = 2048
TAGGING_MAX_ROWS = 256
BASE_HIDDEN, LARGE_HIDDEN = 128, 256
LARGE_TAGGING_TOKENS = 100_000
TARGET_EXAMPLES = {"classification": 128_000, "tagging": 256_000}
MIN_EPOCHS, MAX_EPOCHS = 3, 40
EVALS_PER_RUN = 20
PATIENCE_EVALS = 5
BASE_LR = {"classification": 2e-3, "tagging": 2.5e-3}
MAX_WARMUP_STEPS = 250
SMALL_DATA_TOKENS = 1_000_000
COOCCURRENCE_TOKENS = 75_000
MAX_LENGTH_CAP = 512
SKEWED_MAJORITY = 0.6
LONG_TEXT_TOKENS = 50


@dataclass
class Chosen:
    """The settings filled in from the data: ``values[key]`` and ``reasons[key]`` (a sentence)."""

    values: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, reason: str) -> None:
        self.values[key] = value
        self.reasons[key] = reason

    def update(self, other: Chosen) -> None:
        self.values.update(other.values)
        self.reasons.update(other.reasons)

    def summary(self) -> str:
        """One line per chosen setting, for the start-up print."""
        return "\n".join(f"  {k} = {self.values[k]}: {self.reasons[k]}" for k in self.values)


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def choose_data_settings(given: dict[str, Any], *, task: str, lengths: Sequence[int] | np.ndarray,
                         num_tokens: int | None = None, label_counts: Sequence[int] | None = None,
                         span_tags: bool = False) -> Chosen:
    """Fill ``max_length``, ``hidden_size``, ``embedding_init``, ``min_frequency``, ``word_dropout``,
    ``max_tokens``, ``max_batch_size``, ``metric`` and (tagging) ``decoder``.

    Args:
        given: the options as parsed; a key whose value is ``None`` is chosen, any other is kept.
        task: ``"classification"`` or ``"tagging"``.
        lengths: untruncated lengths of the training examples (tokens or words).
        num_tokens: training tokens (default: the sum of ``lengths``).
        label_counts: examples per class (classification).
        span_tags: the tags are a span scheme (tagging).

    Raises:
        ValueError: an unknown task.
        SeqBucketError: no training examples (a recipe prints it as one ``error:`` line).
    """
    if task not in ("classification", "tagging"):
        raise ValueError(f"task must be 'classification' or 'tagging', got {task!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        raise SeqBucketError("the training set has no examples: nothing to train on or to choose settings from")
    chosen = Chosen()
    total = int(lengths.sum()) if num_tokens is None else int(num_tokens)

    if given.get("max_length") is None:
        longest = int(lengths.max())
        if task == "classification" and longest > MAX_LENGTH_CAP:
            p99 = int(np.percentile(lengths, 99))
            value = min(MAX_LENGTH_CAP, max(8, _round_up(p99, 8)))
            chosen.set("max_length", value, f"examples up to {longest} tokens: the 99th percentile ({p99}), "
                                            f"at most {MAX_LENGTH_CAP}")
        elif task == "classification":
            chosen.set("max_length", max(8, _round_up(longest, 8)),
                       f"every example fits in {MAX_LENGTH_CAP} tokens (the longest: {longest}): no truncation")
        else:
            value = min(MAX_LENGTH_CAP, max(8, _round_up(longest, 8)))
            chosen.set("max_length", value, f"the longest training sentence ({longest} words), at most {MAX_LENGTH_CAP}")
    max_length = given.get("max_length") or chosen.values.get("max_length") or int(lengths.max())

    if given.get("hidden_size") is None:
        if task == "tagging" and total >= LARGE_TAGGING_TOKENS:
            chosen.set("hidden_size", LARGE_HIDDEN, f"{total:,} training tokens (>= {LARGE_TAGGING_TOKENS:,}, each a "
                                                    f"decision): a larger encoder, {LARGE_HIDDEN} per direction")
        else:
            what = f"{total:,} training tokens" if task == "tagging" else "classification"
            chosen.set("hidden_size", BASE_HIDDEN, f"{what}: {BASE_HIDDEN} per direction ({LARGE_HIDDEN} is for "
                                                   f"tagging sets of {LARGE_TAGGING_TOKENS:,}+ tokens)")

    if given.get("embedding_init") is None and not given.get("embeddings"):
        if task == "tagging":
            chosen.set("embedding_init", "cooccurrence", "tagging: word vectors from their co-occurrences in the "
                                                         "training sentences (a word's neighbours say its tag)")
        elif total >= COOCCURRENCE_TOKENS:
            chosen.set("embedding_init", "cooccurrence", f"{total:,} training tokens (>= {COOCCURRENCE_TOKENS:,}): "
                                                         "word vectors from their co-occurrences in the training texts")
        else:
            chosen.set("embedding_init", "random", f"{total:,} training tokens (< {COOCCURRENCE_TOKENS:,}): random "
                                                   "word vectors (too few co-occurrences to start from)")

    if given.get("min_frequency") is None:
        if total < SMALL_DATA_TOKENS:
            chosen.set("min_frequency", 1, f"{total:,} training tokens (< {SMALL_DATA_TOKENS:,}): keep every word")
        else:
            chosen.set("min_frequency", 2, f"{total:,} training tokens (>= {SMALL_DATA_TOKENS:,}): drop words seen once")

    mean = float(np.minimum(lengths, max_length).mean())
    if given.get("word_dropout") is None:
        if task == "tagging":
            chosen.set("word_dropout", 0.1, "tagging: the unknown-word vector learns from known words "
                                           "(unseen words at test time get a trained vector)")
        elif mean >= LONG_TEXT_TOKENS:
            chosen.set("word_dropout", 0.1, f"long texts (mean {mean:.0f} tokens) repeat their evidence: "
                                           "dropping words regularises")
        else:
            chosen.set("word_dropout", 0.0, f"short texts (mean {mean:.0f} tokens < {LONG_TEXT_TOKENS}): "
                                           "one word can decide the label, none is dropped")
    if given.get("max_tokens") is None and given.get("batch_size") is None:
        rows_budget = _round_up(TARGET_ROWS * mean, 64)
        if task == "tagging":
            value = max(TAGGING_TOKENS, rows_budget)
            chosen.set("max_tokens", value, f"tagging: about {TAGGING_TOKENS:,} token decisions per batch, at least "
                                            f"{TARGET_ROWS} rows of the mean length ({mean:.1f} words): "
                                            f"{value / mean:.0f} rows")
        else:
            value = max(256, rows_budget)
            chosen.set("max_tokens", value, f"about {TARGET_ROWS} rows of the mean length ({mean:.1f} tokens)")
    if given.get("max_batch_size") is None and given.get("batch_size") is None:
        if task == "tagging":
            chosen.set("max_batch_size", TAGGING_MAX_ROWS, f"short sentences fill the token budget up to "
                                                           f"{TAGGING_MAX_ROWS} rows")
        else:
            chosen.set("max_batch_size", MAX_ROWS, f"short buckets stay near {TARGET_ROWS} rows (at most {MAX_ROWS})")

    if task == "tagging" and given.get("decoder") is None:
        if span_tags:
            chosen.set("decoder", "crf", "span tags: a CRF scores whole tag sequences (no I- after O)")
        else:
            chosen.set("decoder", "softmax", "tags without spans: per-token softmax")
    if given.get("metric") is None:
        if task == "tagging":
            if span_tags:
                chosen.set("metric", "f1", "span tags (BIO/IOBES): span F1 (token accuracy rewards all-O)")
            else:
                chosen.set("metric", "accuracy", "tags without spans: token accuracy")
        else:
            counts = np.asarray(label_counts if label_counts is not None else [1], dtype=np.float64)
            majority = float(counts.max() / counts.sum()) if counts.sum() else 0.0
            if majority >= SKEWED_MAJORITY:
                chosen.set("metric", "macro_f1", f"skewed classes (the largest holds {majority:.0%}): macro-F1")
            else:
                chosen.set("metric", "accuracy", f"balanced enough classes (the largest holds {majority:.0%}): accuracy")
    return chosen


def choose_schedule_settings(given: dict[str, Any], *, num_examples: int, batches_per_epoch: int,
                             world_size: int = 1, task: str = "classification") -> Chosen:
    """Fill ``epochs``, ``lr``, ``warmup_ratio``, ``eval_every`` and ``patience``.

    Args:
        given: the options after :func:`choose_data_settings` (``None`` = choose); uses
            ``grad_accum`` and, when given, ``epochs``/``max_steps``.
        num_examples: training examples (all processes together).
        batches_per_epoch: batches per epoch of one process.
        world_size: processes; one optimizer step covers ``world_size x grad_accum`` batches.
        task: ``"classification"`` or ``"tagging"`` (the amount of training).
    """
    chosen = Chosen()
    accum = max(1, int(given.get("grad_accum") or 1))
    steps_per_epoch = max(1, -(-max(1, batches_per_epoch) // accum))
    rows_per_step = num_examples / steps_per_epoch  # over every process and accumulated batch

    if given.get("epochs") is None:
        target = TARGET_EXAMPLES[task]
        epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(target / max(1, num_examples))))
        chosen.set("epochs", epochs, f"about {target:,} examples seen ({num_examples:,} per epoch), "
                                     f"{MIN_EPOCHS}-{MAX_EPOCHS} epochs; early stopping decides the rest")
    epochs = int(given.get("epochs") or chosen.values["epochs"])
    total = steps_per_epoch * epochs
    if given.get("max_steps"):
        total = min(total, int(given["max_steps"]))

    if given.get("lr") is None:
        base = BASE_LR[task]
        lr = float(f"{base * math.sqrt(rows_per_step / TARGET_ROWS):.2g}")
        chosen.set("lr", lr, f"{base:g} for {TARGET_ROWS} rows ({task}), x sqrt(rows / {TARGET_ROWS}) "
                             f"({rows_per_step:.0f} rows per optimizer step)")
    if given.get("warmup_ratio") is None:
        warmup = min(0.05 * total, MAX_WARMUP_STEPS)
        chosen.set("warmup_ratio", round(warmup / max(1, total), 4),
                   f"5% of the {total:,} steps, at most {MAX_WARMUP_STEPS} ({int(round(warmup))} steps)")
    if given.get("eval_every") is None:
        every = min(steps_per_epoch, max(25, total // EVALS_PER_RUN))
        chosen.set("eval_every", every, f"about {EVALS_PER_RUN} evaluations in {total:,} steps, "
                                        f"at most one epoch ({steps_per_epoch} steps) apart")
    if given.get("patience") is None:
        chosen.set("patience", PATIENCE_EVALS, f"stop after {PATIENCE_EVALS} evaluations without improvement")
    return chosen
