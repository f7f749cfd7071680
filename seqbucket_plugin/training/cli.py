"""Command-line plumbing shared by the recipes: the command line derived from the option
dataclasses (:mod:`~seqbucket_plugin.training.options`), ``--config`` files over their defaults,
the effective config saved with the run, and clean failures (one ``error:`` line, exit status 2,
no traceback)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from seqbucket_plugin.errors import RecipeError, SeqBucketError
from seqbucket_plugin.training.auto_settings import choose_schedule_settings
from seqbucket_plugin.training.checkpoint import verify_checkpoint
from seqbucket_plugin.training.engine import CHECKPOINT_FILE, TrainConfig
from seqbucket_plugin.training.options import (
    RecipeOptions,
    auto_options,
    build_parser,
    max_tokens_value,
    option_ranges,
    per_invocation_options,
)

__all__ = ["RecipeError", "apply_chosen", "checkpoint_to_resume", "load_config",
           "open_predictions", "parse_args", "read_stdin_lines", "run_main", "run_options", "save_config",
           "settle_settings", "train_config", "validate_options"]

CONFIG_FILE = "config.json"


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


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default: ``(default: from the training data)`` for the options chosen
    at start-up, ``(default: on)``/``(default: off)`` for flags (``--no-amp``: what is on without
    it), ``(default: none)`` for an unset one."""

    auto: frozenset[str] = frozenset()

    def _get_help_string(self, action):
        text = (action.help or "").strip()
        if action.dest in self.auto and action.default is None:
            return f"{text} (default: from the training data)".strip()
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            value = bool(action.default)
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


def parse_args(argv: Sequence[str] | None, options: type[RecipeOptions], description: str) -> RecipeOptions:
    """Parse ``argv`` into an ``options`` instance (a :class:`RecipeOptions` dataclass, whose
    fields declare every option's default): the command line wins over a ``--config`` file, which
    wins over the dataclass. A config file may set any subset of the options (``null`` or absent:
    the default); it never sets per-invocation options (``--resume``, ``--predict``...).

    Raises:
        SystemExit(2): unknown options or a malformed value (argparse's usual behaviour).
        RecipeError: an unreadable config, a config key that is not an option or whose value has
            the wrong type, or a value out of its range (:func:`validate_options`).
    """
    formatter = type("Formatter", (_DefaultsFormatter,), {"auto": auto_options(options)})
    parser = build_parser(options, description, formatter)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        config = load_config(known.config)
        config.pop("config", None)  # saved by older runs; a config file never names another file
        unknown = sorted(set(config) - {a.dest for a in parser._actions})
        if unknown:
            raise RecipeError(f"{known.config}: unknown config keys {unknown}", known.config)
        actions = sorted(set(config) & set(per_invocation_options(options)))
        if actions:  # a config file (perhaps someone else's) sets options, never actions or other files
            raise RecipeError(f"{known.config}: {actions} cannot be set in a config file; give them on the command "
                              "line", known.config)
        _check_config_types(parser, config, known.config)
        parser.set_defaults(**{k: v for k, v in config.items() if v is not None})
    args = options(**vars(parser.parse_args(argv)))
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
    """Every option's range (declared in :mod:`~seqbucket_plugin.training.options`) and the
    combinations that cannot work, checked
    once right after parsing, before anything is read or written.

    Raises:
        RecipeError: naming the flag, its value and what it accepts.
    """
    values = vars(args)
    for key, (low, high, low_ok) in option_ranges(type(args) if is_dataclass(args) else RecipeOptions).items():
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
    per_invocation = per_invocation_options()
    return {k: v for k, v in vars(args).items() if k not in per_invocation}


def train_config(args: Any) -> TrainConfig:
    """The :class:`~seqbucket_plugin.training.TrainConfig` of parsed recipe options (after the
    options chosen from the data are filled in): every TrainConfig field, read from ``args``."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


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
