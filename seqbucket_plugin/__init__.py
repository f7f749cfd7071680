"""seqbucket_plugin: length bucketing, packing and pack-aware recurrent encoders for PyTorch text."""

from seqbucket_plugin.errors import (
    BatchOutOfMemoryError,
    CheckpointError,
    DataFormatError,
    EmptyTextError,
    MissingColumnError,
    NonFiniteLossError,
    OversizeExampleError,
    ResumeMismatchError,
    SeqBucketError,
    StateDictError,
    UnknownLabelError,
)

__version__ = "0.1.0"

__all__ = [
    "BatchOutOfMemoryError",
    "CheckpointError",
    "DataFormatError",
    "EmptyTextError",
    "MissingColumnError",
    "NonFiniteLossError",
    "OversizeExampleError",
    "ResumeMismatchError",
    "SeqBucketError",
    "StateDictError",
    "UnknownLabelError",
    "__version__",
]
