"""What the recipes check and build around the model: the options an encoder takes, and the
starting word embedding (pretrained vectors with ``--embeddings FILE``, or vectors of the training
texts with ``--embedding-init cooccurrence``; ``--freeze-embeddings``).

Both checks run before a recipe writes anything, so a bad option or file ends the run with one
``error:`` line (exit status 2) and an untouched ``--output-dir``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from seqbucket_plugin.encoders.errors import UnknownEncoderError
from seqbucket_plugin.encoders.registry import accepted_options, list_encoders, supported_options
from seqbucket_plugin.errors import SeqBucketError

__all__ = ["check_embeddings", "check_options", "encoder_kwargs", "pretrained_embedding"]

# the value at which a recipe option asks nothing of the encoder
_NEUTRAL = {"num_layers": 1, "dropout": 0.0, "input_dropout": 0.0}


def _config_default(args: Any, dest: str) -> Any:
    """The value ``dest`` has when not given on the command line: the ``--config`` file's, else the
    option's declared default (:mod:`~seqbucket_plugin.training.options`)."""
    from seqbucket_plugin.training.cli import load_config

    path = getattr(args, "config", None)
    if path:
        try:
            value = load_config(path).get(dest)
        except Exception:  # the config was read once already; a failure here only loses the note
            value = None
        if value is not None:
            return value
    declared = getattr(type(args), "__dataclass_fields__", {}).get(dest)
    return None if declared is None else declared.default


def encoder_kwargs(args: argparse.Namespace, options: dict[str, tuple[str, Any]], *, quiet: bool = False
                   ) -> dict[str, Any]:
    """The keyword arguments for ``args.encoder``: ``options`` maps each factory keyword to
    ``(command-line flag, value)``; only those the factory accepts are returned.

    An option the factory does not take is left out when its value asks nothing (1 layer, no
    dropout, None) or is the config file's default (a note says so, unless ``quiet``); given
    explicitly, it is an error.

    Raises:
        RecipeError: the encoder is not registered, or does not take an option given explicitly
            (naming the option and the ones the encoder takes).
    """
    from seqbucket_plugin.training.cli import RecipeError

    name = args.encoder
    try:
        kept, unknown = supported_options(name, {k: v for k, (_, v) in options.items()})
    except UnknownEncoderError as err:
        raise RecipeError(f"--encoder {name!r} is not registered; choose from {list_encoders()}") from err
    dropped = []
    for key in unknown:
        flag, value = options[key]
        dest = flag.lstrip("-").replace("-", "_")
        if value is None or value == _NEUTRAL.get(key):
            continue  # asks nothing of the encoder
        if value == _config_default(args, dest):
            dropped.append(flag)
            continue
        accepted = sorted(accepted_options(name) or ())
        raise RecipeError(f"--encoder {name} does not take {flag} ({key}={value!r}); its factory accepts "
                          f"{accepted}. Leave {flag} out (or give the option the encoder takes)")
    if dropped and not quiet:
        print(f"note: --encoder {name} does not take {', '.join(sorted(set(dropped)))}; the config's "
              "default is not passed")
    return kept


def check_embeddings(args: argparse.Namespace) -> None:
    """Validate ``--embeddings`` before anything is written and set ``args.embedding_dim`` to the
    vectors' dimension (so ``config.json`` rebuilds the model). A no-op without ``--embeddings``.

    Raises:
        RecipeError: ``--freeze-embeddings`` with neither ``--embeddings`` nor ``--embedding-init
            cooccurrence``, both of those, a missing file, or an ``--embedding-dim`` given
            explicitly that differs from the vectors'.
        DataFormatError: the file is not a word-vectors file.
    """
    from seqbucket_plugin.training.cli import RecipeError
    from seqbucket_plugin.vectors import vectors_dim

    path = getattr(args, "embeddings", None)
    init = getattr(args, "embedding_init", None)
    if path and init == "cooccurrence":
        raise RecipeError("--embeddings FILE and --embedding-init cooccurrence both set the starting word vectors; "
                          "give one")
    if not path:
        if getattr(args, "freeze_embeddings", False) and init != "cooccurrence":
            raise RecipeError("--freeze-embeddings needs --embeddings FILE or --embedding-init cooccurrence")
        return
    if not os.path.isfile(path):
        raise RecipeError(f"--embeddings: file not found: {path}")
    dim = vectors_dim(path)
    default = _config_default(args, "embedding_dim")
    if args.embedding_dim not in (dim, default):
        raise RecipeError(f"--embedding-dim {args.embedding_dim} differs from the {dim} dimensions of the vectors "
                          f"in {path}; leave --embedding-dim out")
    args.embedding_dim = dim


def pretrained_embedding(args: argparse.Namespace, tokenizer: Any, train: Any) -> Any:
    """The starting word embedding of ``tokenizer``'s vocabulary, or None for a random one.

    With ``--embeddings FILE``: the file's vectors (reading only the rows it needs; OOV rows
    random, see :func:`~seqbucket_plugin.vectors.build_embedding`). With ``--embedding-init
    cooccurrence``: vectors of the words' co-occurrences in ``train`` (a tokenized dataset with
    ``input_ids``; :func:`~seqbucket_plugin.word_vectors.cooccurrence_vectors`), skipped when
    resuming (the checkpoint replaces them) and replaced by a random start, said in one line, when
    the texts have no word pair to count. Frozen with ``--freeze-embeddings``; prints the
    coverage.
    """
    from seqbucket_plugin.vectors import build_embedding, load_vectors
    from seqbucket_plugin.word_vectors import cooccurrence_vectors

    path = getattr(args, "embeddings", None)
    freeze = bool(getattr(args, "freeze_embeddings", False))
    state = "frozen" if freeze else "fine-tuned"
    if path:
        vectors = load_vectors(path, vocab=tokenizer, lowercase=True)
        embedding = build_embedding(tokenizer, vectors, freeze=freeze, seed=args.seed)
        print(f"embeddings {os.path.basename(path)} ({embedding.embedding_dim}d, {state}): "
              f"{embedding.coverage.summary()}")
        return embedding
    if getattr(args, "embedding_init", None) != "cooccurrence" or getattr(args, "resuming", False):
        return None
    pad = tokenizer.pad_id
    try:
        weight, report = cooccurrence_vectors(train.with_format("arrow")["input_ids"], tokenizer.vocab_size,
                                              args.embedding_dim, exclude=[pad] if pad is not None else [],
                                              seed=args.seed)
    except SeqBucketError as e:  # e.g. one-word texts: no pair to count
        print(f"embeddings: a random start ({e})")
        return None
    embedding = torch.nn.Embedding(tokenizer.vocab_size, args.embedding_dim, padding_idx=pad, _weight=weight,
                                   _freeze=freeze)
    print(f"embeddings ({args.embedding_dim}d, {state}): {report.summary()}")
    return embedding


def check_options(args: argparse.Namespace, encoder_options: dict[str, tuple[str, Any]], *,
                  quiet: bool = False) -> None:
    """Every check a recipe runs before it writes anything: the encoder takes the options given
    (:func:`encoder_kwargs`), ``--embeddings`` is a vectors file (:func:`check_embeddings`), and
    ``--report-to tensorboard`` has its package.

    Raises:
        RecipeError, DataFormatError: naming the option.
    """
    from seqbucket_plugin.training.cli import RecipeError

    encoder_kwargs(args, encoder_options, quiet=quiet)
    check_embeddings(args)
    if getattr(args, "report_to", "none") == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise RecipeError("--report-to tensorboard needs the tensorboard package: "
                              "pip install 'seqbucket_plugin[tensorboard]'")
