"""benchmarks/gpu_check.py cannot rot: its quick CPU mode runs every section here (CI), and the
CUDA rule of ``auto`` that the script's output sets is applied as documented."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from seqbucket_plugin.encoders.recurrent import RecurrentEncoder

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("env", "exactness", "ddp", "budget", "throughput", "sweep", "fed", "recipe")


@pytest.mark.timeout(400)
def test_quick_cpu_mode_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--output", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=380)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    failed = {name: report[name].get("error") for name in SECTIONS if "error" in report.get(name, {})}
    assert not failed, failed
    assert report["problems"] == [] and proc.returncode == 0, report["problems"] or proc.stderr[-3000:]
    # the quick mode takes about 2 minutes on 2 idle cores; the bound leaves room for a loaded CI machine
    assert report["wall_s"] < 300, "the quick mode must stay near its 3-minute target"

    exact = report["exactness"]["results"]
    assert {r["config"] for r in exact} >= {"padded nn.LSTM (inexact)", "hand-written pack/pad",
                                           "seqbucket packed", "seqbucket padded_static", "seqbucket padded_exact"}
    assert {r["precision"] for r in exact} == {"fp32", "bf16"}
    assert all(r["exact"] for r in exact if r["config"].startswith("seqbucket"))
    assert not any(r["exact"] for r in exact if r["config"] == "padded nn.LSTM (inexact)"), \
        "the check must be able to tell an inexact encoder"
    configs = {(r["batch"], r["config"]) for r in report["throughput"]["results"]}
    assert ("bucketed", "seqbucket padded_static") in configs and ("random", "hand-written pack/pad") in configs
    assert report["auto_rule"]["supported"]["cuda_dense_strategy"] in RecurrentEncoder.strategies
    assert all(0 < r["fed_ratio"] for r in report["fed"]["results"]) and len(report["fed"]["results"]) == 2
    assert report["budget"]["result"]["bound"] == "memory" and report["budget"]["result"]["max_tokens"] > 0
    assert report["ddp"]["backend"] == "gloo" and report["ddp"]["ok"]
    assert report["recipe"]["epoch"]["returncode"] == 0
    auto = report["recipe"]["max_tokens_auto"]
    assert auto["returncode"] == 2 and len(auto["error_lines"]) == 1 and "CUDA" in auto["error_lines"][0]
    markdown = out.with_suffix(".md").read_text()
    assert "Forward+backward real tokens/s" in markdown and "Is the device fed?" in markdown
    assert "AUTO RULE SUPPORTED BY THESE MEASUREMENTS" in proc.stdout


def test_cuda_rule_of_auto_is_the_class_attributes(monkeypatch):
    """``auto`` on CUDA: cuda_dense_strategy for batches of at least cuda_static_min_density real
    tokens, cuda_sparse_strategy otherwise (only the device type and shape of ``x`` are read)."""
    enc = RecurrentEncoder(4, 4, bidirectional=True)
    x = types.SimpleNamespace(device=torch.device("cuda"), size=lambda dim: (4, 10)[dim])
    dense, sparse = torch.tensor([10, 10, 9, 9]), torch.tensor([10, 2, 1, 1])
    assert RecurrentEncoder.CUDA_RULE_MEASURED is False, "update the README and RESULTS.md when it is measured"
    assert enc.choose_strategy(None, x, dense) == enc.choose_strategy(None, x, sparse) == "packed"
    monkeypatch.setattr(enc, "cuda_dense_strategy", "padded_static")
    monkeypatch.setattr(enc, "cuda_static_min_density", 0.8)
    assert enc.choose_strategy(None, x, dense) == "padded_static"
    assert enc.choose_strategy(None, x, sparse) == "packed"
    assert enc.choose_strategy("padded_exact", x, dense) == "padded_exact", "an explicit strategy is kept"
