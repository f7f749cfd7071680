"""Text classification with length bucketing and a pack-aware encoder, on a CPU or a GPU.

    python recipes/text_classification.py                         # generated data, < 1 minute on a CPU
    python recipes/text_classification.py --train-file train.parquet --test-file test.parquet \
        --output-dir runs/imdb
    python recipes/text_classification.py --predict reviews.txt --output-dir runs/imdb
    torchrun --nproc_per_node=2 recipes/text_classification.py --output-dir runs/ddp   # 2 processes (DDP)

Defaults come from recipes/configs/text_classification.json (``--config`` picks another file);
any option on the command line overrides them. The run leaves in ``--output-dir``: config.json,
tokenizer/, labels.json, best_model.pt, checkpoint.pt, log.jsonl, metrics.json, run_summary.json,
training_curves.png and lengths.png.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel (gloo on
the CPU, NCCL on CUDA), the training batches are sharded by rank, evaluation is shared out and its
metrics are those of the whole dev/test set, and only rank 0 writes files or prints.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch

from seqbucket_plugin.datapipes import (
    Pipe,
    TextTokenizer,
    load_classification_splits,
    load_texts,
    tokenize_dataset,
)
from seqbucket_plugin.heads import SequenceClassifier
from seqbucket_plugin.runs import load_run
from seqbucket_plugin.training import Trainer, write_classification_data
from seqbucket_plugin.training.auto_settings import Chosen, choose_data_settings
from seqbucket_plugin.training.budget import (
    amp_autocast,
    check_auto_max_tokens,
    dataset_worst_case_batches,
    resolve_auto_max_tokens,
)
from seqbucket_plugin.training.classification import (
    classification_step,
    evaluate_classifier,
)
from seqbucket_plugin.training.cli import (
    RecipeError,
    apply_chosen,
    checkpoint_to_resume,
    open_predictions,
    parse_args,
    read_stdin_lines,
    run_main,
    run_options,
    save_config,
    settle_settings,
    train_config,
)
from seqbucket_plugin.training.distributed import (
    DebugRecorder,
    DistContext,
    init_distributed,
    parameters_sha256,
    world_size_from_env,
)
from seqbucket_plugin.training.fingerprint import run_fingerprint
from seqbucket_plugin.training.model_options import check_options, encoder_kwargs, pretrained_embedding
from seqbucket_plugin.training.plots import plot_lengths, plot_training_curves

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "text_classification.json")


def add_task_arguments(parser):
    task = parser.add_argument_group("text classification")
    task.add_argument("--text-column", help="column holding the text")
    task.add_argument("--label-column", help="column holding the label")
    task.add_argument("--column-names", help="comma-separated column names of CSV/TSV files without a header row")
    task.add_argument("--truncation", choices=["head", "tail", "head+tail"], help="what --max-length keeps")
    task.add_argument("--head-fraction", type=float, help="share of --max-length kept from the head (head+tail)")
    task.add_argument("--tbptt-chunk", type=int,
                      help="train on chunks of N tokens with truncated back-propagation through time (0: off)")
    task.add_argument("--num-buckets", type=int, help="length buckets of the batcher")
    task.add_argument("--pooling", help="encoder pooling: last, mean, max, attention or +-joined")
    task.add_argument("--embedding-dropout", type=float, help="dropout on the word vectors the encoder reads")


# ------------------------------------------------------------------------------------------ steps
def load_data(args, out: Path) -> tuple[datasets.DatasetDict, list[str]]:
    """Step 1: the train/dev/test splits (files, a Hub dataset, or generated data) and label names."""
    if args.dataset:
        if args.train_file:
            raise RecipeError("give --dataset or --train-file, not both")
        try:
            hub = datasets.load_dataset(args.dataset)  # never with trust_remote_code
        except Exception as err:
            raise RecipeError(f"could not load dataset {args.dataset!r} from the Hugging Face Hub: {err}") from err
        splits = {"train": hub["train"], "dev": hub.get("validation"), "test": hub.get("test")}
        for name, split in splits.items():
            if split is None:
                continue
            for col in (args.text_column, args.label_column):
                if col not in split.column_names:
                    raise RecipeError(f"column {col!r} not found in {args.dataset} ({name}); "
                                      f"available columns: {split.column_names}")
            split = split.rename_columns({c: n for c, n in ((args.text_column, "text"), (args.label_column, "label"))
                                          if c != n})
            splits[name] = split
        feature = splits["train"].features["label"]
        if not isinstance(feature, datasets.ClassLabel):
            raise RecipeError(f"{args.dataset}: the label column must be a ClassLabel, got {feature}")
        names = list(feature.names)
    else:
        if not args.train_file:
            generated = write_classification_data(out / "generated_data", seed=0)
            print(f"no --train-file: training on generated data in {generated['train']} (and dev/test)")
            args.train_file, args.dev_file, args.test_file = generated["train"], generated["dev"], generated["test"]
        for flag in ("train_file", "dev_file", "test_file"):
            path = getattr(args, flag)
            if path and not os.path.isfile(path):
                raise RecipeError(f"--{flag.replace('_', '-')}: file not found: {path}")
        column_names = args.column_names.split(",") if args.column_names else None
        loaded = load_classification_splits(args.train_file, args.dev_file, args.test_file,
                                            text_column=args.text_column, label_column=args.label_column,
                                            column_names=column_names)
        splits = {k: loaded[k] if k in loaded else None for k in ("train", "dev", "test")}
        names = list(splits["train"].features["label"].names)
    if splits["dev"] is None:
        held = splits["train"].train_test_split(test_size=0.1, seed=args.seed)
        splits["train"], splits["dev"] = held["train"], held["test"]
        print("no dev set: holding out 10% of the training set")
    return datasets.DatasetDict({k: v for k, v in splits.items() if v is not None}), names


def choose_settings(args, train: datasets.Dataset, tokenizer: TextTokenizer, names: list[str]) -> Chosen:
    """Settings chosen from the training lengths and labels (truncation, vocabulary cut-off, word
    dropout, batches, metric; see auto_settings), set on ``args``. Word-level lengths do not
    depend on the vocabulary, so any word-level tokenizer of the run measures them."""
    lengths = tokenize_dataset(train, tokenizer, label_column=None).with_format("numpy")["length"]
    counts = np.bincount(np.asarray(train["label"]), minlength=len(names))
    chosen = choose_data_settings(vars(args), task="classification", lengths=lengths, label_counts=counts)
    apply_chosen(args, chosen)
    return chosen


def build_tokenizer(args, train: datasets.Dataset, out: Path, names: list[str]) -> tuple[TextTokenizer, Chosen]:
    """Step 2: a word-level tokenizer trained on the training texts (reloaded when resuming), and
    the settings chosen from the data (the vocabulary cut-off among them)."""
    folder = out / "tokenizer"
    if args.resume and folder.is_dir():
        tokenizer = TextTokenizer.load(folder)
        return tokenizer, choose_settings(args, train, tokenizer, names)
    tokenizer = TextTokenizer.train(train, kind="word", vocab_size=args.vocab_size, min_frequency=args.min_frequency or 1)
    chosen = choose_settings(args, train, tokenizer, names)
    if args.min_frequency != 1:
        tokenizer = TextTokenizer.train(train, kind="word", vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    tokenizer.save(folder)
    return tokenizer, chosen


def tokenize(args, tokenizer: TextTokenizer, split: datasets.Dataset, keep=()) -> datasets.Dataset:
    max_length = None if args.tbptt_chunk or not args.max_length else args.max_length
    return tokenize_dataset(split, tokenizer, max_length=max_length, truncation=args.truncation,
                            head_fraction=args.head_fraction, keep_columns=keep,
                            label_column="label" if "label" in split.column_names else None)


def batching(args, *, train: bool) -> dict:
    """BucketBatcher arguments: token budget (or rows) per batch, buckets, order."""
    naive = args.batching == "naive"
    if naive or args.batch_size:
        size = {"batch_size": args.batch_size or 32}
    else:
        size = {"max_tokens": args.max_tokens, "max_batch_size": args.max_batch_size, "oversize": "truncate"}
    shard = {} if train else {"rank": 0, "world_size": 1}  # evaluation: every rank sees every batch
    return {**size, "num_buckets": 1 if naive else args.num_buckets, "shuffle": train, "seed": args.seed,
            "longest_first": train and args.longest_first, **shard}


def make_pipe(args, dataset: datasets.Dataset, tokenizer: TextTokenizer, device: torch.device, *, train: bool) -> Pipe:
    """Step 3: source -> bucketed batches -> PackedBatch (-> prefetched, pinned on CUDA)."""
    pipe = Pipe.from_hf(dataset).bucket_batch(**batching(args, train=train)).pack(pad_id=tokenizer.pad_id)
    if device.type == "cuda":
        pipe = pipe.prefetch(4).pin_memory()
    return pipe


def build_model(args, vocab_size: int, num_classes: int, pad_id: int, unk_id: int | None,
                embedding=None) -> SequenceClassifier:
    """Step 4: embedding (pretrained with --embeddings) -> encoder -> pooling -> MLP."""
    return SequenceClassifier(
        vocab_size, num_classes, embedding_dim=args.embedding_dim, hidden_size=args.hidden_size,
        encoder=args.encoder, pooling=args.pooling, dropout=args.dropout, padding_idx=pad_id,
        word_dropout=args.word_dropout or 0.0, unk_idx=unk_id, embedding=embedding,
        encoder_kwargs=encoder_kwargs(args, encoder_options(args), quiet=True),
    )


def encoder_options(args) -> dict:
    """The recipe's encoder options: factory keyword -> (flag, value); see encoder_kwargs."""
    return {"num_layers": ("--num-layers", args.num_layers), "input_dropout": ("--embedding-dropout",
            args.embedding_dropout), "dropout": ("--dropout", args.dropout if args.num_layers > 1 else 0.0)}


