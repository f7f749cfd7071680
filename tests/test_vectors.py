"""Pretrained word vectors: word2vec text/binary, GloVe and fastText files read (only the rows a
vocabulary needs), an embedding built from a tokenizer plus vectors, both heads taking it, and
both recipes' ``--embeddings FILE`` / ``--freeze-embeddings``."""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_recipe, recipe_files

from seqbucket_plugin import load_vectors
from seqbucket_plugin.datapipes import TextTokenizer
from seqbucket_plugin.errors import DataFormatError, SeqBucketError
from seqbucket_plugin.heads import SequenceClassifier, SequenceTagger
from seqbucket_plugin.training.cli import run_main
from seqbucket_plugin.vectors import PretrainedEmbedding, build_embedding, vectors_dim

cls_recipe = load_recipe("text_classification", "vectors")
tag_recipe = load_recipe("tagging", "vectors")

WORDS = ["the", "cat", "sat", "on", "mat", "Dog", "ran", "été"]
DIM = 4


def _table(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(WORDS), DIM)).astype(np.float32)


def write_text(path: Path, vectors: np.ndarray, *, header: bool, trailing_space: bool = False) -> Path:
    lines = [f"{len(WORDS)} {DIM}"] if header else []
    for w, v in zip(WORDS, vectors):
        lines.append(w + " " + " ".join(repr(float(x)) for x in v) + (" " if trailing_space else ""))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_binary(path: Path, vectors: np.ndarray, newline: bool = True) -> Path:
    with open(path, "wb") as f:
        f.write(f"{len(WORDS)} {DIM}\n".encode())
        for w, v in zip(WORDS, vectors):
            f.write(w.encode() + b" " + v.astype("<f4").tobytes() + (b"\n" if newline else b""))
    return path


@pytest.mark.parametrize("kind", ["word2vec", "fasttext-vec", "glove", "binary", "binary-gensim-style"])
def test_every_format_reads_the_same_vectors(tmp_path, kind):
    table = _table()
    path = {
        "word2vec": lambda: write_text(tmp_path / "v.txt", table, header=True),
        "fasttext-vec": lambda: write_text(tmp_path / "v.vec", table, header=True, trailing_space=True),
        "glove": lambda: write_text(tmp_path / "glove.txt", table, header=False),
        "binary": lambda: write_binary(tmp_path / "v.bin", table),
        "binary-gensim-style": lambda: write_binary(tmp_path / "v.bin", table, newline=False),
    }[kind]()
    vectors = load_vectors(path)
    assert vectors.words == WORDS and vectors.dim == DIM and vectors.vectors.dtype == torch.float32
    assert vectors.format == {"glove": "glove", "binary": "word2vec-binary",
                              "binary-gensim-style": "word2vec-binary"}.get(kind, "word2vec")
    torch.testing.assert_close(vectors.vectors, torch.from_numpy(table), atol=1e-6, rtol=0)
    assert vectors_dim(path) == DIM
    torch.testing.assert_close(vectors["cat"], torch.from_numpy(table[1]), atol=1e-6, rtol=0)
    assert torch.all(vectors["unknown-word"] == 0)

    kept = load_vectors(path, vocab={"cat", "été", "absent"})  # only the rows the vocabulary needs
    assert kept.words == ["cat", "été"] and kept.rows_in_file == len(WORDS)
    assert load_vectors(path, vocab=["dog"], lowercase=True).words == ["dog"]
    assert len(load_vectors(path, max_vectors=3)) == 3


def test_gensim_files(tmp_path):
    gensim = pytest.importorskip("gensim")
    model = gensim.models.Word2Vec([["the", "cat", "sat"], ["a", "dog", "ran"]] * 20, vector_size=6, min_count=1,
                                   workers=1, seed=0)
    for binary in (True, False):
        path = tmp_path / f"w2v.{'bin' if binary else 'txt'}"
        model.wv.save_word2vec_format(str(path), binary=binary)
        vectors = load_vectors(path)
        assert sorted(vectors.words) == sorted(model.wv.index_to_key)
        for word in ("cat", "ran"):
            torch.testing.assert_close(vectors[word], torch.from_numpy(model.wv[word].copy()), atol=1e-5, rtol=0)


