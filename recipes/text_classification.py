"""Text classification with length bucketing and a pack-aware encoder, on a CPU or a GPU.

    python recipes/text_classification.py                         # generated data, < 1 minute on a CPU
    python recipes/text_classification.py --train-file train.parquet --test-file test.parquet \
        --output-dir runs/imdb
    python recipes/text_classification.py --predict reviews.txt --output-dir runs/imdb
    torchrun --nproc_per_node=2 recipes/text_classification.py --output-dir runs/ddp   # 2 processes (DDP)

Every option's default is declared in seqbucket_plugin.training.options.ClassificationOptions
(``--help`` lists them); ``--config FILE`` (e.g. a run's config.json) overrides any of them and the
command line overrides both. The run leaves in ``--output-dir``: config.json,
tokenizer/, labels.json, best_model.pt, checkpoint.pt, log.jsonl, metrics.json, run_summary.json,
training_curves.png and lengths.png.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel (gloo on
the CPU, NCCL on CUDA), the training batches are sharded by rank, evaluation is shared out and its
metrics are those of the whole dev/test set, and only rank 0 writes files or prints.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from seqbucket_plugin.datapipes import TextTokenizer, load_classification_splits, load_texts, tokenize_dataset
from seqbucket_plugin.heads import SequenceClassifier
from seqbucket_plugin.training import write_classification_data
from seqbucket_plugin.training.auto_settings import choose_data_settings
from seqbucket_plugin.training.budget import dataset_worst_case_batches
from seqbucket_plugin.training.classification import classification_step, evaluate_classifier
from seqbucket_plugin.training.cli import RecipeError, apply_chosen, parse_args, run_main
from seqbucket_plugin.training.model_options import encoder_kwargs, pretrained_embedding
from seqbucket_plugin.training.options import ClassificationOptions
from seqbucket_plugin.training.recipe import RecipeRun, hub_splits, predict_input_lines, predict_to_jsonl

DESCRIPTION = __doc__.split("\n")[0]


def column_names(opts: ClassificationOptions) -> list[str] | None:
    return opts.column_names.split(",") if opts.column_names else None


def read_splits(opts: ClassificationOptions, files):
    """The labelled splits: a Hub dataset (``--dataset``, a ClassLabel column) or the files."""
    if opts.dataset:
        if opts.train_file:
            raise RecipeError("give --dataset or --train-file, not both")
        return hub_splits(opts.dataset, {opts.text_column: "text", opts.label_column: "label"})
    return load_classification_splits(files.train, files.dev, files.test, text_column=opts.text_column,
                                      label_column=opts.label_column, column_names=column_names(opts))


def label_names(train) -> list[str]:
    feature = train.features["label"]
    if not hasattr(feature, "names"):
        raise RecipeError(f"the label column must be a ClassLabel, got {feature}")
    return list(feature.names)


def train_tokenizer(opts: ClassificationOptions, train) -> TextTokenizer:
    """A word-level tokenizer of the training texts (words seen fewer than --min-frequency times
    are unknown)."""
    return TextTokenizer.train(train, kind="word", vocab_size=opts.vocab_size, min_frequency=opts.min_frequency or 1)


def choose_settings(opts: ClassificationOptions, train, names: list[str]):
    """Truncation, vocabulary cut-off, word dropout, batches and metric from the training texts'
    word counts and labels (seqbucket_plugin.training.auto_settings), set on ``opts``."""
    words_only = TextTokenizer.train([], kind="word", vocab_size=opts.vocab_size)  # a word count needs no vocabulary
    lengths = tokenize_dataset(train, words_only, label_column=None).with_format("numpy")["length"]
    counts = np.bincount(np.asarray(train["label"]), minlength=len(names))
    chosen = choose_data_settings(vars(opts), task="classification", lengths=lengths, label_counts=counts)
    apply_chosen(opts, chosen)
    return chosen


def tokenize(opts: ClassificationOptions, tokenizer: TextTokenizer, split, keep=()):
    max_length = None if opts.tbptt_chunk or not opts.max_length else opts.max_length
    return tokenize_dataset(split, tokenizer, max_length=max_length, truncation=opts.truncation,
                            head_fraction=opts.head_fraction, keep_columns=keep,
                            label_column="label" if "label" in split.column_names else None)


def encoder_options(opts: ClassificationOptions) -> dict:
    """The recipe's encoder options: factory keyword -> (flag, value); see encoder_kwargs."""
    return {"num_layers": ("--num-layers", opts.num_layers), "input_dropout": ("--embedding-dropout",
            opts.embedding_dropout), "dropout": ("--dropout", opts.dropout if opts.num_layers > 1 else 0.0)}


