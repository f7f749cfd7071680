"""Local file loaders: classification tables and CoNLL tagging files as ``datasets.Dataset``.

Every loader returns an Arrow-backed :class:`datasets.Dataset` that is **memory-mapped from a cache
file**, so large files do not live in RAM and later ``Dataset.map``/``filter`` results are cached next
to it (``datasets`` keys them by the dataset fingerprint, which follows the cache file).

How a load works (the same for every format):

1. *read* the file into a :class:`pyarrow.Table` -- pyarrow's parquet / CSV / JSON readers for the
   classification formats, a one-pass line parser that builds flat column lists for the CoNLL formats;
2. *encode* labels / tags to ids and apply the empty-text policy with vectorised ``pyarrow.compute``;
3. *store* the table as an Arrow IPC stream in the cache directory (``<HF_DATASETS_CACHE>/seqbucket_plugin/
   loaders`` unless ``cache_dir`` is given) and return ``Dataset.from_file`` on it.  The cache file name
   is a digest of the resolved path, the file's size and mtime, the loader options and a format
   version, so a later identical call skips steps 1-2 (``LoadReport.from_cache`` is then True) and an
   edited file is read again.  A file rewritten with the same size within one mtime tick is not
   detected -- the same trade-off ``datasets`` makes.

Why not ``Dataset.from_dict`` / ``from_generator`` for the CoNLL formats: ``from_dict`` gives an
in-memory dataset without cache files, so later ``map`` results are not cached on disk.
``from_generator`` does write a fingerprinted cache, but it fingerprints by hashing its
``gen_kwargs`` (which would have to carry the file signature anyway), encodes every example through
``Features.encode_example`` in Python (a dict lookup per token), needs the tag set before the single
pass, and wraps our located :class:`DataFormatError` in a ``DatasetGenerationError``.  Writing the
parsed columns ourselves keeps one pass, vectorised encoding and exact error locations.

Errors (all derive from :class:`~seqbucket_plugin.errors.SeqBucketError` except ``FileNotFoundError``):

* :class:`DataFormatError` -- malformed file: wrong field count, invalid JSON or UTF-8, bad CoNLL-U id,
  missing / wrongly typed label; ``.path`` and ``.line`` (1-based, None for parquet) locate it.
* :class:`MissingColumnError` -- a requested column is absent; lists the columns that exist.
* :class:`UnknownLabelError` -- a label / tag not in a fixed ``label_names``; names it, file and line.
* :class:`EmptyTextError` -- empty text with ``empty_policy="error"``; names file and line.
* :class:`LoaderConfigError` -- an invalid argument (unknown format or policy, bad ``label_names``).

Row numbers in messages are 0-based indices into the file's records (before any row is dropped);
line numbers are 1-based physical lines, the header line included.

Modules, one job each (the public names are re-exported here; import them from this package):

* :mod:`.classification` -- :func:`load_classification`, :func:`load_classification_splits`;
* :mod:`.tagging` -- :func:`load_conllu`, :func:`load_conll_columns`, :func:`load_tagging`,
  :func:`load_tagging_splits`;
* :mod:`.texts` -- :func:`load_texts`, :func:`load_sentences` (inputs to predict, nothing cached);
* :mod:`.readers` -- parquet / CSV / TSV / JSON Lines / plain-text readers into Arrow tables;
* :mod:`.conll` -- the CoNLL-U and column-file parsers;
* :mod:`.labels` -- label / tag encoding to ids;
* :mod:`.cache` -- the Arrow cache files; :mod:`.report` -- :class:`LoadReport` and dropped-example warnings;
* :mod:`.splits` -- train/dev/test splits; :mod:`.arguments` -- argument checks;
* :mod:`.locate` -- finding the line of a failed read (error path only).
"""

from seqbucket_plugin.datapipes.loaders.arguments import CLASSIFICATION_SUFFIXES as CLASSIFICATION_SUFFIXES
from seqbucket_plugin.datapipes.loaders.classification import load_classification, load_classification_splits
from seqbucket_plugin.datapipes.loaders.report import LoadReport
from seqbucket_plugin.datapipes.loaders.tagging import (
    load_conll_columns,
    load_conllu,
    load_tagging,
    load_tagging_splits,
)
from seqbucket_plugin.datapipes.loaders.texts import load_sentences, load_texts
from seqbucket_plugin.errors import LoaderConfigError

__all__ = [
    "LoadReport",
    "LoaderConfigError",
    "load_classification",
    "load_classification_splits",
    "load_conll_columns",
    "load_conllu",
    "load_sentences",
    "load_tagging",
    "load_tagging_splits",
    "load_texts",
]
