"""The recipes' options, each declared once: its default, range, help and command-line group.

The command line of a recipe is derived from these dataclasses (:func:`build_parser`); a
``--config`` file (a JSON object, e.g. a run's ``config.json``) overrides any subset of the
defaults, and the command line overrides both. The training options take their defaults from
:class:`~seqbucket_plugin.training.TrainConfig`, so the library and the recipes cannot disagree.

An option declared with ``auto=True`` defaults to ``None``: it is chosen from the training data at
start-up (:mod:`seqbucket_plugin.training.auto_settings`), unless given.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_args

from seqbucket_plugin.datapipes.tokenize.truncation import TruncationKind
from seqbucket_plugin.training.engine import NONFINITE_POLICIES, TrainConfig
from seqbucket_plugin.training.run_log import REPORT_TO

__all__ = ["ClassificationOptions", "RecipeOptions", "TaggingOptions", "auto_options", "build_parser",
           "option", "option_defaults", "option_ranges", "per_invocation_options"]

_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def max_tokens_value(text: str) -> int | str:
    """``--max-tokens``: a positive int, or ``auto`` (the largest budget that fits the GPU)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or 'auto', got {text!r}") from None


def option(default: Any = None, help: str = "", *, group: str, type: Any = None, choices: tuple | None = None,
           low: float | None = None, high: float | None = None, low_open: bool = False, auto: bool = False,
           flag: str | None = None, metavar: str | None = None, per_invocation: bool = False) -> Any:
    """A dataclass field declaring one recipe option.

    Args:
        default: the value without the option (``None`` for ``auto`` options: chosen from the data).
        help: the ``--help`` text (the default is appended).
        group: the ``--help`` section.
        type: argparse's converter (default: from the default's type; ``str`` for ``None``).
        choices: the values allowed.
        low, high: the range, inclusive (``low_open``: ``low`` itself is refused).
        auto: ``None`` means "chosen from the training data".
        flag: the command-line flag when it is not ``--name-with-dashes`` (``--no-amp``).
        per_invocation: about one invocation (``--resume``, ``--predict``): never saved in
            ``config.json`` nor read from a ``--config`` file.
    """
    return field(default=default, metadata={
        "help": help, "group": group, "type": type, "choices": choices, "low": low, "high": high,
        "low_open": low_open, "auto": auto, "flag": flag, "metavar": metavar, "per_invocation": per_invocation})


def retuned(base: type, name: str, default: Any) -> Any:
    """The field ``name`` of ``base`` with another default (a task's own value of a shared option)."""
    inherited = base.__dataclass_fields__[name]
    return field(default=default, metadata=inherited.metadata)


def _train(name: str, help: str, **kwargs: Any) -> Any:
    """A training option whose default is :class:`TrainConfig`'s (``None`` when ``auto``)."""
    default = None if kwargs.get("auto") else _TRAIN_DEFAULTS[name]
    return option(default, help, group="training", **kwargs)


