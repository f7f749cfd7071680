"""Errors raised by seqbucket_plugin.

Every error the plugin raises on bad input derives from :class:`SeqBucketError`, so
callers can catch the plugin's documented failures without catching bugs.
"""

from __future__ import annotations

import os


class SeqBucketError(Exception):
    """Base class of every error the plugin raises on bad input or configuration.

    ``path`` names the file the problem is in and ``line`` (1-based) the line, when they are
    known (else None), on every subclass; the message says them too. Subclasses whose message is
    built from ``path``/``line`` (:class:`DataFormatError`) take them first; the others take them
    as keywords and keep their message as it is."""

    path: str | None = None
    line: int | None = None

    def __init__(self, *args: object, path: str | os.PathLike | None = None, line: int | None = None):
        super().__init__(*args)
        if path is not None:
            self.path = os.fspath(path)
        if line is not None:
            self.line = line


class DataFormatError(SeqBucketError, ValueError):
    """A file is malformed. ``path`` and ``line`` (1-based, or None) locate the problem."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{os.fspath(path)}:{line}: " if line is not None else f"{os.fspath(path)}: "
        super().__init__(f"{where}{message}", path=path, line=line)
        self.path = None if path is None else os.fspath(path)
        self.line = line


class MissingColumnError(SeqBucketError, KeyError):
    """A requested column does not exist; the message lists the columns that do."""

    def __init__(self, column: str, available: list[str] | tuple[str, ...], source: str | None = None, *,
                 path: str | os.PathLike | None = None):
        self.column = column
        self.available = list(available)
        where = f" in {source}" if source else ""
        super().__init__(f"column {column!r} not found{where}; available columns: {self.available}", path=path)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class LoaderConfigError(SeqBucketError, ValueError):
    """A loader argument is invalid: unknown format or policy, malformed ``label_names``, bad column index.
    ``path`` names the file when the problem is the argument's fit to that file (a suffix that names
    no format, ``tag_column`` for a CoNLL-U file), else it is None."""


class UnknownLabelError(SeqBucketError, ValueError):
    """A label is not in the label set (e.g. an evaluation label never seen in training)."""


class TokenizerTypeError(SeqBucketError, TypeError):
    """Something that is not a tokenizer this package can use was given as one."""


class MissingPadTokenError(SeqBucketError, ValueError):
    """The tokenizer has no padding token and no explicit ``pad_id`` was given: padding with some
    id (0 is a real token in most vocabularies) would be a silent error."""


class EmptyTextError(SeqBucketError, ValueError):
    """An empty or whitespace-only text was found and the policy is ``"error"``."""


class OversizeExampleError(SeqBucketError, ValueError):
    """An example does not fit the batching budget and the oversize policy is ``"error"``."""


class StateDictError(SeqBucketError, ValueError):
    """A state dict does not match the pipeline it is loaded into."""


class WorkerSplitError(SeqBucketError, RuntimeError):
    """A pipe cannot be split across ``torch.utils.data.DataLoader`` workers without duplicates."""


class CheckpointError(SeqBucketError):
    """A checkpoint cannot be read, written or used: truncated, corrupt, not a plain-data file
    (refused without running its code), written by a different model or run, or the disk is full.
    ``path`` names the file."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        path = None if path is None else os.fspath(path)
        super().__init__(f"{path}: {message}" if path is not None else message, path=path)


class ResumeMismatchError(SeqBucketError):
    """``--resume`` would continue a run on different data, tokenizer, labels, settings or number
    of processes than those that wrote the checkpoint; the message lists every difference."""


class NonFiniteLossError(SeqBucketError, FloatingPointError):
    """A training loss was NaN or infinite and the policy is ``"stop"``; the message names the
    step, epoch and batch."""


class BatchOutOfMemoryError(SeqBucketError, MemoryError):
    """A batch did not fit in the device's memory; the message names its shape and a
    ``--max-tokens`` that would fit."""


class RunDirectoryError(SeqBucketError, ValueError):
    """A trained run directory cannot be used: a file is missing, malformed or inconsistent with
    the model (an unknown or wrongly typed ``config.json`` value, ``labels.json`` not a list of
    unique strings of the model's output size, a tokenizer or character vocabulary that does not
    match the embedding, weights of the wrong shape). ``path`` names the file and ``key`` the
    entry (or None). Raised by :func:`seqbucket_plugin.load_run` before anything is written."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, key: str | None = None):
        path = None if path is None else os.fspath(path)
        self.key = key
        where = "" if path is None else f"{path}: "
        what = "" if key is None else f"{key!r}: "
        super().__init__(f"{where}{what}{message}", path=path)


class BudgetSearchError(SeqBucketError):
    """The largest-budget search (:func:`seqbucket_plugin.training.budget.find_max_tokens`, a
    recipe's ``--max-tokens auto``) cannot run or finds nothing that fits: not on a CUDA device
    without a memory probe, or not even one row of the longest length fits."""


class RecipeError(SeqBucketError):
    """A bad option or input of a recipe (``recipes/*.py``); :func:`~seqbucket_plugin.training.cli.run_main`
    prints it as one ``error:`` line and exits with status 2. ``path`` names the file concerned
    (or None)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message, path=path)


class EncoderRegistrationError(SeqBucketError, ValueError):
    """A name (or alias) is already registered and overriding was not asked for, or is invalid."""


class UnknownEncoderError(SeqBucketError, KeyError):
    """No encoder is registered under a name; the message suggests the closest names."""

    def __init__(self, name: str, suggestions: list[str], available: list[str]):
        self.name = name
        self.suggestions = list(suggestions)
        self.available = list(available)
        hint = f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"no encoder registered as {name!r}{hint} (registered: {self.available})")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class EncoderInputError(SeqBucketError, ValueError):
    """The inputs given to an encoder or head are malformed (shape, lengths, mask with holes...)."""


class EncoderOptionError(SeqBucketError, TypeError):
    """An option was given that the encoder's factory does not accept; the message names the
    option and lists the ones it does accept."""
