"""Sequence tagging (POS, NER...) with word + character features, length bucketing and a
pack-aware encoder, on a CPU or a GPU.

    python recipes/tagging.py                                     # generated BIO data, < 1 minute on a CPU
    python recipes/tagging.py --train-file train.conllu --dev-file dev.conllu --test-file test.conllu \
        --tag-column upos --output-dir runs/ewt
    python recipes/tagging.py --predict sentences.txt --output-dir runs/ewt
    torchrun --nproc_per_node=2 recipes/tagging.py --output-dir runs/tagging-ddp   # 2 processes (DDP)

Every option's default is declared in seqbucket_plugin.training.options.TaggingOptions (``--help``
lists them); ``--config FILE`` (e.g. a run's config.json) overrides any of them and the command line
overrides both. ``--output-dir`` receives config.json, tokenizer/, chars.json, labels.json,
best_model.pt, checkpoint.pt, log.jsonl, metrics.json, run_summary.json, training_curves.png and
lengths.png.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel (gloo on
the CPU, NCCL on CUDA), the training batches are sharded by rank, evaluation is shared out and its
metrics are those of the whole dev/test set, and only rank 0 writes files or prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from seqbucket_plugin.datapipes import (
    CharIds,
    CharVocab,
    TextTokenizer,
    load_sentences,
    load_tagging_splits,
    tokenize_tagged_dataset,
    word_tokenizer,
)
from seqbucket_plugin.heads import SequenceTagger
from seqbucket_plugin.training import write_tagging_data
from seqbucket_plugin.training.auto_settings import choose_data_settings
from seqbucket_plugin.training.budget import dataset_worst_case_batches
from seqbucket_plugin.training.cli import RecipeError, apply_chosen, parse_args, run_main
from seqbucket_plugin.training.metrics import is_span_scheme
from seqbucket_plugin.training.model_options import encoder_kwargs, pretrained_embedding
from seqbucket_plugin.training.options import TaggingOptions
from seqbucket_plugin.training.recipe import RecipeRun, predict_input_lines, predict_to_jsonl
from seqbucket_plugin.training.tagging import evaluate_tagger, tagging_step

DESCRIPTION = __doc__.split("\n")[0].strip() + " " + __doc__.split("\n")[1].strip()


def tag_options(value, path: str) -> dict:
    """``load_tagging`` options of ``--tag-column`` for the training file's format: ``upos``/``xpos``
    for CoNLL-U (the default -1 means ``upos``), a column index for column files; the other kind is
    refused rather than ignored."""
    text = str(value).strip()
    try:
        column = int(text)
    except ValueError:
        column = None
    if Path(path).suffix.lower() == ".conllu":
        if column is None:
            return {"tag": text}
        if column == -1:  # the default: UPOS
            return {}
        raise RecipeError(f"--tag-column {text}: {path} is a CoNLL-U file; give --tag-column upos or xpos (a column "
                          "number applies to CoNLL column files)", path)
    if column is None:
        raise RecipeError(f"--tag-column {text}: {path} is a CoNLL column file; give the tag's column number "
                          "(0-based; negative counts from the end, -1 = the last)", path)
    return {"tag_column": column}


def read_splits(opts: TaggingOptions, files):
    """Sentences (``tokens``) with tag ids (``tags``) of the CoNLL-U or column files."""
    if opts.dataset:
        raise RecipeError("--dataset is not supported by the tagging recipe yet: Hub tagging sets differ in "
                          "their columns; export the splits to .conllu or column files and pass --train-file")
    return load_tagging_splits(files.train, files.dev, files.test, **tag_options(opts.tag_column, files.train))


def choose_settings(opts: TaggingOptions, train, tag_names: list[str]):
    """Settings chosen from the training sentences' lengths and tags (see auto_settings), set on ``opts``."""
    words = pc.list_value_length(train.with_format("arrow")["tokens"]).to_numpy(zero_copy_only=False)
    chosen = choose_data_settings(vars(opts), task="tagging", lengths=words, span_tags=is_span_scheme(tag_names))
    apply_chosen(opts, chosen)
    return chosen


def tokenize(opts: TaggingOptions, tokenizer: TextTokenizer, split, keep=()):
    return tokenize_tagged_dataset(split, tokenizer, subword=False, max_length=opts.max_length or None,
                                   truncation="head", keep_columns=["tokens", *keep])


def use_chars(opts: TaggingOptions) -> bool:
    return bool(opts.char_encoder) and str(opts.char_encoder).lower() != "none"


def batch_features(opts: TaggingOptions, chars: CharVocab):
    """What each PackedBatch gets after packing: the character ids of its words (or nothing; the
    words themselves are dropped)."""
    return CharIds(chars) if use_chars(opts) else _drop_tokens


def _drop_tokens(batch):
    batch.extras.pop("tokens", None)
    return batch


def encoder_options(opts: TaggingOptions) -> dict:
    """The recipe's encoder options: factory keyword -> (flag, value); see encoder_kwargs."""
    return {"num_layers": ("--num-layers", opts.num_layers),
            "dropout": ("--dropout", opts.dropout if opts.num_layers > 1 else 0.0)}


