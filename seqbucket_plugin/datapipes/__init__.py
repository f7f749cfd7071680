"""Pipeline stages as ``torchdata.nodes`` nodes: sources, tokenization, bucketing, packing, and the
data pieces they use (tokenizers, character features).

Data flows one way: source -> tokenize -> bucket_batch -> pack -> (prefetch / pin_memory) -> Loader.
:class:`Pipe` chains them; every stage is also usable on its own.
"""

from seqbucket_plugin.datapipes.bucketing import (
    BatchingStats,
    BucketBatcher,
    estimate_boundaries,
    plan_batches,
)
from seqbucket_plugin.datapipes.chars import CharIds, CharVocab
from seqbucket_plugin.datapipes.loaders import (
    LoaderConfigError,
    LoadReport,
    load_classification,
    load_classification_splits,
    load_conll_columns,
    load_conllu,
    load_sentences,
    load_tagging,
    load_tagging_splits,
    load_texts,
)
from seqbucket_plugin.datapipes.packing import (
    LABEL_PAD_ID,
    Collate,
    ColumnarBatch,
    ExampleBatch,
    Pack,
    PackedBatch,
    collate_packed,
    collate_table,
)
from seqbucket_plugin.datapipes.pipe import Pipe, PipeIterableDataset, PipeLoader, WorkerSplitError
from seqbucket_plugin.datapipes.sources import IterableDatasetSource, MapDatasetSource, from_hf
from seqbucket_plugin.datapipes.tokenize import (
    IGNORE_INDEX,
    MissingPadTokenError,
    TextTokenizer,
    TokenizeNode,
    TokenizeReport,
    TokenizerTypeError,
    as_text_tokenizer,
    tokenize_dataset,
    tokenize_report,
    tokenize_tagged_dataset,
    word_tokenizer,
)

__all__ = [
    "IGNORE_INDEX",
    "LABEL_PAD_ID",
    "BatchingStats",
    "BucketBatcher",
    "CharIds",
    "CharVocab",
    "IterableDatasetSource",
    "LoadReport",
    "LoaderConfigError",
    "MapDatasetSource",
    "MissingPadTokenError",
    "Collate",
    "ColumnarBatch",
    "ExampleBatch",
    "Pack",
    "PackedBatch",
    "Pipe",
    "PipeIterableDataset",
    "PipeLoader",
    "TextTokenizer",
    "TokenizeNode",
    "TokenizeReport",
    "TokenizerTypeError",
    "WorkerSplitError",
    "as_text_tokenizer",
    "collate_packed",
    "collate_table",
    "estimate_boundaries",
    "from_hf",
    "load_classification",
    "load_classification_splits",
    "load_conll_columns",
    "load_conllu",
    "load_sentences",
    "load_tagging",
    "load_tagging_splits",
    "load_texts",
    "plan_batches",
    "tokenize_dataset",
    "tokenize_report",
    "tokenize_tagged_dataset",
    "word_tokenizer",
]
