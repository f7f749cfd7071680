"""GPU readiness check: the open questions of the CUDA path answered in one run.

    python benchmarks/gpu_check.py --output gpu_check.json            # on a GPU: at most ~8 minutes
    python benchmarks/gpu_check.py --device cpu --quick --output x.json  # the same code paths, < 3 minutes (CI)

Writes ``--output`` (JSON, rewritten after every section, so a run cut short keeps what it
measured) and a markdown table next to it (``.md``, for ``benchmarks/RESULTS.md``). Sections:

1. ``env``: torch, CUDA, cuDNN, the device, bf16 support.
2. ``exactness``: every encoder strategy (and the references: padded ``nn.LSTM``, which is
   inexact, and a hand-written ``pack_padded_sequence -> nn.LSTM -> pad_packed_sequence``) on a
   bucketed and a random batch, in fp32 and under bf16 / fp16 autocast (fp16 on CUDA), with cuDNN
   (and fp32 without it on CUDA), two weight scales (init + noise; x4, to stress
   ``padded_static``'s frozen-gate margin). Each row's token states and final states are compared
   with that row run alone through a float64 ``nn.LSTM`` on the CPU (max |diff|); the rounding
   floor is the same comparison for the row run alone on the device in the same precision. A
   strategy is exact when its difference is within 4x the larger of the floor and the
   hand-written pack/pad's difference (PyTorch's own exact path), plus 1e-6.
3. ``throughput``: forward+backward real tokens/s per configuration on IMDB-like bucketed
   batches (the plugin's own plan, a budget of 32 x the mean length) and random batches of 32,
   fp32 and autocast, timed round-robin (medians); then ``auto_rule``: which exact strategy wins
   on dense and on sparse batches, and a density sweep (``padded_static`` vs ``packed`` vs
   ``padded_exact`` on batches of 95% down to 45% real tokens) giving the crossover. The script
   prints the values of ``RecurrentEncoder.cuda_dense_strategy`` / ``cuda_sparse_strategy`` /
   ``cuda_static_min_density`` its measurements support.
4. ``fed``: is the GPU fed? Real tokens/s of recipe-like training (the pipeline's loader,
   pinned memory and prefetch on CUDA, the host-to-device copy, forward+backward+AdamW, accuracy
   or a CRF loss on the device) against the same steps on the same batches already on the device
   (the encoder alone), for the classifier on IMDB and a CRF tagger; also the loader alone.
5. ``budget``: the largest-budget finder (``--max-tokens auto``) on the IMDB classifier: on CUDA
   against the real memory; on the CPU against an injected out-of-memory error (a simulated cap).
6. ``ddp``: a process group (NCCL on CUDA, gloo on the CPU) started in a child process, one
   ``DistributedDataParallel`` step at world size 1, an all-reduce, and its times.
7. ``recipe``: one IMDB epoch of ``recipes/text_classification.py`` on the device (a subset with
   ``--quick``; generated data when ``../shared/data/imdb`` is absent), and the recipe with
   ``--max-tokens auto`` (on CUDA a short run; on the CPU it must refuse with one ``error:`` line
   and exit status 2).

Data: ``../shared/data/imdb`` (from the project root) when present; otherwise IMDB-like
generated lengths (lognormal, mean about 284, at most 2,850) and random token ids. The script
exits with status 1 when a section failed or a strategy that should be exact is not.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_encoders import Baseline, Ours, make_batches  # noqa: E402

from seqbucket_plugin.encoders.recurrent import RecurrentEncoder  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TOKEN = re.compile(r"\w+|[^\w\s]")
STRATEGIES = ("packed", "padded_static", "padded_exact")


# ------------------------------------------------------------------------------------------ set-up
class Budget:
    """Wall-clock guard: sections ask how much time is left and shrink their work."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precisions(device: torch.device) -> list[str]:
    out = ["fp32", "bf16"]
    if device.type == "cuda":
        out.append("fp16")
    return out


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def imdb_lengths(quick: bool) -> tuple[np.ndarray, str]:
    """Whitespace/punctuation lengths of IMDB train reviews, or IMDB-like generated lengths."""
    path = DATA / "imdb" / "train.parquet"
    n = 1_600 if quick else 25_000
    if path.exists():
        import pyarrow.parquet as pq

        texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        chosen = np.random.default_rng(0).choice(len(texts), size=min(n, len(texts)), replace=False)
        return np.array([len(TOKEN.findall(texts[i].lower())) for i in chosen], dtype=np.int64), "imdb"
    rng = np.random.default_rng(0)
    return np.clip(rng.lognormal(np.log(212), 0.75, n), 1, 2850).astype(np.int64), "generated (IMDB-like)"


