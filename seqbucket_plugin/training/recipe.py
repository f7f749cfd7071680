"""The run plumbing every recipe shares, so that a recipe keeps only its task's steps.

A recipe's ``main()`` reads (``recipes/text_classification.py``)::

    opts = parse_args(argv, ClassificationOptions, DESCRIPTION)
    with RecipeRun(opts, task="classification", encoder_options=...) as run:  # seed, processes, checks
        with run.main_process_first():                                         # rank 0 writes, others read
            splits = run.load_splits(read_files, generate=write_classification_data)
            chosen = choose_settings(opts, splits["train"], names)              # the task's data rules
            tokenizer = run.load_or_build("tokenizer", build=..., load=TextTokenizer.load, save=...)
        train_pipe = run.pipe(tokenized["train"], tokenizer.pad_id, train=True)
        run.settle(chosen, num_examples=..., batches_per_epoch=...)             # schedule, config.json
        trainer = run.trainer(model, train_pipe, evaluate_on_dev, step=..., train=..., dev=...,
                              vocabularies=..., labels=names)
        return run.fit_and_report(trainer, train_pipe, loaders, evaluate, what=..., data=...)

Everything that touches the output directory happens in rank 0 only, and nothing is written
before the options, the encoder's options, ``--embeddings`` and a checkpoint to resume are
checked (:meth:`RecipeRun.__enter__`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn

from seqbucket_plugin.errors import BudgetSearchError
from seqbucket_plugin.training.budget import MemoryProbe, amp_autocast, find_max_tokens
from seqbucket_plugin.training.cli import (
    RecipeError,
    checkpoint_to_resume,
    load_config,
    open_predictions,
    read_stdin_lines,
    run_options,
    save_config,
    settle_settings,
    train_config,
)
from seqbucket_plugin.training.distributed import (
    DebugRecorder,
    init_distributed,
    parameters_sha256,
    world_size_from_env,
)
from seqbucket_plugin.training.engine import Trainer
from seqbucket_plugin.training.fingerprint import run_fingerprint
from seqbucket_plugin.training.model_options import check_options
from seqbucket_plugin.training.plots import plot_lengths, plot_training_curves

__all__ = ["DataFiles", "RecipeRun", "check_auto_max_tokens", "resolve_auto_max_tokens", "hub_splits", "predict_input_lines", "predict_to_jsonl", "set_up_process"]

GENERATED_DIR = "generated_data"
LABELS_FILE = "labels.json"
DEV_FRACTION = 0.1
MIN_TRAIN_FOR_DEV = 10


@dataclass(frozen=True)
class DataFiles:
    """The files a run reads (generated ones when the user gave no ``--train-file``)."""

    train: str
    dev: str | None = None
    test: str | None = None


def set_up_process(opts: Any) -> None:
    """Torch CPU threads (``--threads``) and quiet ``datasets`` progress bars, for training and
    prediction alike."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    datasets.disable_progress_bars()


def hub_splits(name: str, columns: Mapping[str, str]) -> dict[str, datasets.Dataset]:
    """The ``train``/``dev``/``test`` splits of Hugging Face Hub dataset ``name`` (never with
    remote code), with ``columns`` renamed (source name -> the recipe's name).

    Raises:
        RecipeError: the dataset cannot be loaded, or a split lacks a column (naming those it has).
    """
    try:
        hub = datasets.load_dataset(name)  # never with trust_remote_code
    except Exception as err:
        raise RecipeError(f"could not load dataset {name!r} from the Hugging Face Hub: {err}") from err
    splits = {"train": hub["train"], "dev": hub.get("validation"), "test": hub.get("test")}
    for split_name, split in list(splits.items()):
        if split is None:
            del splits[split_name]
            continue
        for column in columns:
            if column not in split.column_names:
                raise RecipeError(f"column {column!r} not found in {name} ({split_name}); "
                                  f"available columns: {split.column_names}")
        splits[split_name] = split.rename_columns({c: n for c, n in columns.items() if c != n})
    return splits


