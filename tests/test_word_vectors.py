"""Word vectors from the training texts' co-occurrences (PPMI + SVD): what they learn, their shape
and scale, the errors, and the recipes' ``--embedding-init cooccurrence`` (the default for tagging
and for classification sets of 75k+ tokens)."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import load_recipe, recipe_files
from hypothesis import given, settings
from hypothesis import strategies as st

from seqbucket_plugin.datapipes import TextTokenizer
from seqbucket_plugin.datapipes.tokenize import tokenize_dataset
from seqbucket_plugin.errors import SeqBucketError
from seqbucket_plugin.training.cli import run_main
from seqbucket_plugin.word_vectors import cooccurrence_vectors

cls_recipe = load_recipe("text_classification", "word_vectors")
tag_recipe = load_recipe("tagging", "word_vectors")


def _two_topics(n: int = 400, seed: int = 0) -> list[list[int]]:
    """Texts drawn from one of two word groups (ids 1-10 or 11-20), with shared words 21-24."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        group = np.arange(1, 11) if i % 2 else np.arange(11, 21)
        words = np.concatenate([rng.choice(group, 12), rng.choice(np.arange(21, 25), 4)])
        texts.append(rng.permutation(words).tolist())
    return texts


def test_words_of_one_topic_get_similar_vectors():
    vectors, report = cooccurrence_vectors(_two_topics(), 25, 3, exclude=[0])
    unit = torch.nn.functional.normalize(vectors[1:21], dim=1)
    sims = unit @ unit.T
    same = torch.zeros(20, 20, dtype=torch.bool)
    same[:10, :10] = same[10:, 10:] = True
    off_diagonal = ~torch.eye(20, dtype=torch.bool)
    assert sims[same & off_diagonal].mean() > sims[~same].mean() + 0.5
    assert report.words == 24 and report.tokens == 400 * 16 and report.pairs > 0
    assert "6,400 tokens" in report.summary()


@settings(max_examples=25, deadline=None)
@given(texts=st.lists(st.lists(st.integers(0, 29), min_size=2, max_size=30), min_size=2, max_size=40),
       dim=st.integers(1, 8), window=st.integers(1, 6))
def test_shape_scale_and_excluded_rows(texts, dim, window):
    try:
        vectors, report = cooccurrence_vectors(texts, 30, dim, window=window, exclude=[0])
    except SeqBucketError as e:  # every pair excluded or no pair above chance: said, not silent
        assert "nothing to learn" in str(e)
        return
    assert vectors.shape == (30, dim) and vectors.dtype == torch.float32 and vectors.device.type == "cpu"
    assert torch.isfinite(vectors).all()
    assert not vectors[0].any()  # excluded: a zero row
    norms = vectors.norm(dim=1)
    rows = norms > 0
    assert int(rows.sum()) <= report.words <= 29
    torch.testing.assert_close(norms[rows], torch.full((int(rows.sum()),), dim ** 0.5), atol=1e-4, rtol=1e-4)


def test_arrow_columns_and_python_lists_give_the_same_vectors():
    texts = _two_topics(60)
    column = datasets.Dataset.from_dict({"input_ids": texts + [[3, 4]]}).select(range(60))
    from_arrow, _ = cooccurrence_vectors(column.with_format("arrow")["input_ids"], 25, 4)
    from_lists, _ = cooccurrence_vectors(texts, 25, 4)
    from_array, _ = cooccurrence_vectors(pa.array(texts), 25, 4)
    torch.testing.assert_close(from_arrow, from_lists)
    torch.testing.assert_close(from_array, from_lists)


def test_pairs_never_cross_texts_and_the_global_generator_is_untouched():
    with pytest.raises(SeqBucketError, match="no two tokens share a window"):
        cooccurrence_vectors([[1], [2], [3]], 4, 2)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    cooccurrence_vectors(_two_topics(40), 25, 4, seed=3)
    assert torch.rand(1) == expected


def test_more_dimensions_than_words_are_zero_columns():
    vectors, _ = cooccurrence_vectors(_two_topics(40), 25, 40, exclude=[0])
    assert vectors.shape == (25, 40) and not vectors[:, 25:].any()
    torch.testing.assert_close(vectors[1:].norm(dim=1), torch.full((24,), 40 ** 0.5))


