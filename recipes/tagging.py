"""Sequence tagging (POS, NER...) with word + character features, length bucketing and a
pack-aware encoder, on a CPU or a GPU.

    python recipes/tagging.py                                     # generated BIO data, < 1 minute on a CPU
    python recipes/tagging.py --train-file train.conllu --dev-file dev.conllu --test-file test.conllu \
        --tag-column upos --output-dir runs/ewt
    python recipes/tagging.py --predict sentences.txt --output-dir runs/ewt
    torchrun --nproc_per_node=2 recipes/tagging.py --output-dir runs/tagging-ddp   # 2 processes (DDP)

Defaults come from recipes/configs/tagging.json (``--config`` picks another file); the command line
overrides them. ``--output-dir`` receives config.json, tokenizer/, chars.json, labels.json,
best_model.pt, checkpoint.pt, log.jsonl, metrics.json, run_summary.json, training_curves.png and
lengths.png.

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
import pyarrow.compute as pc
import torch

from seqbucket_plugin.datapipes import Pipe, load_sentences, load_tagging_splits, tokenize_tagged_dataset
from seqbucket_plugin.datapipes.tokenize import TextTokenizer
from seqbucket_plugin.heads import SequenceTagger
from seqbucket_plugin.runs import load_run
from seqbucket_plugin.training import Trainer, write_tagging_data
from seqbucket_plugin.training.auto_settings import Chosen, choose_data_settings
from seqbucket_plugin.training.budget import (
    amp_autocast,
    check_auto_max_tokens,
    dataset_worst_case_batches,
    resolve_auto_max_tokens,
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
from seqbucket_plugin.training.metrics import is_span_scheme
from seqbucket_plugin.training.model_options import check_options, encoder_kwargs, pretrained_embedding
from seqbucket_plugin.training.plots import plot_lengths, plot_training_curves
from seqbucket_plugin.training.tagging import (
    CharIds,
    CharVocab,
    evaluate_tagger,
    tagging_step,
    word_tokenizer,
)

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "tagging.json")


def add_task_arguments(parser):
    task = parser.add_argument_group("tagging")
    task.add_argument("--tag-column", help="upos/xpos for CoNLL-U; an integer column index for column files "
                                           "(negative counts from the end; -1 = last)")
    task.add_argument("--num-buckets", type=int, help="length buckets of the batcher")
    task.add_argument("--char-encoder", help="cnn, bilstm or none: character features of each word")
    task.add_argument("--char-dim", type=int)
    task.add_argument("--char-filters", type=int, help="char CNN filters (char BiLSTM: hidden size per direction)")
    task.add_argument("--decoder", choices=["softmax", "crf"])


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


# ------------------------------------------------------------------------------------------ steps
def load_data(args, out: Path) -> tuple[datasets.DatasetDict, list[str]]:
    """Step 1: train/dev/test sentences (``tokens``, ``tags`` ids) and the tag names."""
    if args.dataset:
        raise RecipeError("--dataset is not supported by the tagging recipe yet: Hub tagging sets differ in "
                          "their columns; export the splits to .conllu or column files and pass --train-file")
    if not args.train_file:
        generated = write_tagging_data(out / "generated_data", seed=0)
        print(f"no --train-file: training on generated data in {generated['train']} (and dev/test)")
        args.train_file, args.dev_file, args.test_file = generated["train"], generated["dev"], generated["test"]
    for flag in ("train_file", "dev_file", "test_file"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise RecipeError(f"--{flag.replace('_', '-')}: file not found: {path}")
    loaded = load_tagging_splits(args.train_file, args.dev_file, args.test_file,
                                 **tag_options(args.tag_column, args.train_file))
    splits = {k: loaded[k] for k in ("train", "dev", "test") if k in loaded}
    if "dev" not in splits:
        held = splits["train"].train_test_split(test_size=0.1, seed=args.seed)
        splits["train"], splits["dev"] = held["train"], held["test"]
        print("no dev set: holding out 10% of the training set")
    names = list(splits["train"].features["tags"].feature.names)
    return datasets.DatasetDict(splits), names


def choose_settings(args, train: datasets.Dataset, tag_names: list[str]) -> Chosen:
    """Settings chosen from the training sentences' lengths and tags (see auto_settings)."""
    words = pc.list_value_length(train.with_format("arrow")["tokens"]).to_numpy(zero_copy_only=False)
    chosen = choose_data_settings(vars(args), task="tagging", lengths=words, span_tags=is_span_scheme(tag_names))
    apply_chosen(args, chosen)
    return chosen


def build_vocabularies(args, train: datasets.Dataset, out: Path) -> tuple[TextTokenizer, CharVocab]:
    """Step 2: word vocabulary (whole words) and character vocabulary from the training sentences."""
    if args.resume and (out / "tokenizer").is_dir() and (out / "chars.json").is_file():
        return TextTokenizer.load(out / "tokenizer"), CharVocab.load(out / "chars.json")
    tokenizer = word_tokenizer(train["tokens"], min_frequency=args.min_frequency, vocab_size=args.vocab_size)
    chars = CharVocab.build(train["tokens"])
    tokenizer.save(out / "tokenizer")
    chars.save(out / "chars.json")
    return tokenizer, chars


