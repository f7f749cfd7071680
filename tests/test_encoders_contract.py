"""The encoder contract, generated from ``list_encoders()``: every registered encoder runs the
checks shipped as ``seqbucket_plugin.testing.check_encoder`` (what a user runs on their own
encoder). A custom encoder is registered here (as a user would) so the contract covers
third-party encoders too."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from seqbucket_plugin.encoders import SequenceEncoder, UnknownEncoderError, list_encoders, register_encoder
from seqbucket_plugin.testing import ENCODER_CHECKS, EncoderContractError, check_encoder, encoder_checks


@register_encoder("test-causal-bag", override=True)
class CausalBag(SequenceEncoder):
    """A custom encoder: running mean of projected inputs (causal, so batch-invariant)."""

    def __init__(self, input_size: int, hidden_size: int, pooling="last"):
        super().__init__(hidden_size, 1, pooling)
        self.proj = nn.Linear(input_size, hidden_size)

    def encode(self, x, lengths, mask, strategy):
        h = torch.tanh(self.proj(x)) * mask.unsqueeze(-1)
        steps = torch.arange(1, x.size(1) + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        return h.cumsum(1) / steps * mask.unsqueeze(-1), None


NAMES = list_encoders()
CASES = [pytest.param(check, id=ident) for name in NAMES for ident, check in encoder_checks(name)]


def test_custom_encoder_is_listed():
    assert "test-causal-bag" in NAMES
    assert {"lstm", "gru", "bilstm", "bigru"} <= set(NAMES)


def test_every_check_runs_for_every_encoder():
    for name in NAMES:
        ran = {ident.rsplit("-", 1)[-1] for ident, _ in encoder_checks(name)}
        assert {c.rsplit("-", 1)[-1] for c in ENCODER_CHECKS} == ran, name
    # the recurrent encoders are checked in several configurations (their contract_configs)
    assert sum(1 for ident, _ in encoder_checks("bilstm") if ident.endswith("batch_invariance")) == 4


@pytest.mark.parametrize("check", CASES)
def test_contract(check):
    check()


class LeakyEncoder(CausalBag):
    """Breaks batch invariance: every position sees the mean over the whole padded batch row."""

    def encode(self, x, lengths, mask, strategy):
        h = torch.tanh(self.proj(x))
        return (h + h.mean(1, keepdim=True)) * mask.unsqueeze(-1), None


class ShortConv(SequenceEncoder):
    """The README's first causal-conv example: a kernel larger than a zero-step input fails."""

    def __init__(self, input_size: int, hidden_size: int, pooling="mean"):
        super().__init__(hidden_size, 1, pooling)
        self.conv = nn.Conv1d(input_size, hidden_size, 3)

    def encode(self, x, lengths, mask, strategy):
        h = self.conv(nn.functional.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2)
        return torch.relu(h) * mask.unsqueeze(-1), None


def test_check_encoder_takes_a_factory_and_names_the_failing_check():
    check_encoder(CausalBag)  # a factory that is not registered passes as it is
    with pytest.raises(EncoderContractError, match="LeakyEncoder.*batch_invariance.*row"):
        check_encoder(LeakyEncoder)
    with pytest.raises(EncoderContractError, match="short_inputs"):
        check_encoder(ShortConv)
    with pytest.raises(UnknownEncoderError, match="did you mean"):
        check_encoder("bilstn")


def test_check_encoder_command_line(tmp_path):
    module = tmp_path / "my_encoders_for_cli.py"
    module.write_text(
        "import torch\nfrom torch import nn\nfrom seqbucket_plugin.encoders import SequenceEncoder, register_encoder\n\n"
        "@register_encoder('cli-bag')\nclass Bag(SequenceEncoder):\n"
        "    def __init__(self, input_size, hidden_size, pooling='mean'):\n"
        "        super().__init__(hidden_size, 1, pooling)\n        self.proj = nn.Linear(input_size, hidden_size)\n"
        "    def encode(self, x, lengths, mask, strategy):\n"
        "        return torch.tanh(self.proj(x)) * mask.unsqueeze(-1), None\n", encoding="utf-8")
    env_path = f"{tmp_path}"

    def run(*args):
        import os

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([env_path, os.environ.get("PYTHONPATH", "")])}
        return subprocess.run([sys.executable, "-m", "seqbucket_plugin.testing", *args], capture_output=True,
                              text=True, env=env, timeout=300)

    ok = run("check-encoder", "cli-bag", "--import", "my_encoders_for_cli")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{len(ENCODER_CHECKS)} of {len(ENCODER_CHECKS)} checks passed" in ok.stdout
    # without the module the name is unknown: a clear error, not a silent empty selection
    missing = run("check-encoder", "cli-bag")
    assert missing.returncode == 2 and missing.stderr.startswith("error: no encoder registered as 'cli-bag'")
    by_path = run("check-encoder", "my_encoders_for_cli:Bag")
    assert by_path.returncode == 0, by_path.stdout + by_path.stderr
