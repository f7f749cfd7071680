"""Command-line plumbing shared by the recipes: JSON configs as argparse defaults, the effective
config saved with the run, and clean failures (a message and exit status 2, no traceback)."""

from __future__ import annotations

import argparse
import copy
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from seqbucket_plugin.errors import SeqBucketError
from seqbucket_plugin.training.auto_settings import choose_schedule_settings
from seqbucket_plugin.training.checkpoint import verify_checkpoint
from seqbucket_plugin.training.engine import CHECKPOINT_FILE, TrainConfig

__all__ = ["RecipeError", "add_common_arguments", "apply_chosen", "checkpoint_to_resume", "load_config",
           "open_predictions", "parse_args", "read_stdin_lines", "run_main", "run_options", "save_config",
           "settle_settings", "train_config", "validate_options"]

CONFIG_FILE = "config.json"
# options whose default is not in every config file
BUILT_IN_DEFAULTS = {"amp": True, "progress": True, "resume": False, "grad_accum": 1, "nonfinite": "stop",
                     "nonfinite_patience": 10, "longest_first": False, "embeddings": None,
                     "freeze_embeddings": False, "log_every": 0, "report_to": "none"}


# what one invocation does, never saved in config.json nor read from a config file
PER_INVOCATION = ("resume", "resuming", "overwrite", "predict", "predictions", "config")
# options that a config value of null leaves to seqbucket_plugin.training.auto_settings
AUTO_OPTIONS = frozenset({"max_length", "min_frequency", "word_dropout", "max_tokens", "max_batch_size", "metric", "epochs", "lr",
                          "warmup_ratio", "eval_every", "patience", "decoder"})