def test_a_large_file_costs_only_the_kept_rows(tmp_path):
    rows, dim = 40_000, 50
    rng = np.random.default_rng(0)
    path = tmp_path / "big.txt"
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, rows, 5000):
            block = rng.normal(size=(5000, dim)).round(5)
            f.write("\n".join(f"w{start + i} " + " ".join(map(str, r)) for i, r in enumerate(block)) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    vectors = load_vectors(path, vocab=[f"w{i}" for i in range(0, rows, 400)])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(vectors) == rows // 400 and vectors.rows_in_file == rows
    assert peak < size / 10, (peak, size)  # streamed: far below the file's size


def test_malformed_files_name_file_and_line(tmp_path):
    spaced = tmp_path / "glove840.txt"  # GloVe 840B has words with spaces
    spaced.write_text(". . . 1 2 3\n. 4 5 6\nat mail@x.com 7 8 9\n", encoding="utf-8")
    got = load_vectors(spaced, vocab={".", "at mail@x.com"})
    assert got.words == [".", "at mail@x.com"] and got["."].tolist() == [4, 5, 6]
    assert load_vectors(spaced).words == [". . .", ".", "at mail@x.com"]
    bad = tmp_path / "bad.txt"
    bad.write_text("2 3\ncat 1 2 3\ndog 1 2\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad.txt:3: 'dog' has 2 values, expected 3"):
        load_vectors(bad)
    assert load_vectors(bad, vocab=["cat"]).words == ["cat"]  # rows not kept are not parsed
    nan = tmp_path / "nan.txt"
    nan.write_text("cat 1 2 3\ndog 1 x 3\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="nan.txt:2: a value of 'dog' is not a number"):
        load_vectors(nan)
    truncated = tmp_path / "t.bin"
    truncated.write_bytes(write_binary(tmp_path / "full.bin", _table()).read_bytes()[:-10])
    with pytest.raises(DataFormatError, match="truncated binary file: row 8 of 8"):
        load_vectors(truncated)
    with pytest.raises(FileNotFoundError):
        load_vectors(tmp_path / "missing.txt")
    with pytest.raises(DataFormatError, match="not a word-vectors file"):
        (tmp_path / "words.txt").write_text("hello\n", encoding="utf-8")
        vectors_dim(tmp_path / "words.txt")


def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(["the cat sat on the mat", "a dog ran", "Zebra zebra"], kind="word")


def test_build_embedding_coverage_oov_and_freeze(tmp_path):
    tok = tokenizer()  # lower-cases: 'dog' finds the file's 'Dog' only via lowercase=True
    vectors = load_vectors(write_text(tmp_path / "v.txt", _table(), header=True), vocab=tok, lowercase=True)
    emb = build_embedding(tok, vectors, freeze=True)
    assert isinstance(emb, PretrainedEmbedding) and isinstance(emb, torch.nn.Embedding)
    assert emb.weight.shape == (tok.vocab_size, DIM) and not emb.weight.requires_grad
    cov = emb.coverage
    assert cov.words == tok.vocab_size - 4 and cov.found == 7  # the, cat, sat, on, mat, dog, ran
    assert set(cov.missing_examples) == {"a", "zebra"} and "7 of 9 words (77.8%)" in cov.summary()
    torch.testing.assert_close(emb.weight[tok.token_to_id("cat")], vectors["cat"])
    assert torch.all(emb.weight[tok.pad_id] == 0) and emb.padding_idx == tok.pad_id
    oov = emb.weight[tok.token_to_id("zebra")]
    assert oov.abs().sum() > 0  # random, drawn like the found vectors
    assert build_embedding(tok, vectors, oov="zeros").weight[tok.token_to_id("zebra")].abs().sum() == 0
    assert build_embedding(tok, vectors).weight.requires_grad
    # the same vectors and seed give the same embedding
    torch.testing.assert_close(build_embedding(tok, vectors, seed=3).weight, build_embedding(tok, vectors, seed=3).weight)
    none = load_vectors(write_text(tmp_path / "v.txt", _table(), header=True), vocab=["nothing"])
    with pytest.raises(SeqBucketError, match="no vector for any"):
        build_embedding(tok, none)


def test_both_heads_take_an_embedding(tmp_path):
    tok = tokenizer()
    emb = build_embedding(tok, load_vectors(write_text(tmp_path / "v.txt", _table(), header=True)))
    ids, lengths = torch.tensor([[4, 5, 6], [7, 8, 0]]), torch.tensor([3, 2])
    clf = SequenceClassifier(tok.vocab_size, 3, embedding=emb, hidden_size=8, encoder="lstm", pooling="mean")
    assert clf.embedding is emb and clf(ids, lengths).logits.shape == (2, 3)
    tagger = SequenceTagger(tok.vocab_size, 5, embedding=emb, hidden_size=8, encoder="lstm", decoder="softmax")
    assert tagger.embedding is emb and tagger.encoder.input_size == DIM
    assert tagger(ids, lengths).emissions.shape == (2, 3, 5)


def _vectors_for(train_file: str, path: Path, *, glove: bool) -> Path:
    text = Path(train_file).read_text(encoding="utf-8").lower()
    words = sorted(set(re.findall(r"[a-z]+", text)))[::2]  # half of the words
    rng = np.random.default_rng(0)
    lines = [] if glove else [f"{len(words)} 12"]
    lines += [w + " " + " ".join(f"{x:.4f}" for x in rng.normal(size=12)) for w in words]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


SMALL_CLS = ["--hidden-size", "8", "--max-tokens", "4096", "--no-progress", "--threads", "1", "--epochs", "1"]
SMALL_TAG = ["--hidden-size", "8", "--num-layers", "1", "--char-filters", "8", "--char-dim", "8",
             "--max-tokens", "1024", "--no-progress", "--threads", "1", "--epochs", "1"]


def test_classification_recipe_with_frozen_embeddings(cls_data, tmp_path, capsys):
    vectors = _vectors_for(cls_data["train"], tmp_path / "vectors.txt", glove=False)
    out = tmp_path / "run"
    cls_recipe.main([*recipe_files(cls_data), *SMALL_CLS, "--embeddings", str(vectors), "--freeze-embeddings",
                     "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert re.search(r"embeddings vectors.txt \(12d, frozen\): vectors for [\d,]+ of [\d,]+ words", printed)
    config = json.loads((out / "config.json").read_text())
    assert config["embedding_dim"] == 12 and config["freeze_embeddings"] is True
    state = torch.load(out / "best_model.pt", weights_only=True)
    weight = state.get("model", state)["embedding.weight"] if "model" in state else state["embedding.weight"]
    tok = TextTokenizer.load(out / "tokenizer")
    start = build_embedding(tok, load_vectors(vectors, vocab=tok, lowercase=True), seed=0).weight
    torch.testing.assert_close(weight, start)  # frozen: unchanged by training
    texts = tmp_path / "texts.txt"
    texts.write_text("great superb fun movie\n", encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    cls_recipe.main(["--predict", str(texts), "--output-dir", str(out), "--predictions", str(preds)])
    assert len(preds.read_text().splitlines()) == 1  # the run reloads without the vectors file


def test_tagging_recipe_with_glove_embeddings(tag_data, tmp_path, capsys):
    vectors = _vectors_for(tag_data["train"], tmp_path / "glove.txt", glove=True)
    out = tmp_path / "run"
    metrics = tag_recipe.main([*recipe_files(tag_data), *SMALL_TAG, "--embeddings", str(vectors),
                               "--output-dir", str(out)])
    assert "test_f1" in metrics
    assert "embeddings glove.txt (12d, fine-tuned)" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["embedding_dim"] == 12


def test_bad_embedding_options_fail_before_anything_is_written(cls_data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*recipe_files(cls_data), *SMALL_CLS, "--output-dir", str(out)]
    assert run_main(cls_recipe.main, [*argv, "--embeddings", str(tmp_path / "none.txt")]) == 2
    assert run_main(cls_recipe.main, [*argv, "--freeze-embeddings"]) == 2
    vectors = _vectors_for(cls_data["train"], tmp_path / "v.txt", glove=False)
    assert run_main(cls_recipe.main, [*argv, "--embeddings", str(vectors), "--embedding-dim", "7"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "file not found" in err[0] and "--freeze-embeddings needs --embeddings" in err[1]
    assert "--embedding-dim 7 differs from the 12 dimensions" in err[2]
    assert not out.exists()