# ------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> dict:
    """Run the recipe; returns the metrics (training) or the number of predictions written."""
    args = parse_args(argv, __doc__.split("\n")[0], DEFAULT_CONFIG, add_task_arguments)
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    out = Path(args.output_dir)
    if args.predict:
        if world_size_from_env() > 1 and os.environ.get("RANK", "0") != "0":
            return {"predictions": 0}  # under torchrun only rank 0 predicts
        return predict(args, out)
    with init_distributed(args.device) as ctx, ctx.quiet_unless_main():
        return train(args, out, ctx)


def prepare(args, out: Path, recorder: DebugRecorder, tokenizer: TextTokenizer | None = None):
    """Steps 1-2 and tokenization: splits, label names, tokenizer, tokenized splits. Writes the
    tokenizer, labels and config unless ``tokenizer`` is given (the other ranks under torchrun)."""
    splits, label_names = load_data(args, out)                                       # 1. data
    if recorder.wants_ids:
        splits["train"] = splits["train"].add_column("idx", list(range(len(splits["train"]))))
    if tokenizer is None:
        tokenizer, chosen = build_tokenizer(args, splits["train"], out, label_names)  # 2. tokenizer, settings
        if not args.resuming:  # a resume keeps the files of its run (the fingerprint check comes first)
            (out / "labels.json").write_text(json.dumps(label_names) + "\n", encoding="utf-8")
    else:
        chosen = choose_settings(args, splits["train"], tokenizer, label_names)
    tokenized = {name: tokenize(args, tokenizer, split, keep=("idx",) if name == "train" and recorder.wants_ids
                                else ()) for name, split in splits.items()}
    return splits, label_names, tokenizer, tokenized, chosen