def predict_input_lines(opts: Any) -> list[str] | None:
    """The first step of ``--predict``: set up the process, then the lines of stdin for
    ``--predict -`` (non-blank, without their newline), or None for a file (the recipe reads it
    with its task's loader).

    Raises:
        RecipeError: the ``--predict`` file does not exist, or stdin is not UTF-8.
    """
    set_up_process(opts)
    if opts.predict == "-":
        return [line.rstrip("\n") for line in read_stdin_lines() if line.strip()]
    if not os.path.isfile(opts.predict):
        raise RecipeError(f"--predict: file not found: {opts.predict}", opts.predict)
    return None


def predict_to_jsonl(opts: Any, inputs: list, record: Callable[[int, dict], dict]) -> dict:
    """Predict ``inputs`` with the trained run in ``opts.output_dir``
    (:func:`seqbucket_plugin.load_run`, which reads only the run's model and tokenization
    settings) and write one JSON line per input, ``record(index, prediction)``, to
    ``--predictions`` (stdout by default). Under ``torchrun`` only rank 0 predicts.

    Returns:
        ``{"predictions": number written}``.
    """
    from seqbucket_plugin.runs import load_run

    if world_size_from_env() > 1 and os.environ.get("RANK", "0") != "0":
        return {"predictions": 0}
    max_tokens = None if opts.max_tokens == "auto" else opts.max_tokens  # predictions: the run's own budget
    run = load_run(opts.output_dir, device=opts.device, max_tokens=max_tokens, batch_size=opts.batch_size)
    predictions = run.predict(inputs)
    sink = open_predictions(opts.predictions)
    try:
        for i, prediction in enumerate(predictions):
            sink.write(json.dumps(record(i, prediction)) + "\n")
    finally:
        if sink is not sys.stdout:
            sink.close()
    return {"predictions": len(inputs)}


AUTO = "auto"


def check_auto_max_tokens(args: Any, device: torch.device) -> None:
    """``--max-tokens auto`` is possible here: a CUDA device and a token budget (not
    ``--batch-size`` or ``--batching naive``). Call before anything is written.

    Raises:
        BudgetSearchError: with the reason (a recipe prints it as one ``error:`` line, exit 2).
    """
    if getattr(args, "max_tokens", None) != AUTO:
        return
    if device.type != "cuda":
        raise BudgetSearchError(
            f"--max-tokens auto searches the largest token budget that fits GPU memory (real training steps on the "
            f"longest batches) and needs a CUDA device; this run is on {device.type}. On a CPU give a number, or "
            "leave --max-tokens out to have it chosen from the data")
    if getattr(args, "batch_size", None) or getattr(args, "batching", None) == "naive":
        raise BudgetSearchError("--max-tokens auto sets a token budget; it cannot go with --batch-size or "
                                "--batching naive (fixed rows per batch)")


def resolve_auto_max_tokens(args: Any, ctx: Any, output_dir: Any, chosen: Any, *,
                            build_model: Callable[[], nn.Module], make_batch: Callable[[int], Any],
                            step: Callable, longest: int | Callable[[], int],
                            probe: MemoryProbe | None = None) -> None:
    """Replace ``args.max_tokens == "auto"`` by the largest budget that fits (:func:`find_max_tokens`
    with ``max_rows=args.max_batch_size``), recorded in ``chosen`` with the search's summary as the
    reason. Rank 0 searches; every rank gets its result. A resumed run reuses the budget its
    ``config.json`` recorded (a search could come out a little different and the resume would
    then be refused as another run). No-op unless ``args.max_tokens == "auto"``; ``longest`` may be
    a callable, and ``make_batch`` reads the data only when called, so a run with a numeric budget
    pays nothing at start-up."""
    if getattr(args, "max_tokens", None) != AUTO:
        return
    config_path = os.path.join(os.fspath(output_dir), "config.json")
    if getattr(args, "resuming", False) and os.path.isfile(config_path):
        saved = load_config(config_path).get("max_tokens")
        if isinstance(saved, int) and saved > 0:
            args.max_tokens = saved
            chosen.set("max_tokens", saved, "--max-tokens auto: the budget this run found at its start (config.json)")
            return
    value = reason = None
    if ctx.is_main:
        print(f"--max-tokens auto: searching the largest token budget that fits {ctx.device} ...")
        cuda = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the run's own model and dropout draw as without the search
            result = find_max_tokens(build_model, make_batch, step, ctx.device,
                                     longest=longest() if callable(longest) else longest,
                                     max_rows=getattr(args, "max_batch_size", None), probe=probe, log=print)
        value, reason = result.max_tokens, "--max-tokens auto: " + result.summary()
    value, reason = ctx.broadcast_object((value, reason))
    args.max_tokens = int(value)
    chosen.set("max_tokens", int(value), reason)