def tokenize(args, tokenizer: TextTokenizer, split: datasets.Dataset, keep=("tokens",)) -> datasets.Dataset:
    return tokenize_tagged_dataset(split, tokenizer, subword=False, max_length=args.max_length or None,
                                   truncation="head", keep_columns=list(keep))


def make_pipe(args, dataset, tokenizer, chars: CharVocab, device, *, train: bool) -> Pipe:
    """Step 3: sentences -> bucketed batches -> PackedBatch -> character ids (-> prefetch, pin on CUDA)."""
    naive = args.batching == "naive"
    if naive or args.batch_size:
        size = {"batch_size": args.batch_size or 32}
    else:
        size = {"max_tokens": args.max_tokens, "max_batch_size": args.max_batch_size, "oversize": "truncate"}
    shard = {} if train else {"rank": 0, "world_size": 1}  # evaluation: every rank sees every batch
    pipe = (Pipe.from_hf(dataset)
            .bucket_batch(**size, num_buckets=1 if naive else args.num_buckets, shuffle=train, seed=args.seed,
                          longest_first=train and args.longest_first, **shard)
            .pack(pad_id=tokenizer.pad_id))
    if use_chars(args):
        pipe = pipe.map(CharIds(chars))
    else:
        pipe = pipe.map(_drop_tokens)
    if device.type == "cuda":
        pipe = pipe.prefetch(4).pin_memory()
    return pipe


def _drop_tokens(batch):
    batch.extras.pop("tokens", None)
    return batch


def use_chars(args) -> bool:
    return bool(args.char_encoder) and str(args.char_encoder).lower() != "none"


def encoder_options(args) -> dict:
    """The recipe's encoder options: factory keyword -> (flag, value); see encoder_kwargs."""
    return {"num_layers": ("--num-layers", args.num_layers),
            "dropout": ("--dropout", args.dropout if args.num_layers > 1 else 0.0)}


def build_model(args, vocab_size: int, num_tags: int, num_chars: int, pad_id: int,
                unk_id: int | None, embedding=None) -> SequenceTagger:
    """Step 4: word embedding (pretrained with --embeddings; + char CNN/BiLSTM) -> encoder ->
    per-token scores (softmax or CRF)."""
    char_kwargs = None
    if use_chars(args):
        key = "num_filters" if args.char_encoder == "cnn" else "hidden_size"
        char_kwargs = {"char_dim": args.char_dim, key: args.char_filters}
    return SequenceTagger(
        vocab_size, num_tags, embedding_dim=args.embedding_dim, hidden_size=args.hidden_size, encoder=args.encoder,
        encoder_kwargs=encoder_kwargs(args, encoder_options(args), quiet=True), embedding=embedding,
        char_encoder=args.char_encoder if use_chars(args) else None, num_chars=num_chars, char_kwargs=char_kwargs,
        decoder=args.decoder, dropout=args.dropout, padding_idx=pad_id, word_dropout=args.word_dropout or 0.0,
        unk_idx=unk_id,
    )


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


