"""The recipes under ``torchrun`` with 2 CPU processes (gloo) on tiny generated data.

Each run is ``python -m torch.distributed.run --nproc_per_node=2 recipes/<recipe>.py ...`` in a
subprocess. ``SEQBUCKET_DEBUG_DIR`` makes every rank write ``debug_rank<r>.json`` (its steps, the
example ids it trained on, hashes of its final and best weights); ``SEQBUCKET_DEBUG_CRASH_AFTER``
makes every rank fail after N training batches (an interruption, for the resume check).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_recipe

from seqbucket_plugin.datapipes import Pipe, TextTokenizer
from seqbucket_plugin.training import write_classification_data, write_tagging_data
from seqbucket_plugin.training.classification import evaluate_classifier
from seqbucket_plugin.training.cli import run_main
from seqbucket_plugin.training.distributed import state_dict_sha256
from seqbucket_plugin.training.options import ClassificationOptions
from seqbucket_plugin.training.recipe import DataFiles

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN = 300
EPOCHS = 3
CLS_ARGS = ["--embedding-dim", "16", "--hidden-size", "16", "--max-tokens", "1024", "--no-progress",
            "--threads", "1", "--epochs", str(EPOCHS), "--save-every", "2", "--eval-every", "3", "--patience", "0",
            "--dropout", "0.3"]
TAG_ARGS = ["--embedding-dim", "16", "--hidden-size", "16", "--num-layers", "1", "--char-filters", "8",
            "--char-dim", "8", "--max-tokens", "512", "--no-progress", "--threads", "1", "--max-steps", "4",
            "--eval-every", "2", "--decoder", "crf"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(data) -> list[str]:
    return ["--train-file", data["train"], "--dev-file", data["dev"], "--test-file", data["test"]]


def _torchrun(recipe: str, args: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(ROOT / "recipes" / f"{recipe}.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)


def _debug(folder: Path) -> list[dict]:
    return [json.loads((folder / f"debug_rank{r}.json").read_text()) for r in range(2)]


def _log(out: Path) -> list[dict]:
    strip = ("tokens_per_s", "elapsed_s")
    return [{k: v for k, v in json.loads(x).items() if k not in strip}
            for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    return write_classification_data(tmp_path_factory.mktemp("ddp_cls"), n_train=N_TRAIN, n_dev=40, n_test=40)


@pytest.fixture(scope="module")
def full_run(cls_data, tmp_path_factory):
    """An uninterrupted 2-process classification run (with the debug records)."""
    base = tmp_path_factory.mktemp("ddp_full")
    out, debug = base / "run", base / "debug"
    proc = _torchrun("text_classification", [*_files(cls_data), *CLS_ARGS, "--output-dir", str(out)],
                     SEQBUCKET_DEBUG_DIR=str(debug))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, debug, proc


def test_two_processes_share_the_data_and_agree(full_run):
    out, debug, proc = full_run
    ranks = _debug(debug)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    # the same number of steps and batches on both ranks
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    assert ranks[0]["batches"] == ranks[1]["batches"]
    # every example once per epoch across the ranks (repeats only as counted by padding_repeats)
    seen = collections.Counter(i for r in ranks for i in r["seen"])
    assert set(seen) == set(range(N_TRAIN))
    extra = sum(seen.values()) - EPOCHS * N_TRAIN
    assert 0 <= extra <= EPOCHS * ranks[0]["padding_repeats"]
    assert min(seen.values()) == EPOCHS
    # identical weights on both ranks, and the best model rank 0 saved is the one both evaluated
    assert ranks[0]["final_sha256"] == ranks[1]["final_sha256"]
    assert ranks[0]["best_sha256"] == ranks[1]["best_sha256"]
    assert state_dict_sha256(torch.load(out / "best_model.pt", weights_only=True)) == ranks[0]["best_sha256"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    assert state_dict_sha256(ckpt["model"]) == ranks[0]["final_sha256"]
    # rank 0 alone prints
    assert proc.stdout.count("training bilstm") == 1 and proc.stdout.count("metrics: ") == 1


def test_metrics_equal_a_single_process_evaluation(full_run):
    out, _, _ = full_run
    recipe = load_recipe("text_classification", "ddp")
    metrics = json.loads((out / "metrics.json").read_text())
    saved = {k: v for k, v in json.loads((out / "config.json").read_text()).items() if not k.startswith("_")}
    opts = ClassificationOptions(**saved)
    tokenizer = TextTokenizer.load(out / "tokenizer")
    splits = recipe.read_splits(opts, DataFiles(opts.train_file, opts.dev_file, opts.test_file))
    names = recipe.label_names(splits["train"])
    model = recipe.build_model(opts, tokenizer, len(names))
    model.load_state_dict(torch.load(out / "best_model.pt", weights_only=True))
    model.eval()
    device = torch.device("cpu")
    for split in ("dev", "test"):
        loader = (Pipe.from_hf(recipe.tokenize(opts, tokenizer, splits[split]))
                  .bucket_batch(max_tokens=opts.max_tokens, max_batch_size=opts.max_batch_size, oversize="truncate",
                                num_buckets=opts.num_buckets, shuffle=False)
                  .pack(pad_id=tokenizer.pad_id).loader())
        with torch.no_grad():
            single = evaluate_classifier(model, loader, device, num_classes=len(names))
        assert single == {"accuracy": metrics[f"{split}_accuracy"], "macro_f1": metrics[f"{split}_macro_f1"]}


def test_resumed_two_process_run_matches_uninterrupted(full_run, cls_data, tmp_path):
    full, _, _ = full_run
    cut = tmp_path / "cut"
    args = [*_files(cls_data), *CLS_ARGS, "--output-dir", str(cut)]
    crashed = _torchrun("text_classification", args, SEQBUCKET_DEBUG_CRASH_AFTER="11")
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr
    state = torch.load(cut / "checkpoint.pt", weights_only=True)["loop"]
    # 7 batches per epoch and rank: the crash at batch 12 resumes mid-epoch 2 from the checkpoint of step 10
    assert state["step"] == 10 and state["epoch"] == 1 and not state["epoch_done"]
    resumed = _torchrun("text_classification", [*args, "--resume"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from checkpoint.pt" in resumed.stdout

    assert json.loads((cut / "metrics.json").read_text()) == json.loads((full / "metrics.json").read_text())
    assert _log(cut) == _log(full)
    for name in ("best_model.pt",):
        a, b = torch.load(full / name, weights_only=True), torch.load(cut / name, weights_only=True)
        assert state_dict_sha256(a) == state_dict_sha256(b)
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True)["model"] for d in (full, cut))
    assert state_dict_sha256(a) == state_dict_sha256(b)


def test_resume_with_another_world_size_is_refused(full_run, cls_data, tmp_path, capsys):
    full, _, _ = full_run
    recipe = load_recipe("text_classification", "ddp")
    code = run_main(recipe.main, [*_files(cls_data), *CLS_ARGS, "--output-dir", str(full), "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "belongs to a different run" in err and "number of processes: 2 in the checkpoint, 1 now" in err, err
    assert "data: differs" not in err  # the same data, whatever the number of processes


def test_tagging_two_processes(tmp_path):
    data = write_tagging_data(tmp_path / "data", n_train=120, n_dev=20, n_test=20)
    out, debug = tmp_path / "run", tmp_path / "debug"
    proc = _torchrun("tagging", [*_files(data), *TAG_ARGS, "--grad-accum", "2", "--output-dir", str(out)],
                     SEQBUCKET_DEBUG_DIR=str(debug))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = _debug(debug)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 4  # --max-steps counts optimizer steps
    assert ranks[0]["batches"] == ranks[1]["batches"] > 4  # up to 2 batches per optimizer step
    assert ranks[0]["final_sha256"] == ranks[1]["final_sha256"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0.0 <= metrics["test_f1"] <= 1.0
