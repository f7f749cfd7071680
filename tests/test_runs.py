"""Trained runs as Python objects (seqbucket_plugin.load_run): predictions in input order from
length-bucketed batches, ``--predict`` as a thin use of it, untrusted run directories (every
malicious or broken one refused with one ``error:`` line, nothing written), no silent overwrite,
and the ONNX export. Runs are trained for a few steps on tiny generated data."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import load_recipe

import seqbucket_plugin
from seqbucket_plugin import RunDirectoryError, load_run
from seqbucket_plugin.datapipes import Pipe
from seqbucket_plugin.training import write_classification_data, write_tagging_data
from seqbucket_plugin.training.cli import run_main

cls_recipe = load_recipe("text_classification", "runs")
tag_recipe = load_recipe("tagging", "runs")

SMALL = ["--embedding-dim", "16", "--hidden-size", "16", "--num-layers", "1", "--max-steps", "3",
         "--no-progress", "--threads", "1"]
TAG_WINDOW = 6  # the tagging run's --max-length: longer sentences are tagged in windows


def _snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns,
                                            hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    data = write_classification_data(root / "data", n_train=200, n_dev=40, n_test=40)
    out = root / "run"
    cls_recipe.main(["--train-file", data["train"], "--dev-file", data["dev"], *SMALL, "--output-dir", str(out)])
    return out


@pytest.fixture(scope="module")
def tag_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tag")
    data = write_tagging_data(root / "data", n_train=100, n_dev=20, n_test=20)
    out = root / "run"
    tag_recipe.main(["--train-file", data["train"], "--dev-file", data["dev"], *SMALL, "--char-dim", "8",
                     "--char-filters", "8", "--max-length", str(TAG_WINDOW), "--output-dir", str(out)])
    return out


def _texts(n: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "a superb moving film awful dull boring plot great acting the and of".split()
    lengths = [rng.randint(1, 30) for _ in range(n)]  # shuffled lengths: batches come out shortest first
    return [" ".join(rng.choice(words) for _ in range(k)) for k in lengths]


# ------------------------------------------------------------------------------------------ order
@pytest.mark.parametrize("streaming", [False, True])
def test_batches_carry_dataset_positions(streaming):
    lengths = [5, 1, 3, 8, 2, 7, 4, 6, 1, 9]
    ds = datasets.Dataset.from_dict({"input_ids": [[i + 1] * n for i, n in enumerate(lengths)], "length": lengths})
    source = ds.to_iterable_dataset() if streaming else ds
    seen = []
    batches = list(Pipe.from_hf(source).bucket_batch(batch_size=3, shuffle=False, buffer_size=4).pack())
    for batch in batches:
        for row, position in enumerate(batch.positions.tolist()):
            assert batch.input_ids[row, 0].item() == position + 1  # the row is dataset example `position`
            assert batch.lengths[row].item() == lengths[position]
        seen += batch.positions.tolist()
        # unsorted_indices restore the batch's own pre-sort order, which is not the dataset's
        restored = batch.restore_order(batch.positions)
        assert sorted(restored.tolist()) == sorted(batch.positions.tolist())
    assert sorted(seen) == list(range(len(lengths)))
    assert seen != list(range(len(lengths)))  # shortest first even with shuffle=False: order needs positions


# ------------------------------------------------------------------------------------------ API
def test_classification_predict_keeps_input_order(cls_run):
    run = load_run(cls_run)
    assert isinstance(run, seqbucket_plugin.runs.ClassificationPredictor) and not run.model.training
    labels = json.loads((cls_run / "labels.json").read_text())
    texts = _texts()
    preds = run.predict(texts)
    assert len(preds) == len(texts)
    for text, pred in zip(texts, preds):
        alone = run.predict([text])[0]  # the same text alone: its own batch
        assert alone["label"] == pred["label"]
        assert set(pred["probabilities"]) == set(labels)
        for name, p in pred["probabilities"].items():
            assert abs(p - alone["probabilities"][name]) < 1e-5
        assert abs(sum(pred["probabilities"].values()) - 1) < 1e-5
        assert pred["probability"] == max(pred["probabilities"].values())
    assert run.predict([]) == []
    with pytest.raises(TypeError):
        run.predict("one string")


def test_tagging_predict_windows_and_order(tag_run):
    run = load_run(tag_run)
    assert isinstance(run, seqbucket_plugin.runs.TaggingPredictor) and run.window == TAG_WINDOW
    rng = random.Random(1)
    words = "he met Kalomi Renta in Tosavi City . and then".split()
    sentences = [[rng.choice(words) for _ in range(rng.randint(1, 3 * TAG_WINDOW))] for _ in range(25)]
    sentences.append([rng.choice(words) for _ in range(256)])  # far past the trained max length
    preds = run.predict(sentences)
    for words_, pred in zip(sentences, preds):
        assert pred["tokens"] == words_ and len(pred["tags"]) == len(words_)  # one tag per token, never cut
        assert set(pred["tags"]) <= set(run.labels)
        # windows of max_length tokens, each tagged as if alone
        windows = [words_[i:i + TAG_WINDOW] for i in range(0, len(words_), TAG_WINDOW)]
        assert [t for w in run.predict(windows) for t in w["tags"]] == pred["tags"]
    assert run.predict([" ".join(sentences[0])])[0]["tags"] == preds[0]["tags"]  # a string is split on spaces
    empty = run.predict([[], ["x", "", " "]])
    assert empty[0] == {"tokens": [], "tags": []} and len(empty[1]["tags"]) == 3
    assert run.predict([]) == []


def test_cli_predict_equals_api(cls_run, tmp_path, monkeypatch):
    run = load_run(cls_run)
    texts = _texts(12, seed=3)
    expected = run.predict(texts)
    files = {"plain.txt": "\n".join(texts) + "\n",
             "in.jsonl": "".join(json.dumps({"review": t, "id": i}) + "\n" for i, t in enumerate(texts)),
             "in.csv": "id,review\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts))}
    for name, content in files.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        out = tmp_path / f"{name}.preds"
        cls_recipe.main(["--predict", str(path), "--text-column", "review", "--output-dir", str(cls_run),
                         "--predictions", str(out)])
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert [g["index"] for g in got] == list(range(len(texts))), name
        assert [g["label"] for g in got] == [e["label"] for e in expected], name
        assert [g["probability"] for g in got] == [round(e["probability"], 4) for e in expected], name
        assert got[0]["probabilities"] == {k: round(v, 4) for k, v in expected[0]["probabilities"].items()}
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts) + "\n"))
    cls_recipe.main(["--predict", "-", "--output-dir", str(cls_run), "--predictions", str(tmp_path / "stdin")])
    assert [json.loads(x)["label"] for x in (tmp_path / "stdin").read_text().splitlines()] == \
        [e["label"] for e in expected]


def test_tagging_cli_reads_conllu_forms(tag_run, tmp_path):
    run = load_run(tag_run)
    sentences = [["he", "met", "Kalomi"], ["in", "Tosavi", "City", ".", "and", "then", "he", "met", "Renta"]]
    conllu = tmp_path / "in.conllu"
    lines = []
    for i, words in enumerate(sentences):
        lines += [f"# sent_id = s{i}"] + [f"{j + 1}\t{w}\t_\t_\t_\t_\t_\t_\t_\t_" for j, w in enumerate(words)] + [""]
    conllu.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "preds.jsonl"
    tag_recipe.main(["--predict", str(conllu), "--output-dir", str(tag_run), "--predictions", str(out)])
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["tokens"] for g in got] == sentences
    assert [g["tags"] for g in got] == [p["tags"] for p in run.predict(sentences)]


# ------------------------------------------------------------------------------------------ untrusted
def _edit_json(name, change):
    def edit(run: Path):
        path = run / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))), encoding="utf-8")
    return edit


def _set(**values):
    return _edit_json("config.json", lambda c: {**c, **values})


def _small_tokenizer(run: Path):
    from seqbucket_plugin.datapipes import word_tokenizer

    shutil.rmtree(run / "tokenizer")
    word_tokenizer([["a", "b", "c"]]).save(run / "tokenizer")


BROKEN = {  # name: (edit, file named in the error, key named in the error)
    "labels duplicate": (_edit_json("labels.json", lambda labels: [labels[0]] * len(labels)), "labels.json", None),
    "labels short": (_edit_json("labels.json", lambda labels: labels[:-1]), "labels.json", None),
    "labels not a list": (_edit_json("labels.json", lambda labels: {"0": labels}), "labels.json", None),
    "labels not strings": (_edit_json("labels.json", lambda labels: [1] + labels[1:]), "labels.json", None),
    "labels missing": (lambda run: (run / "labels.json").unlink(), "labels.json", None),
    "tokenizer vocabulary": (_small_tokenizer, "tokenizer.json", "vocabulary"),
    "config wrong type": (_set(hidden_size="16"), "config.json", "hidden_size"),
    "config bool for int": (_set(num_layers=True), "config.json", "num_layers"),
    "config out of range": (_set(embedding_dim=10**9), "config.json", "embedding_dim"),
    "config unknown encoder": (_set(encoder="transformerx"), "config.json", "encoder"),
    "config missing key": (_edit_json("config.json", lambda c: {k: v for k, v in c.items() if k != "encoder"}),
                           "config.json", "encoder"),
    "config not an object": (_edit_json("config.json", lambda c: [c]), "config.json", None),
    "config not JSON": (lambda run: (run / "config.json").write_text("{nope", encoding="utf-8"), "config.json", None),
    "config NaN": (lambda run: (run / "config.json").write_text(
        (run / "config.json").read_text().replace('"head_fraction": 0.25', '"head_fraction": NaN')),
        "config.json", "head_fraction"),
    "weights of another shape": (_set(hidden_size=32), "best_model.pt", "encoder.weight_ih_l0"),
    "weights missing": (lambda run: (run / "best_model.pt").unlink(), "best_model.pt", None),
    "tokenizer not JSON": (lambda run: (run / "tokenizer" / "tokenizer.json").write_text("{nope"), "tokenizer.json",
                           None),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_run_directories_are_refused(cls_run, tmp_path, capsys, name):
    edit, file, key = BROKEN[name]
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    edit(run)
    texts = tmp_path / "texts.txt"
    texts.write_text("a superb film\n", encoding="utf-8")
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = run_main(cls_recipe.main, ["--predict", str(texts), "--output-dir", str(run),
                                      "--predictions", str(tmp_path / "preds.jsonl")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert file in lines[0] and (key is None or repr(key) in lines[0]), lines[0]
    assert _snapshot(tmp_path) == before  # nothing written: no predictions file, the run untouched
    with pytest.raises(RunDirectoryError) as info:
        load_run(run)
    assert info.value.path.endswith(file) and info.value.key == key


def test_chars_json_must_match_the_character_embedding(tag_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tag_run, run)
    chars = json.loads((run / "chars.json").read_text())
    (run / "chars.json").write_text(json.dumps({"chars": chars["chars"][:-1]}), encoding="utf-8")
    with pytest.raises(RunDirectoryError, match="character embedding") as info:
        load_run(run)
    assert info.value.path.endswith("chars.json") and info.value.key == "chars"
    (run / "chars.json").write_text(json.dumps({"chars": ["a", "a"]}), encoding="utf-8")
    sentences = tmp_path / "input.txt"  # valid input: the run directory is what is refused
    sentences.write_text("he met Kalomi Renta .\n", encoding="utf-8")
    assert run_main(tag_recipe.main, ["--predict", str(sentences), "--output-dir", str(run)]) == 2
    assert "appears twice" in capsys.readouterr().err


def test_a_run_cannot_redirect_predict_input_or_output(cls_run, tmp_path, capsys, monkeypatch):
    """config.json keys naming files or actions ("predict", "predictions", "output_dir") steer nothing."""
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    other = tmp_path / "other.txt"
    other.write_text("x\ny\nz\n", encoding="utf-8")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n", encoding="utf-8")
    _set(predict=str(other), predictions=str(victim), output_dir=str(tmp_path / "elsewhere"),
         train_file=str(other), device="cuda:7", _chosen={"x": "y"})(run)
    before = _snapshot(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a superb film\n"))
    capsys.readouterr()
    assert run_main(cls_recipe.main, ["--predict", "-", "--output-dir", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and json.loads(out[0])["index"] == 0  # stdin's one text, not other.txt's three
    assert _snapshot(tmp_path) == before and not (tmp_path / "elsewhere").exists()


# ------------------------------------------------------------------------------------------ overwrite
def test_training_into_a_run_is_refused_without_resume_or_overwrite(cls_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    data = write_classification_data(tmp_path / "data", n_train=60, n_dev=20, n_test=20)
    args = ["--train-file", data["train"], "--dev-file", data["dev"], *SMALL, "--output-dir", str(run)]
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert run_main(cls_recipe.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--resume" in err[0] and "--overwrite" in err[0]
    assert _snapshot(tmp_path) == before
    assert run_main(cls_recipe.main, [*args, "--resume", "--overwrite"]) == 2
    assert _snapshot(tmp_path) == before

    old_log = (run / "log.jsonl").read_text()
    assert run_main(cls_recipe.main, [*args, "--max-steps", "1", "--overwrite"]) == 0
    assert (run / "log.jsonl").read_text() != old_log
    assert "overwrite" not in json.loads((run / "config.json").read_text())  # per invocation, never saved
    assert run_main(cls_recipe.main, [*args, "--max-steps", "2", "--resume"]) == 0  # and not fingerprinted


def test_a_partial_run_is_protected_too(cls_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1}\n', encoding="utf-8")  # killed before its first checkpoint
    data = write_classification_data(tmp_path / "data", n_train=60, n_dev=20, n_test=20)
    args = ["--train-file", data["train"], "--dev-file", data["dev"], *SMALL, "--output-dir", str(run)]
    assert run_main(cls_recipe.main, args) == 2
    assert (run / "log.jsonl").read_text() == '{"step": 1}\n'


# ------------------------------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory):
    """A 2-layer BiGRU classifier with attention+mean pooling, and a softmax tagger without characters."""
    root = tmp_path_factory.mktemp("variants")
    cls_data = write_classification_data(root / "cdata", n_train=80, n_dev=20, n_test=20)
    tag_data = write_tagging_data(root / "tdata", n_train=60, n_dev=20, n_test=20)
    cls_recipe.main(["--train-file", cls_data["train"], "--dev-file", cls_data["dev"], *SMALL, "--num-layers", "2",
                     "--encoder", "bigru", "--pooling", "attention+mean", "--output-dir", str(root / "cls")])
    tag_recipe.main(["--train-file", tag_data["train"], "--dev-file", tag_data["dev"], *SMALL, "--decoder", "softmax",
                     "--char-encoder", "none", "--output-dir", str(root / "tag")])
    return root / "cls", root / "tag"


def _mixed_batch(run, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    ids = torch.full((len(lengths), int(lengths.max())), run.tokenizer.pad_id, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        ids[row, :n] = torch.randint(1, run.tokenizer.vocab_size, (n,), generator=g)
    return ids, lengths


@pytest.mark.parametrize("which", ["classifier", "tagger crf+chars", "bigru classifier", "softmax tagger"])
def test_onnx_export_matches_eager(which, cls_run, tag_run, variant_runs, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = {"classifier": cls_run, "tagger crf+chars": tag_run, "bigru classifier": variant_runs[0],
            "softmax tagger": variant_runs[1]}[which]
    run = load_run(path)
    if which == "bigru classifier":
        assert run.config["encoder"] == "bigru" and run.config["num_layers"] == 2
    if which == "softmax tagger":
        assert run.model.crf is None and run.chars is None
    file = run.export(tmp_path / "model.onnx")
    meta = json.loads({p.key: p.value for p in __import__("onnx").load(file).metadata_props}["seqbucket_plugin"])
    assert meta["labels"] == run.labels and meta["task"] == run.task
    session = ort.InferenceSession(file)
    # dynamic batch and length: shapes other than the traced (3, 5), rows of mixed lengths in any order
    for lengths in ([3, 13, 9, 1, 9, 6], [1], [40, 2]):
        ids, lens = _mixed_batch(run, lengths)
        feed = {"input_ids": ids.numpy(), "lengths": lens.numpy()}
        with torch.no_grad():
            if run.task == "classification":
                (probs,) = session.run(None, feed)
                eager = run.model(ids, lens).logits.softmax(-1)
                assert probs.shape == tuple(eager.shape) and abs(probs - eager.numpy()).max() <= 1e-5
                continue
            chars = None
            if run.chars is not None:
                chars = torch.randint(1, len(run.chars), (*ids.shape, 4))
                chars[~(torch.arange(ids.shape[1]) < lens.unsqueeze(1))] = 0
                feed["char_ids"] = chars.numpy()
            emissions, tags = session.run(None, feed)
            eager = run.model(ids, lens, chars=chars).emissions
            mask = (torch.arange(ids.shape[1]) < lens.unsqueeze(1)).numpy()
            assert abs(emissions - eager.numpy())[mask].max() <= 1e-5
            assert (tags == run.model.decode(ids, lens, chars=chars).numpy()).all()