# ------------------------------------------------------------------------------------------ 1. env
def section_env(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "threads": torch.get_num_threads(), "machine": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported(),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return env


# ------------------------------------------------------------------------------------------ 2. exactness
def _reference_model(ours: Ours) -> nn.LSTM:
    ref = nn.LSTM(ours.encoder.input_size, ours.encoder.hidden_size, batch_first=True, bidirectional=True)
    ref.load_state_dict({k: v for k, v in ours.encoder.state_dict().items() if not k.startswith("pooler")})
    return ref.double().eval()


def _row_errors(states, final, lens, truths) -> tuple[float, float]:
    """Max |diff| of token states and of final (h, c) against ``truths`` (each row alone)."""
    s_err = f_err = 0.0
    for i in range(len(lens)):
        n = int(lens[i])
        ref_out, (ref_h, ref_c) = truths[i]
        s_err = max(s_err, (states[i, :n].double().cpu() - ref_out[0].double().cpu()).abs().max().item())
        if final is not None:
            h, c = final
            f_err = max(f_err, (h[:, i].double().cpu() - ref_h[:, 0].double().cpu()).abs().max().item(),
                        (c[:, i].double().cpu() - ref_c[:, 0].double().cpu()).abs().max().item())
    return s_err, f_err


def section_exactness(device, quick, lengths) -> dict:
    """See the module docs (2.)."""
    vocab, emb, hidden = 2_000, (32 if quick else 128), (32 if quick else 256)
    batches = {}
    short = np.minimum(lengths[: (200 if quick else 1_600)], 600)  # long enough to matter, short enough to check
    for mode in ("budget", "random"):
        made = make_batches(short, 8 if quick else 16, mode, 0, vocab)
        widest = max(made, key=lambda b: int(b[1][0] - b[1][-1]))  # the widest spread of lengths
        batches["bucketed" if mode == "budget" else "random"] = widest
    out = {"model": f"embedding {emb}, bilstm {hidden}", "results": [], "problems": []}
    settings = [(p, True) for p in precisions(device)]
    if device.type == "cuda":
        settings.append(("fp32", False))  # cuDNN off: the native CUDA kernels
    for scale in (1.0, 4.0):
        torch.manual_seed(0)
        ours = Ours(vocab, emb, hidden, "auto").eval()
        with torch.no_grad():
            for p in ours.encoder.parameters():
                p.add_(0.1 * torch.randn_like(p)).mul_(scale)
        truth = functools.partial(_truth, _reference_model(ours),
                                  nn.Embedding.from_pretrained(ours.embedding.weight.detach().double()))
        truths = {mode: [truth(ids[i:i + 1, :int(lens[i])]) for i in range(len(lens))]
                  for mode, (ids, lens) in batches.items()}
        ours = ours.to(device)
        base = Baseline(vocab, emb, hidden, packed=False).to(device).eval()
        base.embedding.load_state_dict(ours.embedding.state_dict())
        base.lstm.load_state_dict({k: v for k, v in ours.encoder.state_dict().items() if not k.startswith("pooler")})
        packed_base = Baseline(vocab, emb, hidden, packed=True).to(device).eval()
        packed_base.load_state_dict(base.state_dict())
        for precision, cudnn in settings:
            flags = torch.backends.cudnn.flags(enabled=cudnn) if device.type == "cuda" else contextlib.nullcontext()
            with flags, torch.no_grad():
                for mode, (ids, lens) in batches.items():
                    ids_d = ids.to(device)
                    alone = functools.partial(_alone, base, device, precision)
                    floor = _row_errors(*_alone_batch(alone, ids, lens), lens, truths[mode])
                    rows = {"padded nn.LSTM (inexact)": _run_base(base, ids_d, lens, device, precision),
                            "hand-written pack/pad": _run_base(packed_base, ids_d, lens, device, precision)}
                    for strategy in ("auto", *STRATEGIES):
                        with autocast(device, precision):
                            enc_out = ours.encoder(ours.embedding(ids_d), lens, strategy=strategy)
                        h, c = enc_out.final
                        rows[f"seqbucket {strategy}"] = (enc_out.states.float(), (h.float(), c.float()))
                    chosen = ours.encoder.choose_strategy(None, ours.embedding(ids_d), lens)
                    errors = {name: _row_errors(states, final, lens, truths[mode]) for name, (states, final)
                              in rows.items()}
                    # rounding yardsticks: the row alone, and PyTorch's own exact path (pack/pad)
                    yardstick = max(*floor, *errors["hand-written pack/pad"])
                    for name, (s_err, f_err) in errors.items():
                        limit = 4 * yardstick + 1e-6
                        exact = max(s_err, f_err) <= limit
                        record = {"weights": f"x{scale:g}", "precision": precision, "cudnn": cudnn, "batch": mode,
                                  "config": name, "states_max_diff": s_err, "final_max_diff": f_err,
                                  "floor": max(floor), "limit": limit, "exact": exact}
                        if name == "seqbucket auto":
                            record["auto_chose"] = chosen
                        out["results"].append(record)
                        if name.startswith("seqbucket") and not exact:
                            out["problems"].append(f"{name} not exact ({precision}, cuDNN {cudnn}, {mode}, "
                                                   f"weights x{scale:g}): {max(s_err, f_err):.2e} > {limit:.2e}")
    return out


def _truth(ref64: nn.LSTM, emb64: nn.Embedding, row_ids: torch.Tensor):
    """One row alone through the float64 CPU reference."""
    with torch.no_grad():
        return ref64(emb64(row_ids.cpu()))


def _alone(base: Baseline, device: torch.device, precision: str, row_ids: torch.Tensor):
    """The rounding floor: one row alone (no padding) on the device, in the same precision."""
    with autocast(device, precision):
        o, (h, c) = base.lstm(base.embedding(row_ids.to(device)))
    return o.float(), (h.float(), c.float())


def _alone_batch(alone, ids, lens):
    """Per-row results of ``alone`` put into one padded (B, T, 2H) tensor and (h, c) stacks."""
    outs, hs, cs = [], [], []
    for i in range(len(lens)):
        n = int(lens[i])
        o, (h, c) = alone(ids[i:i + 1, :n])
        outs.append(nn.functional.pad(o[0].cpu(), (0, 0, 0, ids.size(1) - n)))
        hs.append(h[:, 0].cpu())
        cs.append(c[:, 0].cpu())
    return torch.stack(outs), (torch.stack(hs, 1), torch.stack(cs, 1))


def _run_base(model: Baseline, ids, lens, device, precision):
    with autocast(device, precision):
        x = model.embedding(ids)
        if model.packed:
            p = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=True)
            y, (h, c) = model.lstm(p)
            y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=ids.size(1))
        else:
            y, (h, c) = model.lstm(x)
    return y.float(), (h.float(), c.float())


