"""Where a training run's figures go: ``log.jsonl`` (one JSON line per evaluation) and, with
``TrainConfig.report_to="tensorboard"``, TensorBoard scalars. Only the main process writes."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any

from seqbucket_plugin.errors import SeqBucketError

__all__ = ["LOG_FILE", "REPORT_TO", "RunLog", "tensorboard_writer"]

LOG_FILE = "log.jsonl"
REPORT_TO = ("none", "tensorboard")


def tensorboard_writer(log_dir: str) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` for ``log_dir``.

    Raises:
        SeqBucketError: the ``tensorboard`` package is not installed (the message says how).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise SeqBucketError("TrainConfig.report_to='tensorboard' needs the tensorboard package: "
                             "pip install 'seqbucket_plugin[tensorboard]'") from err
    return SummaryWriter(log_dir=log_dir)


class RunLog:
    """``log.jsonl`` in ``output_dir`` and the TensorBoard writer of ``report_to``; does nothing
    unless ``enabled`` (the main process)."""

    def __init__(self, output_dir: str, *, enabled: bool, report_to: str = "none"):
        self.path = os.path.join(output_dir, LOG_FILE)
        self.enabled = enabled
        self.writer = None
        if report_to == "tensorboard" and enabled:
            self.writer = tensorboard_writer(os.path.join(output_dir, "tensorboard"))

    def rewrite(self, records: Iterable[dict] = ()) -> None:
        """Start ``log.jsonl`` over with exactly ``records`` (none: an empty log)."""
        if not self.enabled:
            return
        with open(self.path, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")

    def append(self, record: dict) -> None:
        """Add one evaluation's line to ``log.jsonl``."""
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def report(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """TensorBoard scalars ``prefix/name`` at ``step`` (finite numbers only)."""
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()