@dataclass
class RecipeOptions:
    """The options every recipe has. Attributes are set from the command line; the ``auto`` ones
    are filled in from the data at start-up (``apply_chosen``)."""

    # data
    train_file: str | None = option(None, "training file (format from the suffix); none: generated data",
                                    group="data")
    dev_file: str | None = option(None, "dev file (default: 10%% of the training file)", group="data")
    test_file: str | None = option(None, "test file (default: none, or the dataset's test split)", group="data")
    dataset: str | None = option(None, "a Hugging Face Hub dataset name (needs internet), instead of files",
                                 group="data")
    max_length: int | None = option(None, "truncate examples to this many tokens (0: no truncation)", group="data",
                                    type=int, low=0, auto=True)
    # batching
    max_tokens: int | str | None = option(
        None, "token budget per batch, padding included; 'auto' (CUDA only): the largest budget whose longest "
              "batches train within GPU memory, found by real training steps (seqbucket_plugin.training.budget)",
        group="batching", type=max_tokens_value, low=1, auto=True)
    batch_size: int | None = option(None, "fixed rows per batch (instead of --max-tokens)", group="batching",
                                    type=int, low=1)
    max_batch_size: int | None = option(None, "at most this many rows per --max-tokens batch", group="batching",
                                        type=int, low=1, auto=True)
    longest_first: bool = option(False, "put each epoch's largest batch first, so an out-of-memory error shows at "
                                        "step 1", group="batching")
    batching: str = option("bucket", "bucket: length buckets; naive: batches across all lengths, fixed "
                                     "--batch-size, the model runs over the padding (baseline)",
                           group="batching", choices=("bucket", "naive"))
    num_buckets: int = option(32, "length buckets of the batcher", group="batching", low=1)
    # model
    encoder: str = option("bilstm", "a registered encoder name (see list_encoders())", group="model")
    embedding_dim: int = option(100, "word vector size", group="model", low=1)
    hidden_size: int | None = option(None, "encoder hidden size per direction", group="model", type=int, low=1,
                                     auto=True)
    num_layers: int = option(1, "encoder layers", group="model", low=1)
    dropout: float = option(0.3, "dropout rate of the model", group="model", low=0.0, high=1.0)
    word_dropout: float | None = option(None, "training only: probability that a word is replaced by the unknown "
                                              "word", group="model", type=float, low=0.0, high=1.0, auto=True)
    embeddings: str | None = option(None, "initialise the word embedding from pretrained vectors (word2vec "
                                          "text/binary, GloVe, fastText .vec; only the vocabulary's rows are "
                                          "read); sets --embedding-dim", group="model", metavar="FILE")
    freeze_embeddings: bool = option(False, "keep the --embeddings vectors fixed in training", group="model")
    embedding_init: str | None = option(None, "how the word embedding starts without --embeddings: random, or "
                                              "cooccurrence (vectors of the training texts' word co-occurrences, "
                                              "PPMI + SVD; the default for tagging and for classification on 75k+ "
                                              "training tokens)",
                                        group="model", choices=("random", "cooccurrence"), auto=True)
    vocab_size: int = option(30000, "at most this many words in the vocabulary (special tokens included)",
                             group="model", low=1)
    min_frequency: int | None = option(None, "words seen fewer times are unknown", group="model", type=int, low=0,
                                       auto=True)
    # training (defaults: TrainConfig)
    epochs: int | None = _train("epochs", "passes over the training set", type=int, low=1, auto=True)
    max_steps: int = _train("max_steps", "stop after this many optimizer steps (0: no cap)", low=0)
    grad_accum: int = _train("grad_accum", "batches per optimizer step (gradient accumulation; keeps the "
                                           "effective batch when the number of processes changes)", low=1)
    lr: float | None = _train("lr", "peak learning rate (AdamW, linear warm-up and decay)", type=float, low=0.0,
                              low_open=True, auto=True)
    weight_decay: float = _train("weight_decay", "AdamW weight decay (not on embeddings and biases)", low=0.0)
    warmup_ratio: float | None = _train("warmup_ratio", "share of the steps spent warming the learning rate up",
                                        type=float, low=0.0, high=1.0, auto=True)
    clip_norm: float = _train("clip_norm", "clip the gradient norm to this (0: no clipping)", low=0.0)
    patience: int | None = _train("patience", "early stopping: evaluations without improvement (0: off)",
                                  type=int, low=0, auto=True)
    metric: str | None = _train("metric", "dev metric that selects the best model and stops early (accuracy, "
                                          "macro_f1; tagging: accuracy, f1)", auto=True)
    eval_every: int | None = _train("eval_every", "evaluate every N steps (0: at epoch ends only)", type=int, low=0,
                                    auto=True)
    save_every: int = _train("save_every", "checkpoint every N steps (and at epoch ends)", low=0)
    seed: int = _train("seed", "seed of the initialisation, batches and dropout", low=0)
    nonfinite: str = _train("nonfinite", "a NaN/inf loss: stop with an error naming the step, or skip the step "
                                         "and count it", choices=NONFINITE_POLICIES)
    nonfinite_patience: int = _train("nonfinite_patience", "with --nonfinite skip: stop after this many skipped "
                                                           "steps in a row (0: never)", low=0)
    device: str = option("auto", "auto: CUDA when available", group="training", choices=("auto", "cpu", "cuda"))
    threads: int = option(0, "torch CPU threads (0: torch's default)", group="training", low=0)
    amp: bool = _train("amp", "no mixed precision on CUDA", flag="--no-amp")
    progress: bool = _train("progress", "no progress bar (it is shown only on a terminal)", flag="--no-progress")
    log_every: int = _train("log_every", "print the train loss, learning rate and tokens/s every N optimizer steps "
                                         "(0: only at evaluations)", low=0, metavar="N")
    report_to: str = _train("report_to", "also write the train and dev figures for TensorBoard to "
                                         "<output-dir>/tensorboard (pip install 'seqbucket_plugin[tensorboard]')",
                            choices=REPORT_TO)
    # run
    output_dir: str = option("runs/run", "where the config, tokenizer, labels, model, metrics and plots go",
                             group="run")
    resume: bool = option(False, "continue from the checkpoint in --output-dir", group="run", per_invocation=True)
    overwrite: bool = option(False, "train from scratch into an --output-dir that holds a run, replacing it "
                                    "(without --resume or --overwrite such a directory is refused)", group="run",
                             per_invocation=True)
    predict: str | None = option(None, "predict with the trained model in --output-dir ('-' reads stdin); no "
                                       "training", group="run", metavar="FILE", per_invocation=True)
    predictions: str | None = option(None, "where --predict writes JSON Lines (default stdout)", group="run",
                                     metavar="FILE", per_invocation=True)
    config: str | None = option(None, "a JSON file (e.g. a run's config.json) overriding any of these defaults; "
                                      "the command line overrides it", group="run", metavar="FILE",
                                per_invocation=True)
    resuming: bool = field(default=False, metadata={"internal": True, "per_invocation": True})
    """Set at start-up: ``--resume`` found a checkpoint to continue."""