# ------------------------------------------------------------------------------------------ 3. throughput
def _time_pass(model, batches, device, precision) -> float:
    tokens = sum(int(lens.sum()) for _, lens in batches)
    sync(device)
    start = time.perf_counter()
    for ids, lens in batches:
        model.zero_grad(set_to_none=True)
        with autocast(device, precision):
            y = model(ids, lens)
        y.float().sum().backward()
    sync(device)
    return tokens / (time.perf_counter() - start)


def section_throughput(device, quick, lengths, budget: Budget) -> dict:
    """See the module docs (3.)."""
    vocab = 20_000
    sizes = [(32, 32)] if quick else [(128, 128), (256, 512)]
    count = 2 if quick else 24
    repeats = 2 if quick else 3
    if quick:  # packed runs slowly on a CPU: short rows keep the quick mode short
        lengths = np.minimum(lengths, 160)
    out = {"results": [], "batches": {}}
    runs = []
    for emb, hidden in sizes:
        for mode in ("budget", "random"):
            made = make_batches(lengths, 32, mode, 0, vocab)
            step = max(1, len(made) // count)
            chosen = [(ids.to(device), lens) for ids, lens in made[::step][:count]]
            label = "bucketed" if mode == "budget" else "random"
            real = sum(int(lens.sum()) for _, lens in chosen)
            out["batches"][label] = {"count": len(chosen), "real_tokens": real,
                                     "density": real / sum(ids.numel() for ids, _ in chosen)}
            configs = [("padded nn.LSTM (inexact)", lambda e=emb, h=hidden: Baseline(vocab, e, h, False)),
                       ("hand-written pack/pad", lambda e=emb, h=hidden: Baseline(vocab, e, h, True))]
            configs += [(f"seqbucket {s}", lambda s=s, e=emb, h=hidden: Ours(vocab, e, h, s))
                        for s in ("auto", *STRATEGIES)]
            for precision in precisions(device):
                for name, build in configs:
                    torch.manual_seed(0)
                    runs.append({"size": f"{emb}/{hidden}", "batch": label, "precision": precision, "config": name,
                                 "model": build().to(device).train(), "batches": chosen, "rates": []})
    for run in runs:  # warm-up (cuDNN plans, autocast caches)
        _time_pass(run["model"], run["batches"][:2], device, run["precision"])
    skipped = 0
    for r in range(repeats):
        if r and budget.left() < 0.45 * budget.seconds:
            break  # keep time for the sweep, the fed check and the recipe runs
        for run in runs:
            if budget.left() < 0.4 * budget.seconds and not (quick and r == 0):
                # even the first pass (the later sections matter too), except in --quick mode, whose one
                # small pass per configuration is the check that this code runs
                skipped += 1
                continue
            run["rates"].append(_time_pass(run["model"], run["batches"], device, run["precision"]))
    for run in runs:
        if run["rates"]:
            out["results"].append({k: run[k] for k in ("size", "batch", "precision", "config")}
                                  | {"tokens_per_s": statistics.median(run["rates"]), "passes": run["rates"]})
        del run["model"]
    out["passes_skipped_for_time"] = skipped
    return out


def auto_rule(throughput: dict, sweep: dict, device: torch.device) -> dict:
    """Which exact strategy the measurements support on dense and sparse batches."""
    rule = {"current": {"cuda_dense_strategy": RecurrentEncoder.cuda_dense_strategy,
                        "cuda_sparse_strategy": RecurrentEncoder.cuda_sparse_strategy,
                        "cuda_static_min_density": RecurrentEncoder.cuda_static_min_density,
                        "measured": RecurrentEncoder.CUDA_RULE_MEASURED},
            "fastest": {}}
    for (size, batch, precision) in sorted({(r["size"], r["batch"], r["precision"]) for r in throughput["results"]}):
        rates = {r["config"].split(" ", 1)[1]: r["tokens_per_s"] for r in throughput["results"]
                 if (r["size"], r["batch"], r["precision"]) == (size, batch, precision)
                 and r["config"].split(" ", 1)[1] in STRATEGIES and r["config"].startswith("seqbucket")}
        if not rates:
            continue
        best = max(rates, key=rates.get)
        rule["fastest"][f"{size} {batch} {precision}"] = {"strategy": best, "tokens_per_s": rates}
    votes = {"bucketed": {}, "random": {}}
    for key, value in rule["fastest"].items():
        batch = key.split(" ")[1]
        votes[batch][value["strategy"]] = votes[batch].get(value["strategy"], 0) + 1
    dense = max(votes["bucketed"], key=votes["bucketed"].get) if votes["bucketed"] else None
    sparse = max(votes["random"], key=votes["random"].get) if votes["random"] else None
    threshold = sweep.get("crossover_density") if dense == "padded_static" and sparse != "padded_static" else None
    rule["supported"] = {"cuda_dense_strategy": dense, "cuda_sparse_strategy": sparse,
                         "cuda_static_min_density": threshold if threshold is not None else
                         RecurrentEncoder.cuda_static_min_density, "votes": votes}
    rule["device_measured"] = str(device)
    return rule


def section_sweep(device, quick, budget: Budget) -> dict:
    """padded_static / packed / padded_exact over padding densities (synthetic batches)."""
    emb, hidden = (32, 32) if quick else (128, 256)
    enc = RecurrentEncoder(emb, hidden, mode="lstm", bidirectional=True).to(device).train()
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 40)] if quick else [(64, 30), (32, 300), (64, 512)]
    targets = (0.95, 0.75, 0.55) if quick else (0.95, 0.85, 0.75, 0.65, 0.55, 0.45)
    repeats = 2 if quick else 5
    rows_out = []
    for rows, T in shapes:
        for target in targets:
            u = torch.rand(rows, generator=g)
            lens = (T * u ** ((1 - target) / target)).ceil().long().clamp(1, T)
            lens[0] = T
            lens = lens.sort(descending=True).values
            x = torch.randn(rows, T, emb, generator=g).to(device).requires_grad_(True)
            times = {s: [] for s in STRATEGIES}
            for r in range(repeats + 1):
                for strategy, ts in times.items():
                    sync(device)
                    start = time.perf_counter()
                    enc(x, lens, strategy=strategy).states.sum().backward()
                    sync(device)
                    if r:
                        ts.append(time.perf_counter() - start)
            med = {s: statistics.median(t) for s, t in times.items()}
            rows_out.append({"rows": rows, "T": T, "density": int(lens.sum()) / (rows * T),
                             "ms": {s: v * 1e3 for s, v in med.items()},
                             "fastest": min(med, key=med.get)})
        if budget.left() < 0.45 * budget.seconds:
            break
    # the crossover: per shape, the lowest density down to which padded_static is the fastest at
    # every density measured above it; the most conservative (highest) shape decides
    crossover, everywhere = None, True
    for shape in sorted({(r["rows"], r["T"]) for r in rows_out}):
        pts = sorted((r for r in rows_out if (r["rows"], r["T"]) == shape), key=lambda r: -r["density"])
        low = None
        for r in pts:
            if r["fastest"] != "padded_static":
                everywhere = False
                break
            low = r["density"]
        if low is None:
            crossover, everywhere = 1.0, False  # padded_static loses even on the densest batch of a shape
            break
        crossover = low if crossover is None else max(crossover, low)
    return {"model": f"bilstm {emb}->{hidden}, forward+backward, fp32", "results": rows_out,
            "crossover_density": None if crossover is None else math.floor(crossover * 20) / 20,
            "static_fastest_everywhere": everywhere}


