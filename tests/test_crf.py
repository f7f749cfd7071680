"""CRF: log-likelihood and Viterbi against brute-force enumeration; batching and lengths."""

from __future__ import annotations

import itertools

import pytest
import torch

from seqbucket_plugin.encoders import EncoderInputError
from seqbucket_plugin.heads import CRF

K = 3


def _brute(crf: CRF, emissions: torch.Tensor, n: int):
    """(log Z, best path, score function) for one sequence of length n by enumeration."""
    def score(path):
        s = crf.start[path[0]] + emissions[0, path[0]] + crf.end[path[-1]]
        for t in range(1, n):
            s = s + crf.transitions[path[t - 1], path[t]] + emissions[t, path[t]]
        return s

    paths = list(itertools.product(range(K), repeat=n))
    scores = torch.stack([score(p) for p in paths])
    return torch.logsumexp(scores, 0), list(paths[int(scores.argmax())]), score


@pytest.fixture
def crf():
    torch.manual_seed(0)
    c = CRF(K)
    with torch.no_grad():  # larger parameters than the default init, to make paths distinct
        for p in c.parameters():
            p.normal_(0, 1)
    return c


def test_against_brute_force(crf):
    torch.manual_seed(1)
    lengths = [4, 1, 3, 0, 2, 4]
    T = 5
    emissions = torch.randn(len(lengths), T, K) * 2
    tags = torch.randint(0, K, (len(lengths), T))
    tags[torch.arange(T).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)] = -100
    logz = crf.log_partition(emissions, lengths)
    ll = crf.log_likelihood(emissions, tags, lengths)
    best = crf.decode(emissions, lengths)
    for b, n in enumerate(lengths):
        if n == 0:
            assert logz[b] == 0 and ll[b] == 0 and torch.all(best[b] == -100)
            continue
        bz, bpath, score = _brute(crf, emissions[b], n)
        torch.testing.assert_close(logz[b], bz, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ll[b], score(tags[b, :n].tolist()) - bz, atol=1e-5, rtol=1e-5)
        assert best[b, :n].tolist() == bpath
        assert torch.all(best[b, n:] == -100)
    # probabilities of all paths sum to one
    n = lengths[0]
    total = torch.logsumexp(
        torch.stack([
            crf.log_likelihood(emissions[:1, :n], torch.tensor([p]), [n])[0]
            for p in itertools.product(range(K), repeat=n)
        ]), 0)
    torch.testing.assert_close(total, torch.tensor(0.0), atol=1e-5, rtol=0)


def test_batch_invariance_and_gradients(crf):
    torch.manual_seed(2)
    lengths = [5, 2, 3]
    emissions = torch.randn(3, 6, K, requires_grad=True)
    tags = torch.randint(0, K, (3, 6))
    nll = crf(emissions, tags, lengths, reduction="none")
    for b, n in enumerate(lengths):
        alone = crf(emissions[b : b + 1, :n], tags[b : b + 1, :n], [n], reduction="none")
        torch.testing.assert_close(nll[b], alone[0], atol=1e-5, rtol=0)
    crf(emissions, tags, lengths).backward()
    assert all(p.grad is not None for p in crf.parameters())
    assert torch.all(emissions.grad[1, 2:] == 0)  # padding gets no gradient


def test_edge_cases_and_errors(crf):
    assert crf.decode(torch.randn(2, 3, K), [0, 0]).eq(-100).all()
    assert crf(torch.randn(2, 3, K), torch.zeros(2, 3, dtype=torch.long), [0, 0]).item() == 0
    assert crf.decode(torch.randn(0, 3, K), torch.zeros(0, dtype=torch.long)).shape == (0, 3)
    with pytest.raises(EncoderInputError, match="cannot ignore"):
        crf(torch.randn(1, 3, K), torch.tensor([[0, -100, 1]]), [3])
    with pytest.raises(EncoderInputError):
        crf(torch.randn(1, 3, K + 1), torch.zeros(1, 3, dtype=torch.long), [3])