def test_bad_arguments():
    with pytest.raises(SeqBucketError, match=r"token ids must be in \[0, 5\)"):
        cooccurrence_vectors([[1, 7]], 5, 2)
    with pytest.raises(SeqBucketError, match="dim and vocab_size must be at least 1"):
        cooccurrence_vectors([[1, 2]], 5, 0)
    with pytest.raises(SeqBucketError, match="window must be at least 1"):
        cooccurrence_vectors([[1, 2]], 5, 2, window=0)


SMALL_CLS = ["--hidden-size", "8", "--embedding-dim", "16", "--max-tokens", "4096", "--no-progress",
             "--threads", "1", "--epochs", "1"]


def test_classification_recipe_starts_from_cooccurrence_vectors(cls_data, tmp_path, capsys):
    out = tmp_path / "run"
    cls_recipe.main([*recipe_files(cls_data), *SMALL_CLS, "--embedding-init", "cooccurrence",
                     "--freeze-embeddings", "--output-dir", str(out)])
    assert "embeddings (16d, frozen): word vectors from the training texts:" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["embedding_init"] == "cooccurrence"
    tok = TextTokenizer.load(out / "tokenizer")
    train = datasets.load_dataset("json", data_files=cls_data["train"], split="train")
    ids = tokenize_dataset(train, tok, max_length=config["max_length"], truncation=config["truncation"],
                           label_column=None).with_format("arrow")["input_ids"]
    expected, _ = cooccurrence_vectors(ids, tok.vocab_size, 16, exclude=[tok.pad_id], seed=0)
    weight = torch.load(out / "best_model.pt", weights_only=True)
    weight = weight.get("model", weight)["embedding.weight"]
    torch.testing.assert_close(weight, expected)  # frozen: the co-occurrence vectors, unchanged


def test_small_sets_start_random_and_a_file_replaces_the_rule(cls_data, tmp_path, capsys):
    out = tmp_path / "run"
    cls_recipe.main([*recipe_files(cls_data), *SMALL_CLS, "--output-dir", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["embedding_init"] == "random"
    assert "training tokens (< 75,000): random word vectors" in config["_chosen"]["embedding_init"]
    assert "word vectors from the training texts" not in capsys.readouterr().out


def test_conflicting_embedding_options_fail_before_anything_is_written(cls_data, tmp_path, capsys):
    out = tmp_path / "run"
    vectors = tmp_path / "v.txt"
    vectors.write_text("2 16\n" + "".join(f"w{i} " + " ".join(["0.1"] * 16) + "\n" for i in range(2)))
    argv = [*recipe_files(cls_data), *SMALL_CLS, "--output-dir", str(out)]
    assert run_main(cls_recipe.main, [*argv, "--embeddings", str(vectors), "--embedding-init", "cooccurrence"]) == 2
    assert run_main(cls_recipe.main, [*argv, "--embedding-init", "random", "--freeze-embeddings"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "give one" in err[0] and "--freeze-embeddings needs --embeddings FILE or --embedding-init" in err[1]
    assert not out.exists()


def test_tagging_recipe_starts_from_cooccurrence_vectors_by_default(tag_data, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = tag_recipe.main([*recipe_files(tag_data), "--hidden-size", "8", "--num-layers", "1",
                               "--char-filters", "8", "--char-dim", "8", "--embedding-dim", "16", "--max-tokens",
                               "1024", "--no-progress", "--threads", "1", "--epochs", "1", "--output-dir", str(out)])
    assert "test_f1" in metrics
    assert "embeddings (16d, fine-tuned): word vectors from the training texts" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["embedding_init"] == "cooccurrence"


def test_texts_without_word_pairs_start_random_and_say_so(capsys):
    from types import SimpleNamespace

    from seqbucket_plugin.training.model_options import pretrained_embedding

    tok = TextTokenizer.train(["alpha beta gamma"], kind="word", vocab_size=100)
    one_word = datasets.Dataset.from_dict({"input_ids": [[tok.token_to_id("alpha")], [tok.token_to_id("beta")]]})
    args = SimpleNamespace(embeddings=None, embedding_init="cooccurrence", freeze_embeddings=False,
                           embedding_dim=8, seed=0)
    assert pretrained_embedding(args, tok, one_word) is None
    assert "embeddings: a random start (no two tokens share a window" in capsys.readouterr().out
