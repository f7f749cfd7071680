"""Truncation and size counts of tokenized data: :class:`TokenizeReport`, computed vectorised from
the ``length`` and ``num_tokens`` columns of any (also a cached) tokenized dataset, or counted by a
:class:`~seqbucket_plugin.datapipes.TokenizeNode` as it yields."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from seqbucket_plugin.errors import MissingColumnError

__all__ = ["TokenizeReport", "tokenize_report"]

logger = logging.getLogger(__package__)  # "seqbucket_plugin.datapipes.tokenize": one name for every tokenize warning


@dataclass(frozen=True)
class TokenizeReport:
    """Counts over a tokenized dataset (or what a :class:`~seqbucket_plugin.datapipes.TokenizeNode` has yielded).

    Attributes:
        examples: number of examples.
        tokens: total ids kept (sum of ``length``, BOS/EOS included).
        tokens_before_truncation: sum of ``num_tokens``.
        truncated: examples that lost ids to truncation.
        truncated_tokens: ids dropped by truncation.
        max_num_tokens: longest pre-truncation length (0 when empty).
    """

    examples: int = 0
    tokens: int = 0
    tokens_before_truncation: int = 0
    truncated: int = 0
    truncated_tokens: int = 0
    max_num_tokens: int = 0

    @property
    def truncated_fraction(self) -> float:
        """``truncated / examples`` (0.0 when empty)."""
        return self.truncated / self.examples if self.examples else 0.0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_arrays(cls, length: Any, num_tokens: Any) -> TokenizeReport:
        """Vectorised counts from ``length`` and ``num_tokens`` columns (Arrow or numpy)."""
        length = pa.array(length) if not isinstance(length, (pa.Array, pa.ChunkedArray)) else length
        num_tokens = pa.array(num_tokens) if not isinstance(num_tokens, (pa.Array, pa.ChunkedArray)) else num_tokens
        length = pc.cast(length, pa.int64())
        num_tokens = pc.cast(num_tokens, pa.int64())
        dropped = pc.subtract(num_tokens, length)
        return cls(
            examples=len(length),
            tokens=int(pc.sum(length).as_py() or 0),
            tokens_before_truncation=int(pc.sum(num_tokens).as_py() or 0),
            truncated=int(pc.sum(pc.greater(dropped, 0)).as_py() or 0),
            truncated_tokens=int(pc.sum(dropped).as_py() or 0),
            max_num_tokens=int(pc.max(num_tokens).as_py() or 0),
        )


def tokenize_report(ds: Any) -> TokenizeReport:
    """:class:`TokenizeReport` of a dataset made by :func:`~seqbucket_plugin.datapipes.tokenize_dataset`
    or :func:`~seqbucket_plugin.datapipes.tokenize_tagged_dataset` (also a cached one): vectorised over its ``length`` and
    ``num_tokens`` Arrow columns.

    Raises:
        MissingColumnError: ``length`` or ``num_tokens`` is absent.
    """
    for col in ("length", "num_tokens"):
        if col not in ds.column_names:
            raise MissingColumnError(col, ds.column_names, "tokenized dataset")
    table = ds.with_format("arrow", columns=["length", "num_tokens"])[:]
    return TokenizeReport.from_arrays(table.column("length"), table.column("num_tokens"))


def _warn_truncated(report: TokenizeReport, max_length: int | None, what: str) -> None:
    if report.truncated:
        logger.warning(
            "%s: truncated %d of %d examples to max_length=%s (%d of %d tokens dropped)",
            what, report.truncated, report.examples, max_length,
            report.truncated_tokens, report.tokens_before_truncation,
        )
