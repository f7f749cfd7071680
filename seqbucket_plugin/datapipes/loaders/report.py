"""What a load read and dropped (:class:`LoadReport`), and the warning for dropped examples."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

__all__ = ["LoadReport"]

logger = logging.getLogger(__package__)  # one logger for the loaders, named as before they were split


@dataclass(frozen=True)
class LoadReport:
    """What a load read and dropped.

    ``rows_read``/``rows_kept`` count examples: table rows for classification, sentences for tagging.
    ``dropped_empty`` counts empty / whitespace-only texts (classification) or sentences without any
    token (tagging).  ``tokens`` is the number of tokens kept (tagging only).  ``skipped_lines`` counts
    lines that are not tokens: ``comment``/``multiword``/``empty_node`` (CoNLL-U), ``docstart`` (columns).
    ``from_cache`` is True when the dataset came from the loader cache without re-reading the file.
    """

    path: str
    format: str
    rows_read: int
    rows_kept: int
    dropped_empty: int = 0
    tokens: int | None = None
    skipped_lines: dict[str, int] = field(default_factory=dict)
    from_cache: bool = False


def _warn_dropped(report: LoadReport) -> None:
    if report.dropped_empty:
        tagging = report.tokens is not None
        logger.warning(
            "%s: dropped %d of %d %s %s; kept %d",
            report.path,
            report.dropped_empty,
            report.rows_read,
            "sentences" if tagging else "rows",
            "without tokens" if tagging else "with empty or whitespace-only text",
            report.rows_kept,
        )
