"""A training run killed with SIGKILL and resumed with --resume ends exactly like an uninterrupted one.

The run is a real subprocess; it is killed at whatever moment it has written ``kills_after``
checkpoints (mid-epoch or at an epoch end, possibly while writing the next one), so the test also
checks that checkpoints are written atomically: the previous one always loads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqbucket_plugin.training import write_classification_data

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "text_classification.py")


def _args(data: dict, out: Path) -> list[str]:
    return [sys.executable, RECIPE, "--train-file", data["train"], "--dev-file", data["dev"],
            "--test-file", data["test"], "--embedding-dim", "16", "--hidden-size", "16", "--max-tokens", "1024",
            "--epochs", "3", "--max-steps", "60", "--save-every", "3", "--eval-every", "10", "--patience", "0",
            "--dropout", "0.3", "--no-progress", "--threads", "1", "--output-dir", str(out)]


def _weights(path: Path) -> dict:
    state = torch.load(path, weights_only=True)
    return state.get("model", state)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kills_after", [2, 7])
def test_sigkill_then_resume_is_exact(tmp_path, kills_after):
    data = write_classification_data(tmp_path / "data", n_train=400, n_dev=60, n_test=60)
    reference = tmp_path / "reference"
    subprocess.run(_args(data, reference), check=True, capture_output=True, timeout=240)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_args(data, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoint.pt"
    seen, last = 0, None
    deadline = time.monotonic() + 240
    while proc.poll() is None and seen < kills_after and time.monotonic() < deadline:
        stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        if stamp is not None and stamp != last:
            seen, last = seen + 1, stamp
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    torch.load(checkpoint, weights_only=True)  # the last complete checkpoint survives the kill
    subprocess.run([*_args(data, killed), "--resume"], check=True, capture_output=True, timeout=240)

    assert json.loads((killed / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    for name in ("best_model.pt", "checkpoint.pt"):
        a, b = _weights(reference / name), _weights(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
