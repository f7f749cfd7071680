"""seqbucket_plugin: length bucketing, packing and pack-aware recurrent encoders for PyTorch text."""

from typing import TYPE_CHECKING

from seqbucket_plugin.errors import (
    BatchOutOfMemoryError,
    BudgetSearchError,
    CheckpointError,
    DataFormatError,
    EmptyTextError,
    EncoderInputError,
    EncoderOptionError,
    EncoderRegistrationError,
    LoaderConfigError,
    MissingColumnError,
    MissingPadTokenError,
    NonFiniteLossError,
    OversizeExampleError,
    RecipeError,
    ResumeMismatchError,
    RunDirectoryError,
    SeqBucketError,
    StateDictError,
    TokenizerTypeError,
    UnknownEncoderError,
    UnknownLabelError,
    WorkerSplitError,
)

if TYPE_CHECKING:  # what type checkers see of the lazily imported names
    from seqbucket_plugin.runs import load_run
    from seqbucket_plugin.vectors import load_vectors

__version__ = "0.1.0"

__all__ = [
    "BatchOutOfMemoryError",
    "BudgetSearchError",
    "CheckpointError",
    "DataFormatError",
    "EmptyTextError",
    "EncoderInputError",
    "EncoderOptionError",
    "EncoderRegistrationError",
    "LoaderConfigError",
    "MissingColumnError",
    "MissingPadTokenError",
    "NonFiniteLossError",
    "OversizeExampleError",
    "RecipeError",
    "ResumeMismatchError",
    "RunDirectoryError",
    "SeqBucketError",
    "StateDictError",
    "TokenizerTypeError",
    "UnknownEncoderError",
    "UnknownLabelError",
    "WorkerSplitError",
    "__version__",
    "load_run",
    "load_vectors",
]


def __getattr__(name: str):
    # imported on first use: ``import seqbucket_plugin`` stays light (no torch, datasets)
    if name == "load_run":
        from seqbucket_plugin.runs import load_run

        return load_run
    if name == "load_vectors":
        from seqbucket_plugin.vectors import load_vectors

        return load_vectors
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