class RecipeRun:
    """One training run of a recipe, in this process (one of several under ``torchrun``).

    Entering it seeds Python, numpy and torch, starts the process group under ``torchrun`` (rank
    0 alone prints), and checks before anything is written: ``--max-tokens auto`` (CUDA only), a
    checkpoint to resume (intact) or a run to overwrite, the encoder's options and
    ``--embeddings``.

    Attributes:
        opts: the parsed options (a :class:`~seqbucket_plugin.training.options.RecipeOptions`);
            the options chosen from the data are set on it by :meth:`settle`.
        out: the output directory. ``ctx``: the :class:`DistContext`. ``device``: its device.
    """

    def __init__(self, opts: Any, *, task: str, encoder_options: dict[str, tuple[str, Any]]):
        self.opts = opts
        self.task = task
        self.encoder_options = encoder_options
        self.out = Path(opts.output_dir)
        self._stack = contextlib.ExitStack()

    # ------------------------------------------------------------------------------ set-up
    def __enter__(self) -> RecipeRun:
        set_up_process(self.opts)
        self.ctx = self._stack.enter_context(init_distributed(self.opts.device))
        self._stack.enter_context(self.ctx.quiet_unless_main())
        self.device = self.ctx.device
        random.seed(self.opts.seed)
        np.random.seed(self.opts.seed)
        torch.manual_seed(self.opts.seed)
        self.started = time.perf_counter()
        self.recorder = DebugRecorder(self.ctx)
        try:
            check_auto_max_tokens(self.opts, self.device)
            self.opts.resuming = checkpoint_to_resume(self.opts, self.out)  # an unreadable checkpoint fails here
            check_options(self.opts, self.encoder_options, quiet=not self.ctx.is_main)
        except BaseException:
            self._stack.close()  # ``with`` calls __exit__ only once __enter__ has returned
            raise
        return self

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._stack.__exit__(*exc_info)

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it writes generated data, vocabularies, labels); the other
        ranks run it once rank 0 is done, and read what it wrote."""
        if not self.ctx.is_main:
            self.ctx.barrier()
        yield
        if self.ctx.is_main:
            self.ctx.barrier()

    # ------------------------------------------------------------------------------ data
    def data_files(self, generate: Callable[..., dict[str, str]]) -> DataFiles:
        """The ``--train-file``/``--dev-file``/``--test-file``, or data written by ``generate``
        into ``<output-dir>/generated_data`` when no training file (nor ``--dataset``) is given.

        Raises:
            RecipeError: a given file does not exist.
        """
        opts = self.opts
        if not opts.train_file:
            generated = generate(self.out / GENERATED_DIR, seed=0)  # the same bytes on every rank
            print(f"no --train-file: training on generated data in {generated['train']} (and dev/test)")
            return DataFiles(str(generated["train"]), str(generated["dev"]), str(generated["test"]))
        for flag, path in (("--train-file", opts.train_file), ("--dev-file", opts.dev_file),
                           ("--test-file", opts.test_file)):
            if path and not os.path.isfile(path):
                raise RecipeError(f"{flag}: file not found: {path}", path)
        return DataFiles(opts.train_file, opts.dev_file, opts.test_file)

    def load_splits(self, read: Callable[[DataFiles | None], Mapping[str, datasets.Dataset]],
                    generate: Callable[..., dict[str, str]]) -> datasets.DatasetDict:
        """``read(files)`` (``files`` None with ``--dataset``), with a dev set held out of the
        training set (10%, seeded) when there is none (a RecipeError under 10 examples), and (debug
        runs) an ``idx`` column of example ids on the training set."""
        files = None if self.opts.dataset else self.data_files(generate)
        splits = {name: split for name, split in read(files).items() if split is not None}
        if "dev" not in splits:
            if len(splits["train"]) < MIN_TRAIN_FOR_DEV:
                raise RecipeError(f"the training set has {len(splits['train'])} example(s), too few to hold "
                                  f"{DEV_FRACTION:.0%} out as a dev set; give a --dev-file", self.opts.train_file)
            held = splits["train"].train_test_split(test_size=DEV_FRACTION, seed=self.opts.seed)
            splits["train"], splits["dev"] = held["train"], held["test"]
            print(f"no dev set: holding out {DEV_FRACTION:.0%} of the training set")
        if self.recorder.wants_ids:
            splits["train"] = splits["train"].add_column("idx", list(range(len(splits["train"]))))
        return datasets.DatasetDict(splits)

    @property
    def keep_ids(self) -> tuple[str, ...]:
        """Columns a debug run keeps through tokenization (the example ids)."""
        return ("idx",) if self.recorder.wants_ids else ()

    def load_or_build(self, name: str, build: Callable[[], Any], load: Callable[[Path], Any],
                      save: Callable[[Any, Path], Any]) -> Any:
        """``<output-dir>/<name>``, loaded when it exists and this process does not build it (a
        resume, or a rank other than 0 after rank 0 wrote it); else built, and saved by rank 0."""
        path = self.out / name
        if path.exists() and (self.opts.resume or not self.is_main):
            return load(path)
        built = build()
        if self.is_main:
            save(built, path)
        return built

    def save_labels(self, names: list[str]) -> None:
        """``labels.json`` (rank 0; a resume keeps its run's file, checked by the fingerprint)."""
        if self.is_main and not self.opts.resuming:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / LABELS_FILE).write_text(json.dumps(names) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------------------ batches
    def batching(self, *, train: bool) -> dict[str, Any]:
        """:class:`~seqbucket_plugin.datapipes.BucketBatcher` arguments of the options: a token
        budget (or fixed rows), buckets, order; evaluation batches are not sharded (every rank
        sees every batch)."""
        opts = self.opts
        naive = opts.batching == "naive"
        if naive or opts.batch_size:
            size = {"batch_size": opts.batch_size or 32}
        else:
            size = {"max_tokens": opts.max_tokens, "max_batch_size": opts.max_batch_size, "oversize": "truncate"}
        shard = {} if train else {"rank": 0, "world_size": 1}
        return {**size, "num_buckets": 1 if naive else opts.num_buckets, "shuffle": train, "seed": opts.seed,
                "longest_first": train and opts.longest_first, **shard}

    def pipe(self, dataset: datasets.Dataset, pad_id: int, *, train: bool,
             transform: Callable[[Any], Any] | None = None) -> Any:
        """``dataset`` -> bucketed batches -> ``PackedBatch`` -> ``transform`` (-> prefetched,
        pinned on CUDA): a :class:`~seqbucket_plugin.datapipes.Pipe`."""
        from seqbucket_plugin.datapipes import Pipe

        pipe = Pipe.from_hf(dataset).bucket_batch(**self.batching(train=train)).pack(pad_id=pad_id)
        if transform is not None:
            pipe = pipe.map(transform)
        if self.device.type == "cuda":
            pipe = pipe.prefetch(4).pin_memory()
        return pipe

    def resolve_auto_max_tokens(self, chosen: Any, *, longest: Callable[[], int], build_model: Callable[[], nn.Module],
                                make_batch: Callable[[int], Any], step: Callable) -> None:
        """``--max-tokens auto`` (CUDA): the largest budget that fits, found by real training
        steps (:func:`resolve_auto_max_tokens`); a no-op
        otherwise. ``step`` is called as ``step(autocast)``."""
        resolve_auto_max_tokens(self.opts, self.ctx, self.out, chosen, longest=longest, build_model=build_model,
                                make_batch=make_batch, step=step(amp_autocast(self.opts.amp, self.device)))

    def settle(self, chosen: Any, *, num_examples: int, batches_per_epoch: int) -> None:
        """The schedule chosen now that the batches are known; every chosen setting printed once
        and ``config.json`` written with the reasons (:func:`~seqbucket_plugin.training.cli.settle_settings`)."""
        self.chosen = chosen
        settle_settings(self.opts, chosen, self.out, task=self.task, num_examples=num_examples,
                        batches_per_epoch=batches_per_epoch, ctx=self.ctx)

    # ------------------------------------------------------------------------------ training
    def trainer(self, model: nn.Module, train_pipe: Any, evaluate: Callable[[nn.Module], dict], *,
                step: Callable[[Callable], Callable], train: datasets.Dataset, dev: datasets.Dataset,
                vocabularies: list[str], labels: list[str], grad_sync: str = "ddp") -> Trainer:
        """The :class:`Trainer` of the run over ``train_pipe`` (built from the tokenized ``train``):
        ``evaluate(model)`` on the dev set selects the best model, ``step(autocast)`` returns the
        train step; the fingerprint (options, tokenized train/dev data, vocabularies, labels) ties
        a checkpoint to this run."""
        self._train_data = train
        trainer = Trainer(
            model, train_pipe.loader(), None, evaluate, train_config(self.opts), self.out, self.device,
            steps_per_epoch=train_pipe.batcher.num_batches(0), batch_stats=lambda: train_pipe.stats,
            dist=self.ctx, grad_sync=grad_sync,
            fingerprint=run_fingerprint(run_options(self.opts), train=train, dev=dev,
                                        vocabularies=vocabularies, labels=labels))
        trainer.train_step = self.recorder.wrap(step(trainer.autocast))
        return trainer

    def fit_and_report(self, trainer: Trainer, train_pipe: Any, eval_loaders: Mapping[str, Iterable],
                       evaluate: Callable[[nn.Module, Iterable], dict], *, what: str, data: str) -> dict:
        """Train (resuming with ``--resume``), reload the best model, evaluate it on every split in
        ``eval_loaders`` with ``evaluate(model, loader)``, and (rank 0) write ``metrics.json``,
        ``run_summary.json``, ``training_curves.png`` and ``lengths.png``. ``what`` (the model)
        and ``data`` (the training set) are printed at the start.

        Returns:
            ``{"<split>_<metric>": value, ..., "best_step", "steps"}``.
        """
        opts, ctx, model = self.opts, self.ctx, trainer.model
        where = f"{self.device}" + (f" x {ctx.world_size} processes" if ctx.enabled else "")
        print(f"training {opts.encoder} {what} ({sum(p.numel() for p in model.parameters()):,} parameters) on "
              f"{where}: {data}, {trainer.steps_per_epoch} batches per epoch" + (" per process" if ctx.enabled else ""))
        history = trainer.fit(resume=opts.resume)
        if opts.resuming and ctx.is_main:
            save_config(run_options(opts), self.out, self.chosen.reasons)
        final_hash = parameters_sha256(model) if self.recorder.wants_ids else ""

        ctx.barrier()  # rank 0 has written best_model.pt
        trainer.load_best()
        model.eval()
        metrics: dict[str, Any] = {}
        with torch.no_grad():
            for name, loader in eval_loaders.items():
                metrics.update({f"{name}_{key}": value for key, value in evaluate(model, loader).items()})
        metrics["best_step"] = trainer.state.best_step
        metrics["steps"] = trainer.state.step
        self.recorder.dump(trainer, final_hash, parameters_sha256(model) if self.recorder.wants_ids else "",
                           train_pipe.stats.padding_repeats)
        if ctx.is_main:
            self._write_outputs(metrics, history, train_pipe)
        return metrics

    def _write_outputs(self, metrics: dict, history: list[dict], train_pipe: Any) -> None:
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        last = history[-1] if history else {}
        summary = {"wall_time_s": round(time.perf_counter() - self.started, 1), "device": str(self.device),
                   "train_tokens_per_s": last.get("tokens_per_s"),
                   "padding_efficiency": last.get("padding_efficiency")}
        (self.out / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print("metrics: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in metrics.items()))
        plot_training_curves(history, self.opts.metric, self.out / "training_curves.png")
        plot_lengths(np.asarray(self._train_data["length"]), train_pipe.batcher.boundaries,
                     summary["padding_efficiency"], self.out / "lengths.png")