# ------------------------------------------------------------------------------------------ 4. fed
def _imdb_dataset(quick: bool, lengths: np.ndarray):
    """Tokenized IMDB train (word level), or generated ids with IMDB-like lengths."""
    import datasets

    from seqbucket_plugin.datapipes import TextTokenizer, load_classification, tokenize_dataset

    path = DATA / "imdb" / "train.parquet"
    if path.exists():
        train = load_classification(str(path), text_column="text", label_column="label")
        if quick:
            train = train.select(range(0, len(train), max(1, len(train) // 1_500)))
        tokenizer = TextTokenizer.train(train, kind="word", vocab_size=30_000, min_frequency=2)
        ds = tokenize_dataset(train, tokenizer, max_length=512, truncation="head+tail", label_column="label")
        return ds, tokenizer.vocab_size, tokenizer.pad_id, "imdb"
    rng = np.random.default_rng(1)
    lens = np.minimum(lengths, 512)
    ds = datasets.Dataset.from_dict({"input_ids": [rng.integers(2, 30_000, n).tolist() for n in lens],
                                     "length": lens.tolist(), "label": rng.integers(0, 2, lens.size).tolist()})
    return ds, 30_000, 0, "generated"


def _tagging_dataset(quick: bool):
    import datasets

    rng = np.random.default_rng(2)
    n = 600 if quick else 12_000
    lens = np.clip(rng.lognormal(np.log(15), 0.6, n), 1, 160).astype(np.int64)  # UD-like sentences
    return datasets.Dataset.from_dict({"input_ids": [rng.integers(2, 20_000, k).tolist() for k in lens],
                                       "length": lens.tolist(),
                                       "labels": [rng.integers(0, 9, k).tolist() for k in lens]})


def _fed_task(device, precision, ds, pad, max_tokens, build, limit, repeats, budget: Budget) -> dict:
    """Recipe-like loop vs encoder alone vs loader alone for one task (round-robin medians)."""
    from seqbucket_plugin.datapipes import Pipe

    pipe = (Pipe.from_hf(ds).bucket_batch(max_tokens=max_tokens, max_batch_size=64, oversize="truncate", seed=0)
            .pack(pad_id=pad))
    if device.type == "cuda":
        pipe = pipe.prefetch(4).pin_memory()
    loader = pipe.loader()
    first_epoch = loader.state_dict()  # every pass restarts here: the same batches in every loop
    torch.manual_seed(0)
    model = build().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    correct = torch.zeros((), device=device, dtype=torch.long)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            result = model(batch)
        result.loss.backward()
        optimizer.step()
        logits = getattr(result, "logits", None)
        if logits is not None:  # the metric stays on the device (no per-step synchronisation)
            correct.add_((logits.argmax(-1) == batch.labels).sum())

    def timed(batches, train: bool) -> float:
        if batches is loader:
            loader.load_state_dict(first_epoch)
        tokens = 0
        sync(device)
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            if i == limit:
                break
            batch = batch.to(device, non_blocking=True)
            tokens += batch.num_tokens
            if train:
                step(batch)
        sync(device)
        return tokens / (time.perf_counter() - start)

    loader.load_state_dict(first_epoch)
    resident = [batch.to(device) for _, batch in zip(range(limit), loader)]
    rates = {"recipe-like loop": [], "encoder alone (batches on the device)": [], "loader + copy alone": []}
    timed(resident[:4], True)  # warm-up
    for _ in range(repeats):
        rates["recipe-like loop"].append(timed(loader, True))
        rates["encoder alone (batches on the device)"].append(timed(resident, True))  # .to() is a no-op there
        rates["loader + copy alone"].append(timed(loader, False))
        if budget.left() < 0.35 * budget.seconds:
            break
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["recipe-like loop"] / med["encoder alone (batches on the device)"]
    return {"batches": len(resident), "max_tokens": max_tokens, "tokens_per_s": med, "passes": rates,
            "fed_ratio": ratio, "fed": ratio >= 0.9}


def section_fed(device, quick, lengths, budget: Budget) -> dict:
    """See the module docs (4.)."""
    from seqbucket_plugin.heads import SequenceClassifier, SequenceTagger

    precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    out = {"precision": precision, "results": []}
    cls_ds, vocab, pad_id, source = _imdb_dataset(quick, lengths)
    tag_ds = _tagging_dataset(quick)
    out["data"] = source
    limit = 8 if quick else 400
    dim = 16 if quick else 128  # the recipes' default model on the device; a tiny one for the quick CPU mode
    tasks = {
        f"classification ({out['data']}, BiLSTM {dim}, accuracy on the device)": (
            cls_ds, pad_id, int(32 * round(float(np.mean(cls_ds["length"])))),
            lambda: SequenceClassifier(vocab, 2, embedding_dim=dim, hidden_size=dim, encoder="bilstm",
                                       pooling="last+max", padding_idx=pad_id)),
        f"tagging (UD-like lengths, BiLSTM {dim}, CRF loss on the device)": (
            tag_ds, 0, int(32 * round(float(np.mean(tag_ds["length"])))),
            lambda: SequenceTagger(20_000, 9, embedding_dim=dim, hidden_size=dim, decoder="crf", padding_idx=0)),
    }
    for name, (ds, pad, max_tokens, build) in tasks.items():
        out["results"].append({"task": name, **_fed_task(device, precision, ds, pad, max_tokens, build, limit,
                                                          2 if quick else 3, budget)})
    return out


# ------------------------------------------------------------------------------------------ 5. budget
def section_budget(device, quick, lengths) -> dict:
    """See the module docs (5.)."""
    from seqbucket_plugin.datapipes import collate_packed
    from seqbucket_plugin.heads import SequenceClassifier
    from seqbucket_plugin.training import budget
    from seqbucket_plugin.training.classification import classification_step

    longest = 64 if quick else 512
    vocab = 30_000

    def make_batch(rows):
        ids = np.random.default_rng(rows).integers(2, vocab, longest).tolist()  # one row repeated: fast to build
        return collate_packed([{"input_ids": ids, "length": longest, "label": i % 2} for i in range(rows)])

    def build():
        return SequenceClassifier(vocab, 2, embedding_dim=128 if not quick else 16,
                                  hidden_size=128 if not quick else 16, encoder="bilstm", pooling="last+max")

    step = classification_step(autocast=budget.amp_autocast(True, device))
    lines: list[str] = []
    start = time.perf_counter()
    if device.type == "cuda":
        result = budget.find_max_tokens(build, make_batch, step, device, longest=longest, limit=2**24,
                                        log=lines.append)
        how = "real CUDA memory (cap 90% of the device, peak = max_memory_reserved)"
    else:
        simulated = 4_096

        def step_with_cap(model, batch, backward):
            if batch.input_ids.numel() > simulated:
                raise torch.OutOfMemoryError(f"simulated: more than {simulated} tokens")
            return step(model, batch, backward)

        class NoProbe:
            cap = None

            def start(self):
                pass

            def peak(self):
                return None

        result = budget.find_max_tokens(build, make_batch, step_with_cap, device, longest=longest, probe=NoProbe(),
                                        log=lines.append)
        how = f"CPU: an out-of-memory error injected above {simulated} tokens (the code path, not a measurement)"
    return {"how": how, "seconds": time.perf_counter() - start, "result": result.as_dict(), "log": lines}


# ------------------------------------------------------------------------------------------ 6. ddp
def ddp_child(device_name: str) -> None:
    """Run in a child process: a world-size-1 group, one DDP step, an all-reduce; prints JSON."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    kwargs = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, **kwargs)
    t_init = time.perf_counter() - t0
    model = Ours(1_000, 32, 32, "auto").to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
    ids = torch.randint(1, 1_000, (4, 20), device=device)
    lens = torch.tensor([20, 15, 9, 3])
    t1 = time.perf_counter()
    ddp(ids, lens).sum().backward()
    torch.optim.SGD(ddp.parameters(), lr=0.1).step()
    t = torch.ones(3, device=device)
    dist.all_reduce(t)
    sync(device)
    t_step = time.perf_counter() - t1
    ok = bool(torch.equal(t.cpu(), torch.ones(3))) and all(p.grad is not None for p in model.parameters())
    dist.destroy_process_group()
    print("DDP_RESULT " + json.dumps({"backend": backend, "init_s": t_init, "step_s": t_step, "ok": ok}))


def section_ddp(device) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--ddp-child", str(device)], capture_output=True, text=True,
                          timeout=180, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("DDP_RESULT "):
            result = json.loads(line[len("DDP_RESULT "):])
            result["returncode"] = proc.returncode
            return result
    raise RuntimeError(f"the DDP child printed no result (exit {proc.returncode}): {proc.stderr[-2000:]}")


# ------------------------------------------------------------------------------------------ 7. recipe
def _recipe(argv: list[str], timeout: float) -> tuple[int, float, str, str]:
    """Run the classification recipe in a child process: (exit status, seconds, stdout, stderr);
    status 124 when it ran past ``timeout`` (what it printed so far is kept)."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "text_classification.py"), *argv],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as err:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        return 124, time.perf_counter() - start, text(err.stdout), text(err.stderr) + f"\n(timed out after {timeout:.0f} s)"
    return proc.returncode, time.perf_counter() - start, proc.stdout, proc.stderr


def section_recipe(device, quick, budget: Budget, workdir: Path) -> dict:
    """See the module docs (7.)."""
    out = {}
    imdb = DATA / "imdb"
    files: list[str] = []
    if imdb.is_dir():
        if quick:
            import pyarrow.parquet as pq

            for split, n in (("train", 1_200), ("test", 300)):
                table = pq.read_table(imdb / f"{split}.parquet", columns=["text", "label"])
                pq.write_table(table.take(np.linspace(0, table.num_rows - 1, n).astype(np.int64)),
                               workdir / f"{split}.parquet")
            files = ["--train-file", str(workdir / "train.parquet"), "--test-file", str(workdir / "test.parquet")]
        else:
            files = ["--train-file", str(imdb / "train.parquet"), "--test-file", str(imdb / "test.parquet")]
        out["data"] = "imdb" + (" (1,200 / 300 reviews)" if quick else "")
    else:
        out["data"] = "generated (no ../shared/data/imdb)"
    common = [*files, "--device", device.type, "--no-progress", "--epochs", "1"]
    if quick:
        common += ["--embedding-dim", "16", "--hidden-size", "16", "--max-length", "128"]
    epoch = ["--max-steps", "10"] if quick else []  # --quick checks that the recipe runs, on a loaded CI machine too
    rc, wall, stdout, stderr = _recipe([*common, *epoch, "--output-dir", str(workdir / "epoch")],
                                       timeout=max(60.0, budget.left() - 30))
    summary_file = workdir / "epoch" / "run_summary.json"
    metrics_file = workdir / "epoch" / "metrics.json"
    out["epoch"] = {"returncode": rc, "wall_s": wall, "stderr_tail": stderr[-1500:] if rc else "",
                    "summary": json.loads(summary_file.read_text()) if summary_file.exists() else None,
                    "metrics": json.loads(metrics_file.read_text()) if metrics_file.exists() else None}
    auto = [*common, "--max-tokens", "auto", "--max-steps", "20", "--eval-every", "20",
            "--output-dir", str(workdir / "auto")]
    rc, wall, stdout, stderr = _recipe(auto, timeout=max(45.0, budget.left()))
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    found = None
    config = workdir / "auto" / "config.json"
    if config.exists():
        saved = json.loads(config.read_text())
        found = {"max_tokens": saved.get("max_tokens"), "why": saved.get("_chosen", {}).get("max_tokens")}
    expected = 0 if device.type == "cuda" else 2
    out["max_tokens_auto"] = {"returncode": rc, "expected_returncode": expected, "wall_s": wall,
                              "error_lines": lines, "found": found,
                              "ok": rc == expected and (device.type == "cuda" or len(lines) == 1),
                              "stderr_tail": stderr[-1500:] if rc != expected else ""}
    return out


# ------------------------------------------------------------------------------------------ report
def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['env'].get('name', report['env']['device'])}, torch {report['env']['torch']}"
             f"{', quick' if report['quick'] else ''})", ""]
    thr = report.get("throughput")
    if isinstance(thr, dict) and thr.get("results"):
        lines += ["## Forward+backward real tokens/s (medians, round-robin)", "",
                  "| model | batches | precision | " + " | ".join(
                      ["padded nn.LSTM (inexact)", "hand-written pack/pad", *(f"seqbucket {s}" for s in
                                                                              ("auto", *STRATEGIES))]) + " |",
                  "|---|---|---|" + "---:|" * 6]
        keys = sorted({(r["size"], r["batch"], r["precision"]) for r in thr["results"]})
        for key in keys:
            rates = {r["config"]: r["tokens_per_s"] for r in thr["results"] if (r["size"], r["batch"], r["precision"]) == key}
            cells = [f"{rates.get(c, float('nan')):,.0f}" for c in
                     ["padded nn.LSTM (inexact)", "hand-written pack/pad", *(f"seqbucket {s}" for s in ("auto", *STRATEGIES))]]
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
        lines.append("")
    rule = report.get("auto_rule")
    if isinstance(rule, dict) and "supported" in rule:
        sup = rule["supported"]
        lines += ["## `auto` on this device", "",
                  f"Supported by these measurements: `cuda_dense_strategy = {sup['cuda_dense_strategy']!r}`, "
                  f"`cuda_sparse_strategy = {sup['cuda_sparse_strategy']!r}`, "
                  f"`cuda_static_min_density = {sup['cuda_static_min_density']}` (now: "
                  f"{rule['current']['cuda_dense_strategy']!r} / {rule['current']['cuda_sparse_strategy']!r}, "
                  f"measured: {rule['current']['measured']}).", ""]
    sweep = report.get("sweep")
    if isinstance(sweep, dict) and sweep.get("results"):
        lines += ["| rows x T | density | " + " | ".join(f"{s} ms" for s in STRATEGIES) + " | fastest |",
                  "|---|---:|" + "---:|" * 3 + "---|"]
        for r in sweep["results"]:
            lines.append(f"| {r['rows']} x {r['T']} | {r['density']:.2f} | "
                         + " | ".join(f"{r['ms'][s]:.2f}" for s in STRATEGIES) + f" | {r['fastest']} |")
        lines += ["", f"padded_static is the fastest from density {sweep['crossover_density']} up"
                  + (" (at every density measured)" if sweep.get("static_fastest_everywhere") else ""), ""]
    exact = report.get("exactness")
    if isinstance(exact, dict) and exact.get("results"):
        lines += ["## Exactness: max |diff| against each row alone (float64 reference)", "",
                  "| weights | precision | cuDNN | batch | config | states | final (h, c) | floor | exact |",
                  "|---|---|---|---|---|---:|---:|---:|---|"]
        for r in exact["results"]:
            lines.append(f"| {r['weights']} | {r['precision']} | {r['cudnn']} | {r['batch']} | {r['config']} | "
                         f"{r['states_max_diff']:.1e} | {r['final_max_diff']:.1e} | {r['floor']:.1e} | "
                         f"{'yes' if r['exact'] else 'NO'} |")
        lines.append("")
    fed = report.get("fed")
    if isinstance(fed, dict) and fed.get("results"):
        lines += [f"## Is the device fed? ({fed['precision']}, real tokens/s, medians)", "",
                  "| task | recipe-like loop | encoder alone | loader + copy alone | ratio | fed |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in fed["results"]:
            t = r["tokens_per_s"]
            lines.append(f"| {r['task']} | {t['recipe-like loop']:,.0f} | {t['encoder alone (batches on the device)']:,.0f} "
                         f"| {t['loader + copy alone']:,.0f} | {r['fed_ratio']:.2f} | {'yes' if r['fed'] else 'NO'} |")
        lines.append("")
    other = []
    b = report.get("budget")
    if isinstance(b, dict) and "result" in b:
        other.append(f"* Largest budget ({b['how']}): {b['result']['summary']} in {b['seconds']:.1f} s")
    d = report.get("ddp")
    if isinstance(d, dict) and "backend" in d:
        other.append(f"* DDP, world size 1: {d['backend']} group started in {d['init_s']:.2f} s, one step in "
                     f"{d['step_s']:.2f} s, {'ok' if d['ok'] else 'FAILED'}")
    rec = report.get("recipe")
    if isinstance(rec, dict) and "epoch" in rec:
        s = rec["epoch"]["summary"] or {}
        m = rec["epoch"]["metrics"] or {}
        other.append(f"* Recipe epoch ({rec['data']}): exit {rec['epoch']['returncode']}, {rec['epoch']['wall_s']:.0f} s, "
                     f"{s.get('train_tokens_per_s') or 0:,.0f} training tokens/s, test accuracy "
                     f"{m.get('test_accuracy', float('nan')):.4f}")
        a = rec["max_tokens_auto"]
        other.append(f"* Recipe with `--max-tokens auto`: exit {a['returncode']} (expected {a['expected_returncode']}), "
                     f"{'; '.join(a['error_lines']) or (a['found'] or {}).get('why', '')}")
    if other:
        lines += ["## Other checks", "", *other, ""]
    if report["problems"]:
        lines += ["## Problems", "", *(f"* {p}" for p in report["problems"]), ""]
    lines.append(f"Total {report['wall_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="small models and few batches: the same code paths, < 3 min")
    ap.add_argument("--output", type=Path, default=Path("gpu_check.json"), help="the JSON report (.md next to it)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds the sections may take (default 420, or 150 with --quick); later sections shrink")
    ap.add_argument("--ddp-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ddp_child:
        ddp_child(args.ddp_child)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available (use --device cpu for the CPU check)",
              file=sys.stderr)
        return 2
    budget = Budget(args.time_limit or (150.0 if args.quick else 420.0))
    report: dict = {"quick": args.quick, "problems": [], "sections_s": {}}
    md_path = args.output.with_suffix(".md")

    def save():
        report["wall_s"] = budget.elapsed()
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
        md_path.write_text(markdown(report))

    def run(name, fn, *fn_args):
        start = time.perf_counter()
        print(f"[{budget.elapsed():6.1f} s] {name} ...", flush=True)
        try:
            report[name] = fn(*fn_args)
        except Exception as err:  # a failed section is reported and the others still run
            report[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
            report["problems"].append(f"{name}: {type(err).__name__}: {err}")
        report["sections_s"][name] = time.perf_counter() - start
        save()

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    lengths, source = imdb_lengths(args.quick)
    report["lengths"] = {"source": source, "count": int(lengths.size), "mean": float(lengths.mean()),
                         "max": int(lengths.max())}
    run("env", section_env, device)
    run("exactness", section_exactness, device, args.quick, lengths)
    if isinstance(report["exactness"], dict):
        report["problems"] += report["exactness"].get("problems", [])
    run("ddp", section_ddp, device)
    if isinstance(report["ddp"], dict) and report["ddp"].get("ok") is False:
        report["problems"].append("ddp: the step or the all-reduce failed")
    run("budget", section_budget, device, args.quick, lengths)
    run("throughput", section_throughput, device, args.quick, lengths, budget)
    run("sweep", section_sweep, device, args.quick, budget)
    if "results" in report.get("throughput", {}) and "results" in report.get("sweep", {}):
        report["auto_rule"] = auto_rule(report["throughput"], report["sweep"], device)
        sup = report["auto_rule"]["supported"]
        print(f"AUTO RULE SUPPORTED BY THESE MEASUREMENTS ({device.type}): "
              f"RecurrentEncoder.cuda_dense_strategy = {sup['cuda_dense_strategy']!r}, "
              f"cuda_sparse_strategy = {sup['cuda_sparse_strategy']!r}, "
              f"cuda_static_min_density = {sup['cuda_static_min_density']}"
              + ("" if device.type == "cuda" else " (measured on the CPU: not a CUDA rule)"), flush=True)
    run("fed", section_fed, device, args.quick, lengths, budget)
    with tempfile.TemporaryDirectory() as tmp:
        run("recipe", section_recipe, device, args.quick, budget, Path(tmp))
    rec = report.get("recipe", {})
    if isinstance(rec, dict) and "epoch" in rec:
        if rec["epoch"]["returncode"] != 0:
            report["problems"].append(f"recipe epoch exited {rec['epoch']['returncode']}")
        if not rec["max_tokens_auto"]["ok"]:
            report["problems"].append(f"recipe --max-tokens auto: exit {rec['max_tokens_auto']['returncode']}, "
                                      f"expected {rec['max_tokens_auto']['expected_returncode']}")
    save()
    print(markdown(report))
    print(f"wrote {args.output} and {md_path} ({budget.elapsed():.0f} s)")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