def build_model(opts: TaggingOptions, tokenizer: TextTokenizer, num_tags: int, num_chars: int,
                embedding=None) -> SequenceTagger:
    """Word embedding (pretrained with --embeddings; + char CNN/BiLSTM) -> encoder -> per-token
    scores (softmax or CRF)."""
    char_kwargs = None
    if use_chars(opts):
        key = "num_filters" if opts.char_encoder == "cnn" else "hidden_size"
        char_kwargs = {"char_dim": opts.char_dim, key: opts.char_filters}
    return SequenceTagger(
        tokenizer.vocab_size, num_tags, embedding_dim=opts.embedding_dim, hidden_size=opts.hidden_size,
        encoder=opts.encoder, encoder_kwargs=encoder_kwargs(opts, encoder_options(opts), quiet=True),
        embedding=embedding, char_encoder=opts.char_encoder if use_chars(opts) else None, num_chars=num_chars,
        char_kwargs=char_kwargs, decoder=opts.decoder, dropout=opts.dropout, padding_idx=tokenizer.pad_id,
        word_dropout=opts.word_dropout or 0.0, unk_idx=tokenizer.unk_id,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    """Train (or, with --predict, tag); returns the metrics or the number of predictions."""
    opts = parse_args(argv, TaggingOptions, DESCRIPTION)
    if opts.predict:
        return predict(opts)
    with RecipeRun(opts, task="tagging", encoder_options=encoder_options(opts)) as run:
        with run.main_process_first():  # rank 0 writes generated data and vocabularies; the others read them
            # 1. data: train/dev/test sentences (a dev set is held out of train when none is given)
            splits = run.load_splits(lambda files: read_splits(opts, files), generate=write_tagging_data)
            tag_names = list(splits["train"].features["tags"].feature.names)
            run.save_labels(tag_names)
            # 2. settings chosen from the training data (lengths, tag scheme); an explicit option wins
            chosen = choose_settings(opts, splits["train"], tag_names)
            # 3. vocabularies: whole words and characters of the training sentences
            tokenizer = run.load_or_build("tokenizer", load=TextTokenizer.load, save=TextTokenizer.save,
                                          build=lambda: word_tokenizer(splits["train"]["tokens"],
                                                                       min_frequency=opts.min_frequency,
                                                                       vocab_size=opts.vocab_size))
            chars = run.load_or_build("chars.json", build=lambda: CharVocab.build(splits["train"]["tokens"]),
                                      load=CharVocab.load, save=CharVocab.save)
        tokenized = {name: tokenize(opts, tokenizer, split, keep=run.keep_ids if name == "train" else ())
                     for name, split in splits.items()}
        naive = opts.batching == "naive"

        def step(autocast):
            return tagging_step(naive=naive, autocast=autocast)

        run.resolve_auto_max_tokens(
            chosen, longest=lambda: int(np.max(tokenized["train"]["length"])), step=step,
            build_model=lambda: build_model(opts, tokenizer, len(tag_names), len(chars)),
            make_batch=dataset_worst_case_batches(tokenized["train"], tokenizer.pad_id,
                                                  transform=batch_features(opts, chars)))
        # 4. bucketed batches with character ids, and the schedule once their number is known
        train_pipe = run.pipe(tokenized["train"], tokenizer.pad_id, train=True, transform=batch_features(opts, chars))
        loaders = {name: run.pipe(ds, tokenizer.pad_id, train=False, transform=batch_features(opts, chars)).loader()
                   for name, ds in tokenized.items() if name != "train"}
        run.settle(chosen, num_examples=len(tokenized["train"]), batches_per_epoch=train_pipe.batcher.num_batches(0))

        # 5. model, training (the best model on the dev set), evaluation on every split
        def evaluate(model, loader):
            return evaluate_tagger(model, loader, run.device, tag_names, naive=naive, dist=run.ctx)

        model = build_model(opts, tokenizer, len(tag_names), len(chars),
                            pretrained_embedding(opts, tokenizer, tokenized["train"]))
        trainer = run.trainer(model, train_pipe, lambda m: evaluate(m, loaders["dev"]), step=step,
                              train=tokenized["train"], dev=tokenized["dev"], labels=tag_names,
                              vocabularies=[tokenizer.tokenizer.to_str(), json.dumps(chars.chars)])
        return run.fit_and_report(trainer, train_pipe, loaders, evaluate, what="tagger",
                                  data=f"{len(tokenized['train']):,} sentences, {len(tag_names)} tags")


def predict(opts: TaggingOptions) -> dict:
    """Tag sentences with the trained run in --output-dir; writes JSON Lines with one tag per token
    (sentences longer than the run's --max-length are tagged in windows). Sentences: stdin (``-``,
    one whitespace-tokenized sentence per line) or a file read by ``load_sentences`` (.conllu:
    the FORM column; .jsonl: a ``tokens`` list per line; else one sentence per non-blank line),
    read before the model is loaded."""
    lines = predict_input_lines(opts)
    sentences = [line.split() for line in lines] if lines is not None else load_sentences(opts.predict)
    return predict_to_jsonl(opts, sentences, lambda i, p: {"index": i, "tokens": p["tokens"], "tags": p["tags"]})


if __name__ == "__main__":
    sys.exit(run_main(main))
