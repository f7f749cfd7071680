"""Train/dev/test splits: the training split fixes the label names of the others."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from datasets import Dataset, DatasetDict

from seqbucket_plugin.datapipes.loaders.arguments import PathLike
from seqbucket_plugin.datapipes.loaders.report import LoadReport
from seqbucket_plugin.errors import DataFormatError


def _load_splits(
    load: Callable[..., tuple[Dataset, LoadReport]],
    names_of: Callable[[Dataset], list[str]],
    files: dict[str, PathLike | None],
    label_names: Sequence[str] | None,
    return_report: bool,
    options: dict[str, Any],
) -> DatasetDict | tuple[DatasetDict, dict[str, LoadReport]]:
    """Load the given splits in order; the first (train) fixes the label names of the others."""
    splits: dict[str, Dataset] = {}
    reports: dict[str, LoadReport] = {}
    for split, path in files.items():
        if path is None:
            continue
        splits[split], reports[split] = load(path, label_names=label_names, return_report=True, **options)
        if splits[split].num_rows == 0:
            dropped = reports[split].dropped_empty
            why = f" ({dropped} empty example(s) dropped)" if dropped else ""
            raise DataFormatError(f"the {split} file has no examples{why}", path)
        if label_names is None:
            label_names = names_of(splits[split])
    result = DatasetDict(splits)
    return (result, reports) if return_report else result
