"""Faults a long run meets and files from strangers: corrupt, truncated and malicious checkpoints, a
full disk, ``--resume`` into a different run, NaN losses and out-of-memory batches.

Every case must end in the plugin's own error naming what went wrong, with nothing lost: the
output directory of a refused resume is byte-for-byte unchanged, the previous checkpoint of a
failed write still loads, and no code in a checkpoint ever runs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import load_recipe

from seqbucket_plugin.errors import (
    BatchOutOfMemoryError,
    CheckpointError,
    NonFiniteLossError,
    ResumeMismatchError,
)
from seqbucket_plugin.training import checkpoint, engine, write_classification_data
from seqbucket_plugin.training.cli import run_main
from seqbucket_plugin.training.fingerprint import dataset_fingerprint, fingerprint_differences

ROOT = Path(__file__).resolve().parents[1]


cls_recipe = load_recipe("text_classification", "faults")
tag_recipe = load_recipe("tagging", "faults")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_classification_data(tmp_path_factory.mktemp("faults"), n_train=300, n_dev=40, n_test=40)


def _args(data: dict, out: Path, *extra: str) -> list[str]:
    return ["--train-file", data["train"], "--dev-file", data["dev"], "--test-file", data["test"],
            "--embedding-dim", "8", "--hidden-size", "8", "--max-tokens", "2048", "--epochs", "2",
            "--max-steps", "6", "--save-every", "2", "--patience", "0", "--no-progress", "--threads", "1",
            "--output-dir", str(out), *extra]


def _snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``directory``: size, modification time and SHA-256."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns,
                                            hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A finished short run (checkpoint.pt, best_model.pt, tokenizer, config) to damage in copies."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cls_recipe.main(_args(data, out))
    return out


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


# ------------------------------------------------------------------------------ damaged checkpoints
def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "cut_last_byte":
        path.write_bytes(bytes(data[:-1]))
    elif how == "garbage":
        path.write_bytes(os.urandom(4096))
    elif how == "bit_flip":  # inside the largest tensor's bytes: torch.load alone would accept it
        import zipfile

        with zipfile.ZipFile(path) as archive:
            entry = max(archive.infolist(), key=lambda i: i.file_size)
        start = entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra)
        data[start + entry.file_size // 2] ^= 0x40
        path.write_bytes(bytes(data))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["empty", "truncated", "cut_last_byte", "garbage", "bit_flip"])
def test_damaged_checkpoint_is_a_clear_error(trained, tmp_path, how):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((trained / "checkpoint.pt").read_bytes())
    _damage(path, how)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("how", ["truncated", "bit_flip"])
def test_resume_from_damaged_checkpoint_leaves_output_dir_untouched(data, trained, tmp_path, capsys, how):
    out = _copy_run(trained, tmp_path)
    _damage(out / "checkpoint.pt", how)
    before = _snapshot(out)
    assert run_main(cls_recipe.main, _args(data, out, "--resume", "--max-steps", "10")) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and ("corrupt" in err or "not a complete checkpoint" in err), err
    assert _snapshot(out) == before


# ------------------------------------------------------------------------------ untrusted files
class _Payload:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "hook": _Payload(marker)}, evil)

    with pytest.raises(CheckpointError, match="refused") as info:
        checkpoint.load_checkpoint(evil)
    assert str(evil) in str(info.value) and "mkdir" in str(info.value)
    assert not marker.exists()

    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.is_dir()


@pytest.mark.parametrize("target", ["checkpoint.pt", "best_model.pt"])
def test_recipes_refuse_malicious_checkpoints(data, trained, tmp_path, capsys, target):
    out = _copy_run(trained, tmp_path)
    marker = tmp_path / "code-ran"
    torch.save({"model": {}, "hook": _Payload(marker)}, out / target)
    before = _snapshot(out)
    if target == "checkpoint.pt":
        argv = _args(data, out, "--resume", "--max-steps", "10")
    else:
        texts = tmp_path / "texts.txt"
        texts.write_text("a fine film\n", encoding="utf-8")
        argv = ["--predict", str(texts), "--output-dir", str(out), "--predictions", str(tmp_path / "p.jsonl")]
    assert run_main(cls_recipe.main, argv) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()
    assert _snapshot(out) == before


def test_no_unsafe_loading_in_the_code():
    """No pickle/eval/exec of untrusted data, no remote code, every torch.load with weights_only=True."""
    forbidden = [r"weights_only\s*=\s*False", r"trust_remote_code\s*=\s*True", r"\bpickle\.loads?\(",
                 r"(?<![\w.])eval\(", r"(?<![\w.])exec\(", r"yaml\.load\(", r"\bmarshal\.loads?\("]
    files = [*(ROOT / "seqbucket_plugin").rglob("*.py"), *(ROOT / "recipes").rglob("*.py")]
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        for pattern in forbidden:
            assert not re.search(pattern, text), f"{path.relative_to(ROOT)}: {pattern}"
        for call in re.finditer(r"torch\.load\(", text):
            assert "weights_only=True" in text[call.start(): text.find(")", call.start()) + 1], \
                f"{path.relative_to(ROOT)}: torch.load without weights_only=True"


# ------------------------------------------------------------------------------ full disk
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.atomic_save({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def save_then_fill_disk(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fill_disk)
    with pytest.raises(CheckpointError, match="disk full") as info:
        checkpoint.atomic_save({"step": 2, "w": torch.zeros(3)}, path)
    assert str(path) in str(info.value) and "previous file is unchanged" in str(info.value)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert checkpoint.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) for a real ENOSPC")
def test_real_enospc_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The kernel's own 'No space left on device' (writes to /dev/full), through torch.save."""
    path = tmp_path / "checkpoint.pt"
    checkpoint.atomic_save({"step": 1}, path)

    def full_disk_mkstemp(prefix, suffix, dir):
        return os.open("/dev/full", os.O_WRONLY), os.path.join(dir, prefix + "never" + suffix)

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", full_disk_mkstemp)
    with pytest.raises(CheckpointError, match="disk full"):
        checkpoint.atomic_save({"step": 2, "w": torch.zeros(100_000)}, path)
    assert checkpoint.load_checkpoint(path)["step"] == 1


