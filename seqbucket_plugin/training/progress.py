"""The per-epoch progress bar of :class:`~seqbucket_plugin.training.Trainer`."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar when stderr is a terminal (and tqdm is installed), else nothing (the trainer
    prints epoch summaries instead)."""

    def __init__(self, enabled: bool, total: int | None, initial: int, desc: str):
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=desc, leave=True, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    @property
    def shown(self) -> bool:
        return self.bar is not None

    def update(self, **postfix: Any) -> None:
        """Advance by one optimizer step and show ``postfix`` (name -> text)."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(postfix, refresh=False)

    def writing(self) -> contextlib.AbstractContextManager:
        """A context in which printed lines go above the bar instead of into it."""
        if self.bar is None:
            return contextlib.nullcontext()
        return self.bar.external_write_mode()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