def train(args, out: Path, ctx: DistContext) -> dict:
    """Steps 1-7 (in every process under torchrun; rank 0 writes the files)."""
    device = ctx.device
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    recorder = DebugRecorder(ctx)
    check_auto_max_tokens(args, device)  # --max-tokens auto needs CUDA: refused before anything is written
    args.resuming = checkpoint_to_resume(args, out)  # an unreadable checkpoint fails here, before any write
    check_options(args, encoder_options(args), quiet=not ctx.is_main)  # encoder options, --embeddings, too

    # rank 0 first (it writes generated data, tokenizer, config); then the others read them
    if ctx.is_main:
        splits, label_names, tokenizer, tokenized, chosen = prepare(args, out, recorder)
    args.train_file, args.dev_file, args.test_file = ctx.broadcast_object(
        (args.train_file, args.dev_file, args.test_file))
    if not ctx.is_main:
        splits, label_names, tokenizer, tokenized, chosen = prepare(args, out, recorder,
                                                                    TextTokenizer.load(out / "tokenizer"))
    resolve_auto_max_tokens(                                                          # --max-tokens auto (CUDA)
        args, ctx, out, chosen, longest=lambda: int(np.max(tokenized["train"]["length"])),
        build_model=lambda: build_model(args, tokenizer.vocab_size, len(label_names), tokenizer.pad_id,
                                        tokenizer.unk_id),
        make_batch=dataset_worst_case_batches(tokenized["train"], tokenizer.pad_id),
        step=classification_step(tbptt_chunk=args.tbptt_chunk, autocast=amp_autocast(args.amp, device)))
    train_pipe = make_pipe(args, tokenized["train"], tokenizer, device, train=True)  # 3. pipelines
    eval_loaders = {name: make_pipe(args, ds, tokenizer, device, train=False).loader()
                    for name, ds in tokenized.items() if name != "train"}
    settle_settings(args, chosen, out, task="classification", num_examples=len(tokenized["train"]),  # schedule, config
                    batches_per_epoch=train_pipe.batcher.num_batches(0), ctx=ctx)
    model = build_model(args, tokenizer.vocab_size, len(label_names), tokenizer.pad_id,  # 4. model
                        tokenizer.unk_id, pretrained_embedding(args, tokenizer))
    naive = args.batching == "naive"

    config = train_config(args)
    trainer = Trainer(                                                                # 5. train
        model, train_pipe.loader(), None,
        lambda m: evaluate_classifier(m, eval_loaders["dev"], device, naive=naive, tbptt_chunk=args.tbptt_chunk,
                                      num_classes=len(label_names), dist=ctx),
        config, out, device, steps_per_epoch=train_pipe.batcher.num_batches(0), batch_stats=lambda: train_pipe.stats,
        dist=ctx, grad_sync="manual" if args.tbptt_chunk else "ddp",  # TBPTT does not call forward()
        fingerprint=run_fingerprint(run_options(args), train=tokenized["train"], dev=tokenized["dev"],
                                    vocabularies=[tokenizer.tokenizer.to_str()], labels=label_names),
    )
    trainer.train_step = recorder.wrap(
        classification_step(naive=naive, tbptt_chunk=args.tbptt_chunk, autocast=trainer.autocast))
    where = f"{device}" + (f" x {ctx.world_size} processes" if ctx.enabled else "")
    print(f"training {args.encoder} ({sum(p.numel() for p in model.parameters()):,} parameters) on {where}: "
          f"{len(tokenized['train']):,} examples, {trainer.steps_per_epoch} batches per epoch"
          + (" per process" if ctx.enabled else ""))
    history = trainer.fit(resume=args.resume)
    if args.resuming and ctx.is_main:
        save_config(run_options(args), out, chosen.reasons)
    final_hash = parameters_sha256(model) if recorder.wants_ids else ""

    ctx.barrier()  # rank 0 has written best_model.pt
    trainer.load_best()                                                               # 6. evaluate the best model
    model.eval()
    metrics = {}
    with torch.no_grad():
        for name, loader in eval_loaders.items():
            for key, value in evaluate_classifier(model, loader, device, naive=naive, tbptt_chunk=args.tbptt_chunk,
                                                  num_classes=len(label_names), dist=ctx).items():
                metrics[f"{name}_{key}"] = value
    metrics["best_step"] = trainer.state.best_step
    metrics["steps"] = trainer.state.step
    recorder.dump(trainer, final_hash, parameters_sha256(model) if recorder.wants_ids else "",
                  train_pipe.stats.padding_repeats)
    if not ctx.is_main:
        return metrics
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    summary = {"wall_time_s": round(time.perf_counter() - t_start, 1), "device": str(device),
               "train_tokens_per_s": history[-1]["tokens_per_s"] if history else None,
               "padding_efficiency": history[-1]["padding_efficiency"] if history else None}
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print("metrics: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))

    plot_training_curves(history, args.metric, out / "training_curves.png")           # 7. pictures
    plot_lengths(np.asarray(tokenized["train"]["length"]), train_pipe.batcher.boundaries,
                 summary["padding_efficiency"], out / "lengths.png")
    return metrics


# ------------------------------------------------------------------------------------------ predict
def read_texts(path: str, text_column: str, column_names: list[str] | None = None) -> list[str]:
    """Texts to classify: stdin (one text per line) or a file read by the training loaders
    (``.parquet``/``.csv``/``.tsv``/``.jsonl``: column ``text_column``; anything else: one text
    per non-blank line)."""
    if path == "-":
        return [line.rstrip("\n") for line in read_stdin_lines() if line.strip()]
    if not os.path.isfile(path):
        raise RecipeError(f"--predict: file not found: {path}")
    return load_texts(path, text_column=text_column, column_names=column_names)


def predict(args, out: Path) -> dict:
    """Classify texts with the trained run in ``--output-dir`` (``seqbucket_plugin.load_run``);
    writes JSON Lines. Only the run's model and tokenization settings are read from it."""
    max_tokens = None if args.max_tokens == "auto" else args.max_tokens  # predictions: the run's own budget
    texts = read_texts(args.predict, args.text_column, args.column_names.split(",") if args.column_names else None)
    run = load_run(out, device=args.device, max_tokens=max_tokens, batch_size=args.batch_size)
    preds = run.predict(texts)
    sink = open_predictions(args.predictions)
    try:
        for i, pred in enumerate(preds):
            sink.write(json.dumps({"index": i, "label": pred["label"], "probability": round(pred["probability"], 4),
                                   "probabilities": {k: round(v, 4) for k, v in pred["probabilities"].items()}})
                       + "\n")
    finally:
        if sink is not sys.stdout:
            sink.close()
    return {"predictions": len(texts)}


if __name__ == "__main__":
    sys.exit(run_main(main))
