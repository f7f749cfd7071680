"""Forward+backward tokens/s of the recurrent encoders on IMDB-length batches.

Model: embedding 64 + 1-layer BiLSTM 128 (the issue's setting); loss = sum of the token states
(plus nothing else), so every configuration does the same work. Compared on the *same* batches:

* ``padded nn.LSTM``   - plain ``nn.LSTM(bidirectional=True)`` on the padded batch: inexact in
  the reverse direction (it starts in the padding), but the speed limit on CPU;
* ``hand-written packed`` - ``pack_padded_sequence -> nn.LSTM -> pad_packed_sequence``;
* ``seqbucket auto``   - ``create_encoder("bilstm")`` with the automatic strategy (exact);
* ``seqbucket <strategy>`` - each strategy forced.

Batches of 32 from a random sample of 1,600 training reviews: ``random`` (shuffled order) and
``bucketed`` (sorted by length, then chunked; batch order shuffled); and ``budget``: the plugin's
own plan (``plan_batches`` with ``estimate_boundaries``, as ``BucketBatcher`` does) with a token
budget of 32 x the mean length, so short reviews travel in larger batches. To keep the run to a few
minutes, every ``--every``-th batch is timed (the same batches for every configuration; with
bucketing this still spans short to long reviews). The configurations are timed round-robin (one
pass of each, then the next pass of each), so a slow-down of the shared machine hits all of them
alike. Reported: median over ``--repeats`` passes of real tokens / seconds.

``--crossover`` instead times ``padded_exact`` against ``padded_static`` on synthetic batches of
growing padding (real tokens / (rows x longest) from 0.95 down to 0.45), short sentences and long
documents: where ``padded_static`` stops being faster is the ``static_min_density`` that
``auto`` uses on CPU.

Run from the project root:  python benchmarks/bench_encoders.py [--crossover]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seqbucket_plugin.datapipes import estimate_boundaries, plan_batches  # noqa: E402
from seqbucket_plugin.encoders import create_encoder  # noqa: E402

IMDB = ROOT.parent / "shared" / "data" / "imdb" / "train.parquet"
TOKEN = re.compile(r"\w+|[^\w\s]")


def imdb_lengths(sample: int, seed: int) -> np.ndarray:
    import pyarrow.parquet as pq

    texts = pq.read_table(IMDB, columns=["text"]).column("text").to_pylist()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(texts), size=sample, replace=False)
    return np.array([len(TOKEN.findall(texts[i].lower())) for i in chosen], dtype=np.int64)


def make_batches(lengths: np.ndarray, batch_size: int, mode: str, seed: int, vocab: int):
    rng = np.random.default_rng(seed)
    if mode == "budget":
        budget = int(batch_size * round(lengths.mean()))
        chunks = plan_batches(lengths, boundaries=estimate_boundaries(lengths), rng=rng, max_tokens=budget).batches
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    else:
        order = np.argsort(-lengths, kind="stable") if mode == "bucketed" else rng.permutation(len(lengths))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if mode == "bucketed":
            rng.shuffle(chunks)
    batches = []
    g = torch.Generator().manual_seed(seed)
    for idx in chunks:
        lens = torch.from_numpy(lengths[idx])
        lens, _ = torch.sort(lens, descending=True)  # what a PackedBatch carries
        T = int(lens[0])
        ids = torch.randint(1, vocab, (len(idx), T), generator=g)
        ids[torch.arange(T).unsqueeze(0) >= lens.unsqueeze(1)] = 0
        batches.append((ids, lens))
    return batches


class Baseline(nn.Module):
    def __init__(self, vocab, emb, hidden, packed: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb, padding_idx=0)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.packed = packed

    def forward(self, ids, lens):
        x = self.embedding(ids)
        if self.packed:
            p = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=True)
            y, _ = self.lstm(p)
            y, _ = pad_packed_sequence(y, batch_first=True, total_length=ids.size(1))
        else:
            y, _ = self.lstm(x)
        return y


class Ours(nn.Module):
    def __init__(self, vocab, emb, hidden, strategy):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb, padding_idx=0)
        self.encoder = create_encoder("bilstm", input_size=emb, hidden_size=hidden, strategy=strategy)

    def forward(self, ids, lens):
        return self.encoder(self.embedding(ids), lens).states


def time_pass(model, batches) -> float:
    """Real tokens/s of one forward+backward pass over ``batches``."""
    tokens = sum(int(lens.sum()) for _, lens in batches)
    start = time.perf_counter()
    for ids, lens in batches:
        model.zero_grad(set_to_none=True)
        model(ids, lens).sum().backward()
    return tokens / (time.perf_counter() - start)


def time_interleaved(runs: list[dict], repeats: int, slow_repeats: int) -> None:
    """Time every configuration round-robin (pass 1 of each, then pass 2 of each, ...), so a
    slow-down of the shared machine hits every configuration alike; adds ``rates`` to each run."""
    for run in runs:
        ids, lens = run["batches"][0]
        run["model"](ids, lens).sum().backward()  # warm-up
        run["rates"] = []
    for r in range(repeats):
        for run in runs:
            if r < (slow_repeats if run["slow"] else repeats):
                run["rates"].append(time_pass(run["model"], run["batches"]))


def exactness(vocab, emb, hidden, batch):
    """Max |difference| from per-sequence reference, for the exact encoder and plain padded nn.LSTM."""
    torch.manual_seed(0)
    ours = Ours(vocab, emb, hidden, "auto").eval()
    with torch.no_grad():  # trained-like biases (at init they are 0, and padding would be harmless)
        for p in ours.encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    base = Baseline(vocab, emb, hidden, packed=False).eval()
    base.embedding.load_state_dict(ours.embedding.state_dict())
    base.lstm.load_state_dict({k: v for k, v in ours.encoder.state_dict().items() if not k.startswith("pooler")})
    ids, lens = batch
    with torch.no_grad():
        a, b = ours(ids, lens), base(ids, lens)
        err_ours = err_pad = 0.0
        for i in range(len(lens)):
            n = int(lens[i])
            ref, _ = base.lstm(base.embedding(ids[i : i + 1, :n]))
            err_ours = max(err_ours, (a[i, :n] - ref[0]).abs().max().item())
            err_pad = max(err_pad, (b[i, :n] - ref[0]).abs().max().item())
    return err_ours, err_pad


def crossover(args) -> None:
    """static/exact time ratio per padding density, round-robin medians (see the module docs)."""
    enc = create_encoder("bilstm", input_size=args.embedding, hidden_size=args.hidden).train()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; bilstm {args.embedding}->{args.hidden}, "
          f"forward+backward, median of {args.repeats} round-robin passes; current static_min_density "
          f"{enc.static_min_density}")
    print(f"{'rows x longest':>15s} {'density':>8s} {'padded_exact ms':>16s} {'padded_static ms':>17s} "
          f"{'static/exact':>13s}")
    g = torch.Generator().manual_seed(args.seed)
    for rows, T in ((64, 30), (32, 300)):
        for target in (0.95, 0.85, 0.75, 0.65, 0.55, 0.45):
            u = torch.rand(rows, generator=g)
            lens = (T * u ** ((1 - target) / target)).ceil().long().clamp(1, T)  # mean about target x T
            lens[0] = T
            lens = lens.sort(descending=True).values
            x = torch.randn(rows, T, args.embedding, generator=g, requires_grad=True)
            times = {"padded_exact": [], "padded_static": []}
            for r in range(args.repeats + 1):
                for strategy, ts in times.items():
                    start = time.perf_counter()
                    enc(x, lens, strategy=strategy).states.sum().backward()
                    if r:  # the first pass warms up
                        ts.append(time.perf_counter() - start)
            exact, static = (statistics.median(times[k]) for k in ("padded_exact", "padded_static"))
            density = int(lens.sum()) / (rows * T)
            print(f"{rows:>7d} x {T:<5d} {density:8.3f} {exact * 1e3:16.1f} {static * 1e3:17.1f} "
                  f"{static / exact:13.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=int, default=1600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--every", type=int, default=4, help="time every k-th batch (1 = all)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slow-repeats", type=int, default=1, help="passes for the packed configurations on CPU")
    ap.add_argument("--embedding", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-slow", action="store_true", help="skip the packed configurations on CPU")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--crossover", action="store_true",
                    help="only time padded_exact vs padded_static over padding densities (synthetic batches)")
    args = ap.parse_args()
    if args.crossover:
        crossover(args)
        return

    if not IMDB.exists():
        print("IMDB not found at ../shared/data/imdb/train.parquet (relative to the project root); skipping.")
        return
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    lengths = imdb_lengths(args.sample, args.seed)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
          f"device {device}; {len(lengths)} reviews, lengths median {int(np.median(lengths))} "
          f"mean {lengths.mean():.0f} max {lengths.max()}")

    results = {}
    runs = []
    for mode in ("random", "bucketed", "budget"):
        batches = make_batches(lengths, args.batch_size, mode, args.seed, args.vocab)[:: args.every]
        batches = [(ids.to(device), lens) for ids, lens in batches]
        real = sum(int(lens.sum()) for _, lens in batches)
        padded = sum(ids.numel() for ids, _ in batches)
        print(f"\n{mode}: {len(batches)} timed batches, {real} real tokens, padding efficiency {real / padded:.2f}")
        if mode == "bucketed":
            widest = max(batches, key=lambda b: int(b[1][0] - b[1][-1]))
            e_ours, e_pad = exactness(args.vocab, args.embedding, args.hidden, widest)
            print(f"  exactness vs per-sequence nn.LSTM: seqbucket max|diff| {e_ours:.1e}; padded nn.LSTM {e_pad:.1e}")
        configs = [("padded nn.LSTM (inexact)", lambda: Baseline(args.vocab, args.embedding, args.hidden, False))]
        slow = device.type == "cpu" and (args.skip_slow or mode == "budget")
        if not slow:
            configs.append(("hand-written packed", lambda: Baseline(args.vocab, args.embedding, args.hidden, True)))
        configs.append(("seqbucket auto", lambda: Ours(args.vocab, args.embedding, args.hidden, "auto")))
        for strategy in ("padded_exact", "padded_static", "packed"):
            if strategy == "packed" and slow:
                continue
            configs.append((f"seqbucket {strategy}", lambda s=strategy: Ours(args.vocab, args.embedding, args.hidden, s)))
        for name, build in configs:
            torch.manual_seed(args.seed)
            runs.append({"mode": mode, "name": name, "model": build().to(device).train(), "batches": batches,
                         "slow": device.type == "cpu" and "packed" in name})
    print(f"\ntiming {len(runs)} configurations round-robin, {args.repeats} passes each "
          f"({args.slow_repeats} for the packed ones on CPU)")
    time_interleaved(runs, args.repeats, args.slow_repeats)
    for run in runs:
        rate = statistics.median(run["rates"])
        results[f"{run['mode']}/{run['name']}"] = rate
        print(f"  {run['mode']:8s} {run['name']:28s} {rate:10.0f} tokens/s   "
              f"(passes: {', '.join(f'{r:.0f}' for r in run['rates'])})")

    print("\nratios (targets of issue 4; results in benchmarks/RESULTS.md):")
    auto_b = results["bucketed/seqbucket auto"]
    lines = [("bucketed auto / bucketed padded nn.LSTM", auto_b / results["bucketed/padded nn.LSTM (inexact)"], 0.8)]
    if "bucketed/hand-written packed" in results:
        lines.append(("bucketed auto / bucketed hand-written packed", auto_b / results["bucketed/hand-written packed"], 5.0))
    lines.append(("bucketed auto / random padded nn.LSTM", auto_b / results["random/padded nn.LSTM (inexact)"], 4.0))
    lines.append(("budget auto / random padded nn.LSTM",
                  results["budget/seqbucket auto"] / results["random/padded nn.LSTM (inexact)"], 4.0))
    lines.append(("budget auto / budget padded nn.LSTM",
                  results["budget/seqbucket auto"] / results["budget/padded nn.LSTM (inexact)"], 0.8))
    for label, value, target in lines:
        print(f"  {label:48s} {value:6.2f}x  (target >= {target}x: {'met' if value >= target else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
