"""Pipeline stages as ``torchdata.nodes`` nodes: sources, tokenization, bucketing, packing."""

from seqbucket_plugin.datapipes.bucketing import BatchingStats, BucketBatcher, estimate_boundaries, plan_batches
from seqbucket_plugin.datapipes.packing import LABEL_PAD_ID, Pack, PackedBatch, collate_packed
from seqbucket_plugin.datapipes.sources import IterableDatasetSource, MapDatasetSource, from_hf

__all__ = [
    "LABEL_PAD_ID",
    "BatchingStats",
    "BucketBatcher",
    "IterableDatasetSource",
    "MapDatasetSource",
    "Pack",
    "PackedBatch",
    "collate_packed",
    "estimate_boundaries",
    "from_hf",
    "plan_batches",
]