def build_model(opts: ClassificationOptions, tokenizer: TextTokenizer, num_classes: int,
                embedding=None) -> SequenceClassifier:
    """Embedding (pretrained with --embeddings) -> encoder -> pooling -> MLP."""
    return SequenceClassifier(
        tokenizer.vocab_size, num_classes, embedding_dim=opts.embedding_dim, hidden_size=opts.hidden_size,
        encoder=opts.encoder, pooling=opts.pooling, dropout=opts.dropout, padding_idx=tokenizer.pad_id,
        word_dropout=opts.word_dropout or 0.0, unk_idx=tokenizer.unk_id, embedding=embedding,
        encoder_kwargs=encoder_kwargs(opts, encoder_options(opts), quiet=True),
    )


def main(argv: Sequence[str] | None = None) -> dict:
    """Train (or, with --predict, classify); returns the metrics or the number of predictions."""
    opts = parse_args(argv, ClassificationOptions, DESCRIPTION)
    if opts.predict:
        return predict(opts)
    with RecipeRun(opts, task="classification", encoder_options=encoder_options(opts)) as run:
        with run.main_process_first():  # rank 0 writes generated data and the tokenizer; the others read them
            # 1. data: train/dev/test (a dev set is held out of train when none is given)
            splits = run.load_splits(lambda files: read_splits(opts, files), generate=write_classification_data)
            names = label_names(splits["train"])
            run.save_labels(names)
            # 2. settings chosen from the training data (lengths, label counts); an explicit option wins
            chosen = choose_settings(opts, splits["train"], names)
            # 3. tokenizer: the words of the training texts
            tokenizer = run.load_or_build("tokenizer", build=lambda: train_tokenizer(opts, splits["train"]),
                                          load=TextTokenizer.load, save=TextTokenizer.save)
        tokenized = {name: tokenize(opts, tokenizer, split, keep=run.keep_ids if name == "train" else ())
                     for name, split in splits.items()}

        def step(autocast):
            return classification_step(naive=opts.batching == "naive", tbptt_chunk=opts.tbptt_chunk, autocast=autocast)

        run.resolve_auto_max_tokens(chosen, longest=lambda: int(np.max(tokenized["train"]["length"])),
                                    build_model=lambda: build_model(opts, tokenizer, len(names)),
                                    make_batch=dataset_worst_case_batches(tokenized["train"], tokenizer.pad_id),
                                    step=step)
        # 4. bucketed batches, and the schedule once their number is known
        train_pipe = run.pipe(tokenized["train"], tokenizer.pad_id, train=True)
        loaders = {name: run.pipe(ds, tokenizer.pad_id, train=False).loader()
                   for name, ds in tokenized.items() if name != "train"}
        run.settle(chosen, num_examples=len(tokenized["train"]), batches_per_epoch=train_pipe.batcher.num_batches(0))

        # 5. model, training (the best model on the dev set), evaluation on every split
        def evaluate(model, loader):
            return evaluate_classifier(model, loader, run.device, naive=opts.batching == "naive",
                                       tbptt_chunk=opts.tbptt_chunk, num_classes=len(names), dist=run.ctx)

        model = build_model(opts, tokenizer, len(names), pretrained_embedding(opts, tokenizer, tokenized["train"]))
        trainer = run.trainer(model, train_pipe, lambda m: evaluate(m, loaders["dev"]), step=step,
                              train=tokenized["train"], dev=tokenized["dev"],
                              vocabularies=[tokenizer.tokenizer.to_str()], labels=names,
                              grad_sync="manual" if opts.tbptt_chunk else "ddp")  # TBPTT does not call forward()
        return run.fit_and_report(trainer, train_pipe, loaders, evaluate, what="classifier",
                                  data=f"{len(tokenized['train']):,} examples, {len(names)} classes")


def predict(opts: ClassificationOptions) -> dict:
    """Classify texts with the trained run in --output-dir; writes JSON Lines. Texts: stdin (``-``,
    one per line) or a file read by the training loaders (.parquet/.csv/.tsv/.jsonl: the text
    column; anything else: one text per non-blank line), read before the model is loaded."""
    texts = predict_input_lines(opts)
    if texts is None:
        texts = load_texts(opts.predict, text_column=opts.text_column, column_names=column_names(opts))
    return predict_to_jsonl(opts, texts, lambda i, p: {
        "index": i, "label": p["label"], "probability": round(p["probability"], 4),
        "probabilities": {k: round(v, 4) for k, v in p["probabilities"].items()}})


if __name__ == "__main__":
    sys.exit(run_main(main))
