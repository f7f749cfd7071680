"""Shared machinery of the recipes: training loop, metrics, checkpoints, plots, generated data.

The recipes (``recipes/text_classification.py``, ``recipes/tagging.py``) read top to bottom as the
steps of a run; everything they share lives here.
"""

from seqbucket_plugin.training.checkpoint import (
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    verify_checkpoint,
)
from seqbucket_plugin.training.distributed import DistContext, init_distributed, map_batches
from seqbucket_plugin.training.engine import (
    StepOutput,
    TrainConfig,
    Trainer,
    linear_warmup_decay,
    resolve_device,
)
from seqbucket_plugin.training.metrics import (
    accuracy,
    get_spans,
    is_span_scheme,
    macro_f1,
    span_prf,
    token_accuracy,
)
from seqbucket_plugin.training.synthetic import write_classification_data, write_tagging_data

__all__ = [
    "DistContext",
    "StepOutput",
    "TrainConfig",
    "Trainer",
    "accuracy",
    "atomic_save",
    "capture_rng_state",
    "get_spans",
    "init_distributed",
    "is_span_scheme",
    "linear_warmup_decay",
    "load_checkpoint",
    "macro_f1",
    "map_batches",
    "resolve_device",
    "restore_rng_state",
    "span_prf",
    "token_accuracy",
    "verify_checkpoint",
    "write_classification_data",
    "write_tagging_data",
]