# ------------------------------------------------------------------------------ resume into another run
def test_resume_with_changed_data_settings_or_tokenizer_is_refused(data, trained, tmp_path, capsys):
    other = write_classification_data(tmp_path / "other", n_train=300, n_dev=40, n_test=40, seed=5)
    cases = {
        "training data": (_args({**data, "train": other["train"]}, Path("OUT"), "--resume"), "train data: differs"),
        "settings": (_args(data, Path("OUT"), "--resume", "--max-tokens", "1024"), "--max-tokens: 2048"),
    }
    for name, (argv, expected) in cases.items():
        out = _copy_run(trained, tmp_path / name.replace(" ", "_"))
        argv = [str(out) if a == "OUT" else a for a in argv]
        before = _snapshot(out)
        assert run_main(cls_recipe.main, argv) == 2, name
        err = capsys.readouterr().err
        assert "belongs to a different run" in err and expected in err, (name, err)
        assert _snapshot(out) == before, name

    out = _copy_run(trained, tmp_path / "tokenizer")  # someone swaps the tokenizer of the run
    tokenizer_json = out / "tokenizer" / "tokenizer.json"
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    spec["model"]["vocab"]["zzz-new-token"] = len(spec["model"]["vocab"])
    tokenizer_json.write_text(json.dumps(spec), encoding="utf-8")
    before = _snapshot(out)
    assert run_main(cls_recipe.main, _args(data, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "tokenizer: differs" in err, err
    assert _snapshot(out) == before


def test_resume_with_more_epochs_is_allowed_and_noted(data, trained, tmp_path, capsys):
    out = _copy_run(trained, tmp_path)
    metrics = cls_recipe.main(_args(data, out, "--resume", "--max-steps", "8"))
    assert metrics["steps"] == 8
    assert "fit(resume=True): --max-steps: 6 in the checkpoint, 8 now" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["max_steps"] == 8


def test_checkpoint_without_fingerprint_resumes_with_a_note(data, trained, tmp_path, capsys):
    out = _copy_run(trained, tmp_path)
    state = checkpoint.load_checkpoint(out / "checkpoint.pt")
    del state["fingerprint"]  # as written before fingerprints existed
    checkpoint.atomic_save(state, out / "checkpoint.pt")
    assert cls_recipe.main(_args(data, out, "--resume", "--max-steps", "8"))["steps"] == 8
    assert "holds no fingerprint" in capsys.readouterr().out


def test_fingerprint_depends_on_values_not_layout():
    import datasets

    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3], [], [4, 5, 6]], "label": [0, 1, 0, 1],
                                     "text": ["a", "b", "c", "d"]})
    same = datasets.concatenate_datasets([ds.select([0, 1]), ds.select([2, 3])])
    assert dataset_fingerprint(ds) == dataset_fingerprint(same)
    assert dataset_fingerprint(ds) != dataset_fingerprint(ds.select([1, 0, 2, 3]))
    moved = datasets.Dataset.from_dict({"input_ids": [[1], [2, 3], [], [4, 5, 6]], "label": [0, 1, 0, 1]})
    assert dataset_fingerprint(ds) != dataset_fingerprint(moved)  # same tokens, other boundaries
    errors, notes = fingerprint_differences({"settings": {"lr": 0.1, "epochs": 2}, "labels": ["a"]},
                                            {"settings": {"lr": 0.2, "epochs": 3}, "labels": ["a", "b"]})
    assert any("--lr" in e for e in errors) and any("labels" in e for e in errors)
    assert notes == ["--epochs: 2 in the checkpoint, 3 now"]


