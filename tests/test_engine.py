"""The training engine's own contract: its messages name the library's parameters (``TrainConfig``
fields, ``Trainer``/``resolve_device`` arguments), and its loop pieces (loop state, accumulation)."""

from __future__ import annotations

import builtins
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from seqbucket_plugin.errors import SeqBucketError
from seqbucket_plugin.training import engine, run_log
from seqbucket_plugin.training.engine import StepOutput, TrainConfig, Trainer, resolve_device
from seqbucket_plugin.training.loop_state import EpochMeter, LoopState


class _Batch:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def to(self, device, non_blocking=False):
        return _Batch(self.x.to(device), self.y.to(device))


class _Loader:
    """A resumable loader of ``n`` fixed batches."""

    def __init__(self, n=4):
        g = torch.Generator().manual_seed(0)
        self.batches = [_Batch(torch.randn(3, 2, generator=g), torch.randn(3, 1, generator=g)) for _ in range(n)]
        self.pos = 0

    def __iter__(self):
        while self.pos < len(self.batches):
            self.pos += 1
            yield self.batches[self.pos - 1]
        self.pos = 0

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def _step(model, batch, backward):
    loss = nn.functional.mse_loss(model(batch.x), batch.y)
    backward(loss)
    return StepOutput(loss.detach(), 3)


def _trainer(tmp_path, messages=None, n=4, **config):
    torch.manual_seed(0)
    cfg = TrainConfig(**{"epochs": 1, "progress": False, "metric": "score", "save_every": 0, **config})
    model = nn.Linear(2, 1)
    return Trainer(model, _Loader(n), _step, lambda m: {"score": -float(m.weight.abs().sum())}, cfg, tmp_path,
                   torch.device("cpu"), steps_per_epoch=n, log=(messages.append if messages is not None else print))


@pytest.mark.parametrize("setting,match", [
    ({"grad_accum": 0}, r"TrainConfig\.grad_accum must be a positive integer, got 0"),
    ({"nonfinite": "ignore"}, r"TrainConfig\.nonfinite must be 'stop' or 'skip'"),
    ({"report_to": "wandb"}, r"TrainConfig\.report_to must be one of \['none', 'tensorboard'\]"),
])
def test_invalid_settings_name_the_config_field(setting, match, tmp_path):
    with pytest.raises(SeqBucketError, match=match) as info:
        _trainer(tmp_path, **setting)
    assert "--" not in str(info.value)


def test_accumulation_needs_the_batches_per_epoch(tmp_path):
    with pytest.raises(SeqBucketError, match=r"TrainConfig\.grad_accum > 1 needs Trainer\(steps_per_epoch=\.\.\.\)"):
        Trainer(nn.Linear(2, 1), _Loader(), _step, lambda m: {"accuracy": 0.0}, TrainConfig(grad_accum=2), tmp_path,
                torch.device("cpu"))
    with pytest.raises(SeqBucketError, match=r"Trainer\(grad_sync=\.\.\.\) must be 'ddp' or 'manual'"):
        Trainer(nn.Linear(2, 1), _Loader(), _step, lambda m: {"accuracy": 0.0}, TrainConfig(), tmp_path,
                torch.device("cpu"), grad_sync="nccl")


def test_resolve_device_names_its_argument(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SeqBucketError, match=r"resolve_device\('cuda:1'\): CUDA is not available") as info:
        resolve_device("cuda:1")
    assert "--" not in str(info.value)
    with pytest.raises(SeqBucketError, match=r"resolve_device\('tpu'\): unknown device"):
        resolve_device("tpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_tensorboard_missing_names_report_to(monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(SeqBucketError, match=r"TrainConfig\.report_to='tensorboard' needs the tensorboard package"):
        run_log.tensorboard_writer("unused")


def test_resume_without_checkpoint_names_fit_resume(tmp_path):
    messages: list[str] = []
    history = _trainer(tmp_path, messages).fit(resume=True)
    assert messages[0] == "fit(resume=True): no checkpoint.pt in the output directory yet, starting from scratch"
    assert len(history) == 1 and (tmp_path / "log.jsonl").read_text().count("\n") == 1


def test_resume_continues_exactly(tmp_path):
    """A run that crashed mid-epoch and resumed ends with the weights of an uninterrupted one."""
    full = _trainer(tmp_path / "full", n=6, grad_accum=2, epochs=2)
    full.fit()
    cut = _trainer(tmp_path / "cut", n=6, grad_accum=2, epochs=2, save_every=1)
    calls = {"n": 0}

    def crashing(model, batch, backward):
        calls["n"] += 1
        if calls["n"] == 9:  # epoch 2, batch 3: after the checkpoint of step 4
            raise KeyboardInterrupt
        return _step(model, batch, backward)

    cut.train_step = crashing
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    messages: list[str] = []
    resumed = _trainer(tmp_path / "cut", messages, n=6, grad_accum=2, epochs=2)
    resumed.fit(resume=True)
    assert messages[0] == "resumed from checkpoint.pt: step 4, epoch 2, batch 1"
    assert resumed.state.step == full.state.step == 6
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        assert torch.equal(a, b)
    assert [r["dev_score"] for r in resumed.state.history] == [r["dev_score"] for r in full.state.history]


def test_a_short_last_group_steps_on_its_own_batches(tmp_path):
    """5 batches with grad_accum 2: optimizer steps of 2, 2 and 1 batches."""
    trainer = _trainer(tmp_path, n=5, grad_accum=2)
    trainer.fit()
    assert trainer.state.step == 3 and trainer.state.history[-1]["step"] == 3


def test_loop_state_selection_and_epochs():
    s = LoopState(step=4, loss_sum=2.0, loss_n=3, tokens=9, epoch_step=4, epoch_batch=8, epoch_done=True)
    assert s.select(0.5) and (s.best_metric, s.best_step, s.bad_evals) == (0.5, 4, 0)
    assert not s.select(0.5) and s.bad_evals == 1
    s.next_epoch()
    assert (s.epoch, s.epoch_step, s.epoch_batch, s.epoch_done, s.loss_sum, s.loss_n, s.tokens) == (1, 0, 0, False,
                                                                                                    0.0, 0, 0)
    meter = EpochMeter(loss_sum=torch.tensor(3.0))
    assert math.isnan(meter.mean_loss(s))
    s.loss_n = 2
    meter.fold(s)
    assert s.loss_sum == 3.0 and float(meter.loss_sum) == 0.0 and meter.mean_loss(s) == 1.5


def test_library_messages_name_no_recipe_flag():
    """The library's own messages name its fields and arguments, not command-line flags: only the
    recipe layer (training/cli.py, options.py, recipe.py, model_options.py) maps them to flags."""
    import inspect

    from seqbucket_plugin import export
    from seqbucket_plugin.datapipes import bucketing, packing, pipe, sources
    from seqbucket_plugin.datapipes import loaders as loaders_package
    from seqbucket_plugin.datapipes import tokenize as tokenize_package
    from seqbucket_plugin.training import budget

    package_files = [p for pkg in (loaders_package, tokenize_package)
                     for p in Path(pkg.__file__).parent.glob("*.py")]
    source = "".join(inspect.getsource(m) for m in (engine, run_log, budget, export, bucketing, packing, pipe,
                                                    sources))
    source += "".join(p.read_text(encoding="utf-8") for p in package_files)
    for flag in ("--grad-accum", "--device", "--report-to", "--resume", "--lr", "--nonfinite", "--max-tokens",
                 "--output-dir", "--batch-size", "--max-length", "--longest-first"):
        assert flag not in source, flag