@dataclass
class ClassificationOptions(RecipeOptions):
    """The options of ``recipes/text_classification.py``."""

    text_column: str = option("text", "column holding the text", group="text classification")
    label_column: str = option("label", "column holding the label", group="text classification")
    column_names: str | None = option(None, "comma-separated column names of CSV/TSV files without a header row",
                                      group="text classification")
    truncation: str = option("head+tail", "what --max-length keeps", group="text classification",
                             choices=get_args(TruncationKind))
    head_fraction: float = option(0.25, "share of --max-length kept from the head (head+tail)",
                                  group="text classification", low=0.0, high=1.0)
    tbptt_chunk: int = option(0, "train on chunks of N tokens with truncated back-propagation through time "
                                 "(0: off)", group="text classification", low=0)
    pooling: str = option("last+max", "encoder pooling: last, mean, max, attention or +-joined",
                          group="text classification")
    embedding_dropout: float = option(0.3, "dropout on the word vectors the encoder reads",
                                      group="text classification", low=0.0, high=1.0)
    num_buckets: int = retuned(RecipeOptions, "num_buckets", 66)
    embedding_dim: int = retuned(RecipeOptions, "embedding_dim", 128)
    dropout: float = retuned(RecipeOptions, "dropout", 0.5)
    output_dir: str = retuned(RecipeOptions, "output_dir", "runs/text_classification")


@dataclass
class TaggingOptions(RecipeOptions):
    """The options of ``recipes/tagging.py``."""

    tag_column: str = option("-1", "upos/xpos for CoNLL-U; an integer column index for column files (negative "
                                   "counts from the end; -1 = last, or UPOS for CoNLL-U)", group="tagging")
    char_encoder: str = option("cnn", "cnn, bilstm or none: character features of each word", group="tagging")
    char_dim: int = option(30, "character vector size", group="tagging", low=1)
    char_filters: int = option(50, "char CNN filters (char BiLSTM: hidden size per direction)", group="tagging",
                               low=1)
    decoder: str | None = option(None, "softmax or crf (default: a CRF for span tags such as BIO)",
                                 group="tagging", choices=("softmax", "crf"), auto=True)
    num_layers: int = retuned(RecipeOptions, "num_layers", 2)
    vocab_size: int = retuned(RecipeOptions, "vocab_size", 50000)
    output_dir: str = retuned(RecipeOptions, "output_dir", "runs/tagging")


def _declared(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def option_defaults(cls: type) -> dict[str, Any]:
    """``{name: default}`` of every option of ``cls``."""
    return {f.name: f.default for f in _declared(cls)}


def auto_options(cls: type = RecipeOptions) -> frozenset[str]:
    """The options of ``cls`` chosen from the data when not given."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("auto"))


def per_invocation_options(cls: type = RecipeOptions) -> tuple[str, ...]:
    """The options about one invocation, never saved in ``config.json`` nor read from ``--config``."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("per_invocation"))


def option_ranges(cls: type) -> dict[str, tuple[float | None, float | None, bool]]:
    """``{name: (low, high, low allowed)}`` of every numeric option of ``cls`` with a range."""
    return {f.name: (f.metadata["low"], f.metadata["high"], not f.metadata["low_open"]) for f in _declared(cls)
            if f.metadata.get("low") is not None or f.metadata.get("high") is not None}


def flag_of(name: str, cls: type = RecipeOptions) -> str:
    """The command-line flag of option ``name`` (``--max-tokens``; ``--no-amp`` for ``amp``)."""
    f = cls.__dataclass_fields__.get(name)
    return (f.metadata.get("flag") if f is not None else None) or "--" + name.replace("_", "-")


def build_parser(cls: type, description: str, formatter_class: Any = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one option per field of ``cls``, grouped as declared, every
    default from the dataclass (a bool defaulting to False is a ``--flag``; one defaulting to
    True is a ``--no-flag``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=formatter_class
                                     or argparse.HelpFormatter)
    groups: dict[str, Any] = {}
    for f in _declared(cls):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kwargs: dict[str, Any] = {"dest": f.name, "default": f.default, "help": meta["help"]}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if isinstance(f.default, bool):
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            kwargs["type"] = meta["type"] or (type(f.default) if f.default is not None else str)
            if meta["choices"]:
                kwargs["choices"] = list(meta["choices"])
        group.add_argument(flag_of(f.name, cls), **kwargs)
    return parser