# ------------------------------------------------------------------------------ non-finite losses
def _inject_nan(monkeypatch, at_calls: set[int] | None):
    """Make the loss and the gradients of the given training steps (1-based calls; None: all) NaN."""
    original = engine.Trainer._run_step
    calls = {"n": 0}

    def run_step(self, batch, backward):
        calls["n"] += 1
        if at_calls is not None and calls["n"] not in at_calls:
            return original(self, batch, backward)
        out = original(self, batch, lambda loss: backward(loss * float("nan")))
        return engine.StepOutput(loss=out.loss * float("nan"), tokens=out.tokens)

    monkeypatch.setattr(engine.Trainer, "_run_step", run_step)


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_checkpoint(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _inject_nan(monkeypatch, {5})
    with pytest.raises(NonFiniteLossError) as info:
        cls_recipe.main(_args(data, out))
    message = str(info.value)
    assert "at step 5" in message and "batch 5 of the epoch" in message and "input_ids" in message
    assert "checkpoint.pt (step 4) is intact" in message
    state = checkpoint.load_checkpoint(out / "checkpoint.pt")
    assert state["loop"]["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nonfinite_loss_skip_counts_and_never_trains_on_nan(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _inject_nan(monkeypatch, {2, 3})
    metrics = cls_recipe.main(_args(data, out, "--nonfinite", "skip"))
    assert metrics["steps"] == 6  # skipped steps are not optimizer steps
    assert "optimizer step skipped (2 skipped so far)" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["skipped_nonfinite"] == 2 and math.isfinite(log[-1]["train_loss"])
    final = checkpoint.load_checkpoint(out / "checkpoint.pt")["model"]
    assert all(torch.isfinite(t).all() for t in final.values())


def test_nonfinite_skip_gives_up_after_patience(data, tmp_path, monkeypatch):
    _inject_nan(monkeypatch, None)
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row"):
        cls_recipe.main(_args(data, tmp_path / "run", "--nonfinite", "skip", "--nonfinite-patience", "3"))


def test_nonfinite_policy_in_the_tagging_recipe_too(tmp_path, monkeypatch, capsys):
    from seqbucket_plugin.training import write_tagging_data

    tags = write_tagging_data(tmp_path / "tags", n_train=120, n_dev=20, n_test=20)
    _inject_nan(monkeypatch, {1})
    argv = ["--train-file", tags["train"], "--dev-file", tags["dev"], "--test-file", tags["test"],
            "--embedding-dim", "8", "--hidden-size", "8", "--char-filters", "4", "--char-dim", "4",
            "--max-tokens", "512", "--max-steps", "3", "--no-progress", "--threads", "1",
            "--output-dir", str(tmp_path / "run")]
    assert run_main(tag_recipe.main, argv) == 2
    assert "non-finite training loss" in capsys.readouterr().err


# ------------------------------------------------------------------------------ out of memory
def test_out_of_memory_names_the_batch_and_a_budget_that_fits(data, tmp_path, monkeypatch, capsys):
    def oom(self, loss):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine.Trainer, "_backward", oom)
    assert run_main(cls_recipe.main, _args(data, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    match = re.search(r"batch of (\d+) rows x (\d+) tokens \(([\d,]+) padded tokens, ([\d,]+) real\)\. "
                      r"Lower the token budget: bucket_batch\(max_tokens=(\d+)\)", err)
    assert match, err
    rows, cols, padded, real, fits = (int(g.replace(",", "")) for g in match.groups())
    assert rows * cols == padded <= 2048 and real <= padded and fits < padded and fits % 64 == 0


def test_oom_error_type():
    batch = type("B", (), {"input_ids": torch.zeros(4, 300, dtype=torch.long),
                           "lengths": torch.tensor([300, 200, 100, 50])})()
    message = engine.oom_message(batch, torch.device("cuda"), 7)
    assert "step 7" in message and "4 rows x 300 tokens" in message and "650 real" in message
    assert "bucket_batch(max_tokens=832)" in message  # 70% of 1,200 -> 840 -> a multiple of 64
    assert issubclass(BatchOutOfMemoryError, MemoryError) and issubclass(ResumeMismatchError, Exception)


def test_temporaries_of_a_killed_write_are_removed_at_the_next_write(tmp_path):
    """A write killed (SIGKILL) before its rename leaves a .tmp-*.pt; the next write removes it."""
    path = tmp_path / "checkpoint.pt"
    checkpoint.atomic_save({"step": 1}, path)
    stale = [tmp_path / ".tmp-abc123.pt", tmp_path / ".tmp-k1ll3d.pt"]
    for file in stale:
        file.write_bytes(b"PK\x03\x04 half a checkpoint")
    (tmp_path / "notes.pt").write_bytes(b"keep")
    checkpoint.atomic_save({"step": 2}, tmp_path / "best_model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pt", "checkpoint.pt", "notes.pt"]
    assert checkpoint.load_checkpoint(path)["step"] == 1
