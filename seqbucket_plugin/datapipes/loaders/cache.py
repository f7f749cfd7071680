"""The loader cache: one Arrow IPC stream per (file signature, loader options), memory-mapped on a hit.

The file name is ``<loader>-<stem>-<digest>.arrow``; the digest covers ``_CACHE_FORMAT_VERSION``, the
loader name, the resolved path, the file's size and mtime and the loader options.  The
:class:`~seqbucket_plugin.datapipes.loaders.report.LoadReport` of the load that built the file is stored
in the stream's schema metadata, so a hit returns it too (``from_cache=True``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets import Dataset, Features

from seqbucket_plugin.datapipes.loaders.arguments import PathLike
from seqbucket_plugin.datapipes.loaders.report import LoadReport, _warn_dropped, logger

_CACHE_FORMAT_VERSION = 1
_REPORT_METADATA_KEY = b"seqbucket_plugin.load_report"
_WRITE_BATCH_ROWS = 1000


def _cached_load(
    loader: str,
    path: PathLike,
    options: dict[str, Any],
    cache_dir: PathLike | None,
    build: Callable[[], tuple[pa.Table, Features, LoadReport]],
) -> tuple[Dataset, LoadReport]:
    """Return the cached dataset for this file and options, building and storing it on a miss."""
    cache_file = _cache_file(loader, path, options, cache_dir)
    cached = _read_cache(cache_file)
    if cached is None:
        table, features, report = build()
        dataset = _write_cache(cache_file, table, features, report)
    else:
        dataset, report = cached
    report = dataclasses.replace(report, path=os.fspath(path))
    _warn_dropped(report)
    return dataset, report


def _cache_file(loader: str, path: PathLike, options: dict[str, Any], cache_dir: PathLike | None) -> Path:
    stat = os.stat(path)  # FileNotFoundError for a missing file, before anything else
    key = {
        "version": _CACHE_FORMAT_VERSION,
        "loader": loader,
        "path": os.path.realpath(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "options": options,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    root = (
        Path(cache_dir)
        if cache_dir is not None
        else Path(datasets.config.HF_DATASETS_CACHE) / "seqbucket_plugin" / "loaders"
    )
    return root / f"{loader}-{Path(path).stem[:40]}-{digest}.arrow"


def _read_cache(cache_file: Path) -> tuple[Dataset, LoadReport] | None:
    """The cached dataset and its report (marked ``from_cache``), or None on a miss or unreadable file."""
    if not cache_file.is_file():
        return None
    try:
        with pa.memory_map(str(cache_file)) as source:
            metadata = pa.ipc.open_stream(source).schema.metadata or {}
        report = LoadReport(**json.loads(metadata[_REPORT_METADATA_KEY]))
        return Dataset.from_file(str(cache_file)), dataclasses.replace(report, from_cache=True)
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
        logger.warning("ignoring unreadable loader cache file %s", cache_file)
        return None


def _write_cache(cache_file: Path, table: pa.Table, features: Features, report: LoadReport) -> Dataset:
    """Write ``table`` atomically as an Arrow stream carrying ``features`` and ``report``; memory-map it."""
    schema = features.arrow_schema
    report_json = json.dumps(dataclasses.asdict(report)).encode()
    schema = schema.with_metadata({**(schema.metadata or {}), _REPORT_METADATA_KEY: report_json})
    table = table.select(list(features)).cast(schema)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table, max_chunksize=_WRITE_BATCH_ROWS)
        os.replace(tmp, cache_file)  # concurrent writers of the same key produce identical files
    finally:
        tmp.unlink(missing_ok=True)
    return Dataset.from_file(str(cache_file))