class RecipeError(SeqBucketError):
    """A bad argument or input of a recipe; the recipe prints it and exits with status 2.
    ``path`` names the file concerned (or None)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message, path=path)


# the range of every numeric option: (lowest, highest, whether the lowest itself is allowed); None: no bound.
# Checked by validate_options on the merged command line and config, before anything is written.
OPTION_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "max_tokens": (1, None, True), "batch_size": (1, None, True), "max_batch_size": (1, None, True),
    "max_length": (0, None, True), "num_buckets": (1, None, True), "head_fraction": (0.0, 1.0, True),
    "tbptt_chunk": (0, None, True), "vocab_size": (1, None, True), "min_frequency": (0, None, True),
    "embedding_dim": (1, None, True), "hidden_size": (1, None, True), "num_layers": (1, None, True),
    "char_dim": (1, None, True), "char_filters": (1, None, True),
    "dropout": (0.0, 1.0, True), "word_dropout": (0.0, 1.0, True), "embedding_dropout": (0.0, 1.0, True),
    "epochs": (1, None, True), "max_steps": (0, None, True), "grad_accum": (1, None, True),
    "lr": (0.0, None, False), "weight_decay": (0.0, None, True), "warmup_ratio": (0.0, 1.0, True),
    "clip_norm": (0.0, None, True), "patience": (0, None, True), "eval_every": (0, None, True),
    "save_every": (0, None, True), "seed": (0, None, True), "nonfinite_patience": (0, None, True),
    "threads": (0, None, True), "log_every": (0, None, True),
}


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON config (an object mapping option names, with ``_`` not ``-``, to values).

    Raises:
        RecipeError: missing file or invalid JSON.
    """
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError as err:
        raise RecipeError(f"config file not found: {os.fspath(path)}") from err
    except json.JSONDecodeError as err:
        raise RecipeError(f"{os.fspath(path)}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise RecipeError(f"{os.fspath(path)}: a config must be a JSON object")
    return {k.replace("-", "_"): v for k, v in config.items() if not k.startswith("_")}


def save_config(config: dict[str, Any], output_dir: str | os.PathLike,
                chosen: dict[str, str] | None = None) -> str:
    """Write the effective config as ``config.json`` in ``output_dir``; returns its path.

    ``chosen``: why each setting chosen from the data has its value, saved under ``_chosen``
    (a key :func:`load_config` skips, so the file still works as a ``--config``)."""
    if chosen:
        config = {**config, "_chosen": dict(chosen)}
    path = os.path.join(os.fspath(output_dir), CONFIG_FILE)
    os.makedirs(os.fspath(output_dir), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both recipes share (defaults come from the config file, see :func:`parse_args`)."""
    data = parser.add_argument_group("data")
    data.add_argument("--train-file", help="training file (format from the suffix); none: generated data")
    data.add_argument("--dev-file", help="dev file (default: 10%% of the training file)")
    data.add_argument("--test-file", help="test file (default: none, or the dataset's test split)")
    data.add_argument("--dataset", help="a Hugging Face Hub dataset name (needs internet), instead of files")
    data.add_argument("--max-length", type=int, help="truncate examples to this many tokens (0: no truncation)")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--max-tokens", type=max_tokens_value,
                          help="token budget per batch, padding included; 'auto' (CUDA only): the largest budget "
                               "whose longest batches train within GPU memory, found by real training steps "
                               "(seqbucket_plugin.training.budget)")
    batching.add_argument("--batch-size", type=int, help="fixed rows per batch (instead of --max-tokens)")
    batching.add_argument("--max-batch-size", type=int, help="at most this many rows per --max-tokens batch")
    batching.add_argument("--longest-first", action="store_true", default=None,
                          help="put each epoch's largest batch first, so an out-of-memory error shows at step 1")
    batching.add_argument("--batching", choices=["bucket", "naive"],
                          help="bucket: length buckets (default); naive: batches across all lengths, "
                               "fixed --batch-size, the model runs over the padding (baseline)")
    model = parser.add_argument_group("model")
    model.add_argument("--encoder", help="a registered encoder name (see list_encoders())")
    model.add_argument("--embedding-dim", type=int, help="word vector size")
    model.add_argument("--hidden-size", type=int, help="encoder hidden size per direction")
    model.add_argument("--num-layers", type=int, help="encoder layers")
    model.add_argument("--dropout", type=float, help="dropout rate of the model")
    model.add_argument("--word-dropout", type=float,
                       help="training only: probability that a word is replaced by the unknown word")
    model.add_argument("--embeddings", metavar="FILE",
                       help="initialise the word embedding from pretrained vectors (word2vec text/binary, GloVe, "
                            "fastText .vec; only the vocabulary's rows are read); sets --embedding-dim")
    model.add_argument("--freeze-embeddings", action="store_true", default=None,
                       help="keep the --embeddings vectors fixed in training")
    model.add_argument("--vocab-size", type=int, help="at most this many words in the vocabulary (special tokens "
                                                         "included)")
    model.add_argument("--min-frequency", type=int, help="words seen fewer times are unknown")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, help="passes over the training set")
    train.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (0: no cap)")
    train.add_argument("--grad-accum", type=int,
                       help="batches per optimizer step (gradient accumulation; keeps the effective batch "
                            "when the number of processes changes)")
    train.add_argument("--lr", type=float, help="peak learning rate (AdamW, linear warm-up and decay)")
    train.add_argument("--weight-decay", type=float, help="AdamW weight decay (not on embeddings and biases)")
    train.add_argument("--warmup-ratio", type=float, help="share of the steps spent warming the learning rate up")
    train.add_argument("--clip-norm", type=float, help="clip the gradient norm to this (0: no clipping)")
    train.add_argument("--patience", type=int, help="early stopping: evaluations without improvement (0: off)")
    train.add_argument("--metric", help="dev metric that selects the best model and stops early (accuracy, "
                                        "macro_f1; tagging: accuracy, f1)")
    train.add_argument("--eval-every", type=int, help="evaluate every N steps (0: at epoch ends only)")
    train.add_argument("--save-every", type=int, help="checkpoint every N steps (and at epoch ends)")
    train.add_argument("--seed", type=int, help="seed of the initialisation, batches and dropout")
    train.add_argument("--nonfinite", choices=["stop", "skip"],
                       help="a NaN/inf loss: stop with an error naming the step (default), or skip the step and "
                            "count it")
    train.add_argument("--nonfinite-patience", type=int,
                       help="with --nonfinite skip: stop after this many skipped steps in a row (0: never)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto: CUDA when available")
    train.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default)")
    train.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                       help="no mixed precision on CUDA")
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                       help="no progress bar (it is shown only on a terminal)")
    train.add_argument("--log-every", type=int, metavar="N",
                       help="print the train loss, learning rate and tokens/s every N optimizer steps (0: only at "
                            "evaluations)")
    train.add_argument("--report-to", choices=["none", "tensorboard"],
                       help="also write the train and dev figures for TensorBoard to <output-dir>/tensorboard "
                            "(pip install 'seqbucket_plugin[tensorboard]')")
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", help="where the config, tokenizer, labels, model, metrics and plots go")
    run.add_argument("--resume", action="store_true", default=None,
                     help="continue from the checkpoint in --output-dir")
    run.add_argument("--overwrite", action="store_true", default=False,
                     help="train from scratch into an --output-dir that holds a run, replacing it (without "
                          "--resume or --overwrite such a directory is refused)")
    run.add_argument("--predict", metavar="FILE",
                     help="predict with the trained model in --output-dir ('-' reads stdin); no training")
    run.add_argument("--predictions", metavar="FILE", help="where --predict writes JSON Lines (default stdout)")


def max_tokens_value(text: str) -> int | str:
    """``--max-tokens``: a positive int, or ``auto`` (the largest budget that fits the GPU)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or 'auto', got {text!r}") from None


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default: ``(default: from the training data)`` for the options chosen
    at start-up, ``(default: on)``/``(default: off)`` for flags (``--no-amp``: what is on without
    it), ``(default: none)`` for an unset one, and a default for options without a help text."""

    def _format_action(self, action):
        if action.option_strings and not action.help and action.default is not argparse.SUPPRESS \
                and action.dest != "help":
            action = copy.copy(action)
            action.help = "\0"  # argparse prints no help (and so no default) for an empty help
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = (action.help or "").replace("\0", "").strip()
        if action.dest in AUTO_OPTIONS and action.default is None:
            return f"{text} (default: from the training data)".strip()
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            value = action.default if action.default is not None else BUILT_IN_DEFAULTS.get(action.dest, False)
            if isinstance(action, argparse._StoreFalseAction):  # --no-amp: the default says what is on
                state = f"{action.dest.replace('_', ' ')} {'on' if value else 'off'}"
            else:
                state = "on" if value else "off"
            return f"{text} (default: {state})".strip()
        if action.option_strings and action.default is None:
            return f"{text} (default: none)".strip()
        if "%(default)" in text or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)".strip()


def parse_args(argv: Sequence[str] | None, description: str, default_config: str,
               add_task_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """Parse ``argv`` with defaults from ``--config`` (default ``default_config``).

    Every option has a value afterwards: the command line wins over the config file. Raises
    ``SystemExit(2)`` (argparse's usual behaviour) on unknown options, and :class:`RecipeError`
    on an unreadable config or a config key that is not an option.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=default_config)
    known, _ = pre.parse_known_args(argv)
    config = load_config(known.config)
    parser = argparse.ArgumentParser(description=description, formatter_class=_DefaultsFormatter)
    parser.add_argument("--config", default=default_config, help="JSON config with the defaults of every option")
    add_common_arguments(parser)
    add_task_arguments(parser)
    options = {a.dest for a in parser._actions}
    unknown = sorted(set(config) - options)
    if unknown:
        raise RecipeError(f"{known.config}: unknown config keys {unknown}")
    config.pop("config", None)  # saved by older runs; a config file never names another file
    actions = sorted(set(config) & set(PER_INVOCATION))
    if actions:  # a config file (perhaps someone else's) sets options, never actions or other files
        raise RecipeError(f"{known.config}: {actions} cannot be set in a config file; give them on the command line")
    _check_config_types(parser, config, known.config)
    missing = sorted(a.dest for a in parser._actions if a.option_strings and a.dest not in config
                     and a.dest not in BUILT_IN_DEFAULTS and a.dest not in PER_INVOCATION and a.dest != "help")
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise RecipeError(f"{known.config}: a config file sets every option, but {shown} are missing; start from "
                          f"{os.path.basename(default_config)} (or a run's config.json) and change what you need",
                          known.config)
    parser.set_defaults(**{**BUILT_IN_DEFAULTS, **config})  # shown by --help; a config file may override them
    args = parser.parse_args(argv)
    for flag, default in BUILT_IN_DEFAULTS.items():  # a config value of null
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    validate_options(args)
    return args


def _check_config_types(parser: argparse.ArgumentParser, config: dict[str, Any], source: str) -> None:
    """A config value must be what its option's argparse type would give (or null): ``epochs: 1.5``
    or ``lr: "fast"`` is refused rather than used as it is (argparse converts only string defaults)."""
    actions = {a.dest: a for a in parser._actions}
    for key, value in config.items():
        action = actions.get(key)
        if action is None or value is None:
            continue
        flag = action.option_strings[-1] if action.option_strings else key
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            ok, want = isinstance(value, bool), "true or false"
        elif action.choices is not None:
            ok, want = value in action.choices and not isinstance(value, bool), f"one of {list(action.choices)}"
        elif action.type is int:
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif action.type is float:
            ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif action.type is max_tokens_value:
            ok = (isinstance(value, int) and not isinstance(value, bool)) or value == "auto"
            want = "an integer or 'auto'"
        else:  # strings (a column given as a number, e.g. tag_column: -1, is fine)
            ok, want = isinstance(value, (str, int)) and not isinstance(value, bool), "a string"
        if not ok:
            raise RecipeError(f"{source}: {key} ({flag}) must be {want}, got {json.dumps(value)}", source)


def validate_options(args: argparse.Namespace) -> None:
    """Every option's range (:data:`OPTION_RANGES`) and the combinations that cannot work, checked
    once right after parsing, before anything is read or written.

    Raises:
        RecipeError: naming the flag, its value and what it accepts.
    """
    values = vars(args)
    for key, (low, high, low_ok) in OPTION_RANGES.items():
        value = values.get(key)
        if value is None or value == "auto":
            continue
        flag = "--" + key.replace("_", "-")
        if low is not None and (value < low or (value == low and not low_ok)):
            bound = f">= {low}" if low_ok else f"> {low}"
            if high is not None:
                bound = f"in [{low}, {high}]" if low_ok else f"in ({low}, {high}]"
            extra = {"max_length": " (0: no truncation)", "max_steps": " (0: no cap)"}.get(key, "")
            raise RecipeError(f"{flag} must be {bound}{extra}, got {value}")
        if high is not None and value > high:
            raise RecipeError(f"{flag} must be in [{low}, {high}], got {value}")
    if values.get("batch_size") is not None and values.get("max_tokens") is not None:
        raise RecipeError(f"give --batch-size (fixed rows per batch) or --max-tokens (a token budget per batch), not "
                          f"both (got --batch-size {values['batch_size']} and --max-tokens {values['max_tokens']})")
    predictions = values.get("predictions")
    if predictions and os.path.isdir(predictions):
        raise RecipeError(f"--predictions {predictions} is a directory; give the file to write", predictions)
    output_dir = values.get("output_dir")
    if output_dir and not values.get("predict"):
        _check_writable_dir(output_dir)


def _check_writable_dir(directory: str | os.PathLike) -> None:
    """``--output-dir`` is (or can be created as) a writable directory; nothing is created here."""
    path = os.path.abspath(os.fspath(directory))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        what = "is a file" if probe == path else f"is under {probe}, a file"
        raise RecipeError(f"--output-dir {os.fspath(directory)} {what}, not a directory", probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == path else f"cannot be created: {probe} is not writable"
        raise RecipeError(f"--output-dir {os.fspath(directory)} {what}", probe)


def open_predictions(path: str | None):
    """The sink of ``--predict``: ``path`` opened for writing (UTF-8), or stdout when None.

    Raises:
        RecipeError: the file cannot be created (a directory, a missing or read-only folder)."""
    if not path:
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as err:
        raise RecipeError(f"--predictions {path}: cannot write ({err.strerror or err})", path) from err


def read_stdin_lines() -> list[str]:
    """The lines of stdin (``--predict -``), decoded as UTF-8.

    Raises:
        RecipeError: stdin is not UTF-8 text (naming the line)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream without bytes underneath (e.g. io.StringIO in tests)
        return list(sys.stdin)
    lines = []
    for line_no, raw in enumerate(buffer, 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise RecipeError(f"--predict -: stdin line {line_no} is not UTF-8 text ({err.reason} at byte "
                              f"{err.start}); convert it, e.g. with iconv -t utf-8") from None
    return [line.replace("\r\n", "\n") for line in lines]


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options a run saves as ``config.json`` (not the per-invocation ones: resume, overwrite,
    predict, and the path of the ``--config`` file)."""
    return {k: v for k, v in vars(args).items() if k not in PER_INVOCATION}


def train_config(args: argparse.Namespace, metric: str | None = None) -> TrainConfig:
    """The :class:`~seqbucket_plugin.training.TrainConfig` of parsed recipe options (after the
    options chosen from the data are filled in); ``metric`` defaults to ``args.metric``."""
    metric = metric or args.metric
    return TrainConfig(epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, weight_decay=args.weight_decay,
                       warmup_ratio=args.warmup_ratio, clip_norm=args.clip_norm, patience=args.patience,
                       eval_every=args.eval_every, save_every=args.save_every, metric=metric, amp=args.amp,
                       progress=args.progress, seed=args.seed, grad_accum=args.grad_accum,
                       nonfinite=args.nonfinite, nonfinite_patience=args.nonfinite_patience,
                       log_every=args.log_every, report_to=args.report_to)


def apply_chosen(args: argparse.Namespace, chosen: Any) -> None:
    """Set the options chosen from the data (an :class:`~seqbucket_plugin.training.auto_settings.Chosen`)
    on ``args``; options given explicitly were never chosen, so they are kept."""
    for key, value in chosen.values.items():
        setattr(args, key, value)


def settle_settings(args: argparse.Namespace, chosen: Any, output_dir: str | os.PathLike, *, task: str,
                    num_examples: int, batches_per_epoch: int, ctx: Any) -> None:
    """Choose the schedule (epochs, lr, warm-up, evaluations, patience) now that the batches per
    epoch are known, print every setting chosen from the data once, and write ``config.json``
    with the reasons (rank 0, not when resuming: a resume keeps its run's files)."""
    chosen.update(choose_schedule_settings(vars(args), num_examples=num_examples,
                                           batches_per_epoch=batches_per_epoch, world_size=ctx.world_size,
                                           task=task))
    apply_chosen(args, chosen)
    if chosen.values:
        print("settings chosen from the training data (an option given explicitly wins):\n" + chosen.summary())
    if ctx.is_main and not args.resuming:
        save_config(run_options(args), output_dir, chosen.reasons)


def checkpoint_to_resume(args: argparse.Namespace, output_dir: str | os.PathLike) -> bool:
    """True when ``--resume`` finds a checkpoint in ``output_dir``, after checking that it is
    intact; call it before writing anything there.

    Without ``--resume``, a directory that holds a finished or interrupted run (``best_model.pt``,
    ``checkpoint.pt`` or ``log.jsonl``) is refused unless ``--overwrite`` is given; then that run's
    model, checkpoint, log and metrics are removed first (by rank 0), so nothing of it can mix with
    the new run. ``--overwrite`` is consumed here (removed from ``args``): like ``--resume`` it is
    about this invocation, so it is never saved in ``config.json`` or compared on a resume.

    Raises:
        RecipeError: the directory holds a run and neither ``--resume`` nor ``--overwrite`` was
            given, or both were (nothing is written or removed).
        CheckpointError: the checkpoint is empty, truncated or corrupt (the directory is untouched).
    """
    from seqbucket_plugin.training.engine import BEST_MODEL_FILE, LOG_FILE

    overwrite = bool(vars(args).pop("overwrite", False))
    directory = os.fspath(output_dir)
    path = os.path.join(directory, CHECKPOINT_FILE)
    found = [name for name in (BEST_MODEL_FILE, CHECKPOINT_FILE, LOG_FILE)
             if os.path.isfile(os.path.join(directory, name))]
    if args.resume and overwrite:
        raise RecipeError("give --resume (continue the run in --output-dir) or --overwrite (replace it), not both")
    if found and not args.resume:
        if not overwrite:
            raise RecipeError(f"--output-dir {directory} already holds a run ({', '.join(found)}); add --resume to "
                              "continue it or --overwrite to replace it")
        if os.environ.get("RANK", "0") == "0":
            for name in (*found, "metrics.json", "run_summary.json"):
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass
        return False
    if not (args.resume and os.path.isfile(path)):
        return False
    verify_checkpoint(path)
    return True


def run_main(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a recipe's ``main`` as a script: documented errors (every :class:`SeqBucketError`, a
    missing file, a full disk or exceeded quota) print one ``error: ...`` line on stderr and exit
    with status 2; anything else propagates (a bug should show its traceback)."""
    try:
        main(argv)
    except (SeqBucketError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"error: disk full{where} ({err.strerror or err}); free some space and run again", file=sys.stderr)
        return 2
    return 0
