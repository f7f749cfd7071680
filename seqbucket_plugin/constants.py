"""Constants shared across the package, defined once."""

from __future__ import annotations

__all__ = ["IGNORE_INDEX"]

#: The label of a position that carries no label: padding, a word's later sub-word pieces, BOS/EOS.
#: Losses skip it (``ignore_index`` of ``torch.nn.functional.cross_entropy``) and so do the metrics.
#: Re-exported as ``datapipes.IGNORE_INDEX``, ``heads.IGNORE_INDEX`` and ``datapipes.LABEL_PAD_ID``.
IGNORE_INDEX = -100