def prepare(args, out: Path, recorder: DebugRecorder, vocabularies: tuple | None = None):
    """Steps 1-2 and tokenization: splits, tag names, vocabularies, tokenized splits. Writes the
    vocabularies, labels and config unless ``vocabularies`` are given (other ranks under torchrun)."""
    splits, tag_names = load_data(args, out)                                            # 1. data
    if recorder.wants_ids:
        splits["train"] = splits["train"].add_column("idx", list(range(len(splits["train"]))))
    chosen = choose_settings(args, splits["train"], tag_names)                         # 2. settings
    if vocabularies is None:
        tokenizer, chars = build_vocabularies(args, splits["train"], out)               # 3. vocabularies
        if not args.resuming:  # a resume keeps the files of its run (the fingerprint check comes first)
            (out / "labels.json").write_text(json.dumps(tag_names) + "\n", encoding="utf-8")
    else:
        tokenizer, chars = vocabularies
    tokenized = {name: tokenize(args, tokenizer, split, keep=("tokens", "idx") if name == "train" and
                                recorder.wants_ids else ("tokens",)) for name, split in splits.items()}
    return splits, tag_names, tokenizer, chars, tokenized, chosen


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

    # rank 0 first (it writes generated data, vocabularies, config); then the others read them
    if ctx.is_main:
        splits, tag_names, tokenizer, chars, tokenized, chosen = prepare(args, out, recorder)
    args.train_file, args.dev_file, args.test_file = ctx.broadcast_object(
        (args.train_file, args.dev_file, args.test_file))
    if not ctx.is_main:
        vocabularies = TextTokenizer.load(out / "tokenizer"), CharVocab.load(out / "chars.json")
        splits, tag_names, tokenizer, chars, tokenized, chosen = prepare(args, out, recorder, vocabularies)
    resolve_auto_max_tokens(                                                             # --max-tokens auto (CUDA)
        args, ctx, out, chosen, longest=lambda: int(np.max(tokenized["train"]["length"])),
        build_model=lambda: build_model(args, tokenizer.vocab_size, len(tag_names), len(chars), tokenizer.pad_id,
                                        tokenizer.unk_id),
        make_batch=dataset_worst_case_batches(tokenized["train"], tokenizer.pad_id,
                                              transform=CharIds(chars) if use_chars(args) else _drop_tokens),
        step=tagging_step(autocast=amp_autocast(args.amp, device)))
    train_pipe = make_pipe(args, tokenized["train"], tokenizer, chars, device, train=True)  # 3. pipelines
    eval_loaders = {name: make_pipe(args, ds, tokenizer, chars, device, train=False).loader()
                    for name, ds in tokenized.items() if name != "train"}
    settle_settings(args, chosen, out, task="tagging", num_examples=len(tokenized["train"]),  # schedule, config
                    batches_per_epoch=train_pipe.batcher.num_batches(0), ctx=ctx)
    model = build_model(args, tokenizer.vocab_size, len(tag_names), len(chars), tokenizer.pad_id,  # 4. model
                        tokenizer.unk_id, pretrained_embedding(args, tokenizer))
    naive = args.batching == "naive"

    config = train_config(args)
    trainer = Trainer(                                                                   # 5. train
        model, train_pipe.loader(), None,
        lambda m: evaluate_tagger(m, eval_loaders["dev"], device, tag_names, naive=naive, dist=ctx),
        config, out, device, steps_per_epoch=train_pipe.batcher.num_batches(0), batch_stats=lambda: train_pipe.stats,
        dist=ctx,
        fingerprint=run_fingerprint(run_options(args), train=tokenized["train"], dev=tokenized["dev"],
                                    vocabularies=[tokenizer.tokenizer.to_str(), json.dumps(chars.chars)],
                                    labels=tag_names),
    )
    trainer.train_step = recorder.wrap(tagging_step(naive=naive, autocast=trainer.autocast))
    where = f"{device}" + (f" x {ctx.world_size} processes" if ctx.enabled else "")
    print(f"training {args.encoder} tagger ({sum(p.numel() for p in model.parameters()):,} parameters) on {where}: "
          f"{len(tokenized['train']):,} sentences, {len(tag_names)} tags, {trainer.steps_per_epoch} batches per epoch"
          + (" per process" if ctx.enabled else ""))
    history = trainer.fit(resume=args.resume)
    if args.resuming and ctx.is_main:
        save_config(run_options(args), out, chosen.reasons)
    final_hash = parameters_sha256(model) if recorder.wants_ids else ""

    ctx.barrier()  # rank 0 has written best_model.pt
    trainer.load_best()                                                                  # 6. evaluate the best model
    model.eval()
    metrics = {}
    with torch.no_grad():
        for name, loader in eval_loaders.items():
            for key, value in evaluate_tagger(model, loader, device, tag_names, naive=naive, dist=ctx).items():
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

    plot_training_curves(history, args.metric, out / "training_curves.png")              # 7. pictures
    plot_lengths(np.asarray(tokenized["train"]["length"]), train_pipe.batcher.boundaries,
                 summary["padding_efficiency"], out / "lengths.png")
    return metrics


# ------------------------------------------------------------------------------------------ predict
def read_sentences(path: str) -> list[list[str]]:
    """Sentences to tag: stdin (one whitespace-tokenized sentence per line) or a file read by
    ``load_sentences``: ``.conllu`` (the FORM column of each sentence), ``.jsonl`` (a ``tokens``
    list per line) or plain text (one sentence per non-blank line)."""
    if path == "-":
        return [line.split() for line in read_stdin_lines() if line.strip()]
    if not os.path.isfile(path):
        raise RecipeError(f"--predict: file not found: {path}")
    return load_sentences(path)


def predict(args, out: Path) -> dict:
    """Tag sentences with the trained run in ``--output-dir`` (``seqbucket_plugin.load_run``); writes
    JSON Lines with one tag per token (sentences longer than the run's ``--max-length`` are tagged in
    windows). Only the run's model and tokenization settings are read from it."""
    max_tokens = None if args.max_tokens == "auto" else args.max_tokens  # predictions: the run's own budget
    sentences = read_sentences(args.predict)  # bad input fails before the model is loaded
    run = load_run(out, device=args.device, max_tokens=max_tokens, batch_size=args.batch_size)
    preds = run.predict(sentences)
    sink = open_predictions(args.predictions)
    try:
        for i, pred in enumerate(preds):
            sink.write(json.dumps({"index": i, "tokens": pred["tokens"], "tags": pred["tags"]}) + "\n")
    finally:
        if sink is not sys.stdout:
            sink.close()
    return {"predictions": len(sentences)}


if __name__ == "__main__":
    sys.exit(run_main(main))
