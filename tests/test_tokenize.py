"""Tests of seqbucket_plugin.datapipes.tokenize (fixtures are written by the tests)."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.nodes import IterableWrapper, Loader

from seqbucket_plugin.datapipes.tokenize import (
    IGNORE_INDEX,
    TextTokenizer,
    TokenizeNode,
    TokenizeReport,
    _head_size,
    tokenize_dataset,
    tokenize_report,
    tokenize_tagged_dataset,
)
from seqbucket_plugin.errors import (
    DataFormatError,
    MissingColumnError,
    SeqBucketError,
    StateDictError,
    UnknownLabelError,
)
from seqbucket_plugin.testing import check_save_load_state

datasets.disable_progress_bars()

CORPUS = [
    "The cat sat on the mat.",
    "The dog ate my homework!<br /><br />Really.",
    "A cat, a dog and a bird.",
    "The cat and the dog are friends.",
    "Rare words appear once: zyzzyva.",
] * 3 + ["hapax"]

# ten words w0..w9, each frequent enough to be in a word-level vocabulary
NUM_TEXT = " ".join(f"w{i}" for i in range(10))


@pytest.fixture(scope="module")
def word_tok() -> TextTokenizer:
    return TextTokenizer.train(CORPUS + [NUM_TEXT] * 2, kind="word", min_frequency=2)


@pytest.fixture(scope="module")
def wp_tok() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, kind="wordpiece", vocab_size=80)


class RecordingTokenizer:
    """Proxy around a tokenizers.Tokenizer that records calls and forbids per-row encode."""

    def __init__(self, inner, forbid_all: bool = False):
        self.inner = inner
        self.calls: list[tuple[str, int]] = []
        self.forbid_all = forbid_all

    def encode(self, *args, **kwargs):
        raise AssertionError("per-row encode() must not be used")

    def _batched(self, name):
        def call(inputs, *args, **kwargs):
            if self.forbid_all:
                raise AssertionError(f"{name} called although the cache should have been used")
            self.calls.append((name, len(inputs)))
            return getattr(self.inner, name)(inputs, *args, **kwargs)

        return call

    def __getattr__(self, name):
        if name in ("encode_batch", "encode_batch_fast"):
            return self._batched(name)
        return getattr(self.inner, name)


def _imdb_like(n: int = 12) -> list[dict]:
    return [{"text": f"{CORPUS[i % len(CORPUS)]} {NUM_TEXT[: 3 * (i % 7)]}", "label": i % 2, "id": f"ex{i}"}
            for i in range(n)]


def _parquet_dataset(tmp_path, rows: list[dict]) -> datasets.Dataset:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return datasets.load_dataset("parquet", data_files=str(path), split="train",
                                 cache_dir=str(tmp_path / "hf_cache"))


class FreshIterableWrapper(IterableWrapper):
    """IterableWrapper over a ``datasets.IterableDataset`` that really restarts on ``reset(None)``.

    ``datasets`` re-applies the last ``load_state_dict`` on every new ``iter()``, so a plain
    ``IterableWrapper`` fails the node contract by itself after a mid-epoch restore.
    """

    def reset(self, initial_state=None):
        if initial_state is None:
            self.iterable.load_state_dict(None)  # no starting state: from the beginning
        super().reset(initial_state)


# ---- training -------------------------------------------------------------------------


def test_word_level_training(word_tok):
    tok = word_tok
    assert [tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id] == [0, 1, 2, 3]
    assert tok.kind == "word"
    # lower-cased, <br /> stripped, punctuation split off
    ids = tok.encode("THE cat<br />sat.")
    assert tok.lookup_tokens(ids) == ["the", "cat", "sat", "."]
    assert "br" not in tok and "<br" not in tok
    # min_frequency=2: "hapax" (seen once) is unknown
    assert "hapax" not in tok and "zyzzyva" in tok
    assert tok.encode("hapax") == [tok.unk_id]


def test_word_level_max_size_keeps_most_frequent():
    tok = TextTokenizer.train(CORPUS, kind="word", vocab_size=6)
    assert len(tok) == tok.vocab_size == 6
    # 4 specials + the 2 most frequent words (15 times each; the next ones have 9)
    assert set(tok.get_vocab()) == {"<pad>", "<unk>", "<bos>", "<eos>", "the", "."}


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_subword_training_and_decoder(kind):
    tok = TextTokenizer.train(CORPUS, kind=kind, vocab_size=70)
    assert len(tok) <= 70
    ids = tok.encode("the homework")
    assert len(ids) > 2  # split into pieces
    assert tok.decode(ids) == "the homework"
    assert tok.unk_id == 1


def test_train_from_dataset_column_matches_list():
    ds = datasets.Dataset.from_dict({"text": CORPUS})
    from_list = TextTokenizer.train(CORPUS)
    assert TextTokenizer.train(ds, batch_size=4) == from_list
    assert TextTokenizer.train(ds["text"]) == from_list
    with pytest.raises(MissingColumnError, match="available columns"):
        TextTokenizer.train(ds, text_column="body")


def test_train_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        TextTokenizer.train(CORPUS, kind="char")
    with pytest.raises(ValueError, match="unknown token"):
        TextTokenizer.train(CORPUS, kind="word", special_tokens=("<pad>",))


# ---- persistence ----------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, word_tok, wp_tok):
    for tok in (word_tok, wp_tok):
        d = tmp_path / tok.kind
        tok.save(d)
        settings = json.loads((d / "seqbucket_tokenizer.json").read_text())
        assert settings["pad_token"] == "<pad>"
        loaded = TextTokenizer.load(d)
        assert loaded == tok
        assert loaded.encode_batch(CORPUS) == tok.encode_batch(CORPUS)
        assert (loaded.pad_id, loaded.unk_id, loaded.bos_id, loaded.eos_id) == (0, 1, 2, 3)


def test_from_file_and_errors(tmp_path, word_tok):
    path = tmp_path / "tok.json"
    word_tok.tokenizer.save(str(path))
    tok = TextTokenizer.from_file(path, bos_token=None)
    assert tok.encode_batch(CORPUS) == word_tok.encode_batch(CORPUS)
    assert tok.bos_id is None and tok.eos_id == 3 and tok.pad_id == 0  # auto-detected
    only_json = tmp_path / "dir"
    only_json.mkdir()
    word_tok.tokenizer.save(str(only_json / "tokenizer.json"))
    assert TextTokenizer.from_file(only_json).encode("the cat") == word_tok.encode("the cat")
    with pytest.raises(FileNotFoundError):
        TextTokenizer.from_file(tmp_path / "missing")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataFormatError, match="bad.json"):
        TextTokenizer.from_file(bad)
    with pytest.raises(SeqBucketError, match="not in the tokenizer's vocabulary"):
        TextTokenizer.from_file(path, pad_token="[PAD]")


def test_from_pretrained_offline_error(monkeypatch):
    from tokenizers import Tokenizer

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(Tokenizer, "from_pretrained", offline)
    with pytest.raises(SeqBucketError, match="from_file"):
        TextTokenizer.from_pretrained("bert-base-uncased")


def test_pickle_is_deterministic_across_processes(tmp_path, word_tok):
    from datasets.fingerprint import Hasher

    assert pickle.loads(pickle.dumps(word_tok)) == word_tok
    assert pickle.dumps(word_tok) == pickle.dumps(copy.deepcopy(word_tok))
    word_tok.save(tmp_path / "tok")
    code = textwrap.dedent(
        f"""
        from datasets.fingerprint import Hasher
        from seqbucket_plugin.datapipes.tokenize import TextTokenizer
        print(Hasher.hash(TextTokenizer.load({str(tmp_path / "tok")!r})))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == Hasher.hash(TextTokenizer.load(tmp_path / "tok"))


# ---- vocabulary conveniences ----------------------------------------------------------


def test_lookups(word_tok):
    tok = word_tok
    cat = tok.token_to_id("cat")
    assert tok.id_to_token(cat) == "cat"
    assert tok.lookup_indices(["cat", "no-such-word"]) == [cat, tok.unk_id]
    assert tok.lookup_tokens([cat, tok.pad_id]) == ["cat", "<pad>"]
    assert "cat" in tok and "Cat" not in tok and 3 not in tok
    assert tok.token_to_id("Cat") is None
    with pytest.raises(IndexError):
        tok.id_to_token(len(tok))
    with pytest.raises(IndexError):
        tok.id_to_token(-1)


def test_encode_batch_is_batched_and_adds_specials(word_tok):
    tok = copy.deepcopy(word_tok)
    rec = RecordingTokenizer(tok.tokenizer)
    tok._tokenizer = rec
    plain = tok.encode_batch(CORPUS)
    both = tok.encode_batch(CORPUS, add_special_tokens=True)
    assert [name for name, _ in rec.calls] in (["encode_batch_fast"] * 2, ["encode_batch"] * 2)
    assert [n for _, n in rec.calls] == [len(CORPUS)] * 2
    assert all(b == [tok.bos_id, *p, tok.eos_id] for p, b in zip(plain, both))
    assert all(isinstance(i, int) for i in plain[0])


def test_tokenize_dataset_and_node_use_batched_encode(word_tok):
    tok = copy.deepcopy(word_tok)
    rec = RecordingTokenizer(tok.tokenizer)
    tok._tokenizer = rec
    ds = datasets.Dataset.from_list(_imdb_like(10))
    tokenize_dataset(ds, tok, batch_size=4)
    assert [n for _, n in rec.calls] == [4, 4, 2]
    rec.calls.clear()
    node = TokenizeNode(IterableWrapper(_imdb_like(10)), tok, batch_size=3)
    assert len(list(Loader(node))) == 10
    assert [n for _, n in rec.calls] == [3, 3, 3, 1]


# ---- map-style --------------------------------------------------------------------------


def test_tokenize_dataset_columns_and_dtypes(word_tok):
    rows = _imdb_like(12)
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"]),
                                  "id": datasets.Value("string")})
    ds = datasets.Dataset.from_list(rows, features=features)
    out = tokenize_dataset(ds, word_tok)
    assert out.column_names == ["input_ids", "length", "num_tokens", "label"]
    assert out.features["input_ids"] == datasets.List(datasets.Value("int32"))
    assert out.features["length"] == datasets.Value("int32")
    assert out.features["label"] == features["label"]
    assert out.data.column("input_ids").type == pa.list_(pa.int32())
    assert out["input_ids"] == word_tok.encode_batch([r["text"] for r in rows])
    assert out["length"] == [len(x) for x in out["input_ids"]] == out["num_tokens"]
    assert out["label"] == [r["label"] for r in rows]
    kept = tokenize_dataset(ds, word_tok, keep_columns=["id"], label_column=None)
    assert kept.column_names == ["input_ids", "length", "num_tokens", "id"]
    assert tokenize_dataset(ds, word_tok, keep_columns="all").column_names[-1] == "id"


def test_missing_columns(word_tok):
    ds = datasets.Dataset.from_dict({"review": ["a cat"], "label": [0]})
    with pytest.raises(MissingColumnError) as err:
        tokenize_dataset(ds, word_tok)
    assert err.value.column == "text" and err.value.available == ["review", "label"]
    assert "['review', 'label']" in str(err.value)
    with pytest.raises(MissingColumnError, match="'sentiment'"):
        tokenize_dataset(ds, word_tok, text_column="review", label_column="sentiment")
    with pytest.raises(MissingColumnError, match="'id'"):
        tokenize_dataset(ds, word_tok, text_column="review", keep_columns=["id"])
    with pytest.raises(MissingColumnError, match="available columns"):
        tokenize_tagged_dataset(ds, word_tok)
    node = TokenizeNode(IterableWrapper([{"review": "a", "label": 0}]), word_tok)
    with pytest.raises(MissingColumnError, match="'text'"):
        next(iter(Loader(node)))


def test_head_size_classic_split():
    assert _head_size(510, 0.25) == 128  # head 128 + tail 382
    assert _head_size(4, 0.25) == 1
    assert _head_size(10, 0.0) == 0 and _head_size(10, 1.0) == 10


@pytest.mark.parametrize(
    ("truncation", "special", "expected"),
    [
        ("head", False, ["w0", "w1", "w2", "w3"]),
        ("tail", False, ["w6", "w7", "w8", "w9"]),
        ("head+tail", False, ["w0", "w7", "w8", "w9"]),
        ("head", True, ["<bos>", "w0", "w1", "<eos>"]),
        ("tail", True, ["<bos>", "w8", "w9", "<eos>"]),
        ("head+tail", True, ["<bos>", "w0", "w9", "<eos>"]),
    ],
)
def test_truncation_sides(word_tok, truncation, special, expected, caplog):
    ds = datasets.Dataset.from_dict({"text": [NUM_TEXT, "w0 w1", NUM_TEXT], "label": [0, 1, 0]})
    with caplog.at_level(logging.WARNING, logger="seqbucket_plugin.datapipes.tokenize"):
        out, report = tokenize_dataset(ds, word_tok, max_length=4, truncation=truncation,
                                       head_fraction=0.25 if not special else 0.5,
                                       add_special_tokens=special, return_report=True)
    assert word_tok.lookup_tokens(out[0]["input_ids"]) == expected
    short = ["w0", "w1"] if not special else ["<bos>", "w0", "w1", "<eos>"]
    assert word_tok.lookup_tokens(out[1]["input_ids"]) == short
    n_special = 2 * special
    assert out["length"] == [4, len(short), 4]
    assert out["num_tokens"] == [10 + n_special, 2 + n_special, 10 + n_special]
    assert report == TokenizeReport(examples=3, tokens=8 + len(short), tokens_before_truncation=22 + 3 * n_special,
                                    truncated=2, truncated_tokens=2 * (10 + n_special - 4),
                                    max_num_tokens=10 + n_special)
    assert tokenize_report(out) == report
    assert "truncated 2 of 3 examples" in caplog.text
    # the streaming node truncates identically and counts the same
    node = TokenizeNode(IterableWrapper(ds.to_list()), word_tok, max_length=4, truncation=truncation,
                        head_fraction=0.25 if not special else 0.5, add_special_tokens=special, batch_size=2)
    items = list(Loader(node))
    assert [it["input_ids"] for it in items] == out["input_ids"]
    assert node.report == report


def test_truncation_argument_errors(word_tok):
    ds = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    with pytest.raises(ValueError, match="truncation"):
        tokenize_dataset(ds, word_tok, max_length=4, truncation="middle")
    with pytest.raises(ValueError, match="no room"):
        tokenize_dataset(ds, word_tok, max_length=2, add_special_tokens=True)
    with pytest.raises(ValueError, match="head_fraction"):
        TokenizeNode(IterableWrapper([]), word_tok, head_fraction=1.5)
    nulls = datasets.Dataset.from_dict({"text": ["a", None], "label": [0, 1]})
    with pytest.raises(DataFormatError, match="null"):
        tokenize_dataset(nulls, word_tok)


def test_map_cache_is_reused_across_processes(tmp_path, word_tok):
    rows = _imdb_like(30)
    ds = _parquet_dataset(tmp_path, rows)
    word_tok.save(tmp_path / "tok")
    # first run in another process: the cache must be found by fingerprint, not by object identity
    code = textwrap.dedent(
        f"""
        import datasets
        from seqbucket_plugin.datapipes.tokenize import TextTokenizer, tokenize_dataset
        ds = datasets.load_dataset("parquet", data_files={str(tmp_path / "data.parquet")!r}, split="train",
                                   cache_dir={str(tmp_path / "hf_cache")!r})
        out = tokenize_dataset(ds, TextTokenizer.load({str(tmp_path / "tok")!r}), max_length=5, batch_size=8)
        print(out.cache_files[0]["filename"])
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    first_file = proc.stdout.strip().splitlines()[-1]
    assert os.path.isfile(first_file)

    tok = TextTokenizer.load(tmp_path / "tok")
    tok._tokenizer = RecordingTokenizer(tok.tokenizer, forbid_all=True)  # any encode fails the test
    out, report = tokenize_dataset(ds, tok, max_length=5, batch_size=8, return_report=True)
    assert out.cache_files[0]["filename"] == first_file
    assert report.examples == 30 and report.truncated == sum(out["num_tokens"][i] > 5 for i in range(30)) > 0
    # other arguments -> another fingerprint -> encoded again
    tok._tokenizer = RecordingTokenizer(tok.tokenizer.inner)
    again = tokenize_dataset(ds, tok, max_length=6, batch_size=8)
    assert again.cache_files[0]["filename"] != first_file and tok._tokenizer.calls


# ---- tagging ----------------------------------------------------------------------------


TAGGED = {
    "tokens": [["The", "Cat", "sat", "homework"], ["A", "dog", "."], ["Zyzzyva"]],
    "tags": [[1, 2, 3, 4], [1, 2, 5], [6]],
}


def test_tagged_word_level(word_tok):
    ds = datasets.Dataset.from_dict(TAGGED)
    out = tokenize_tagged_dataset(ds, word_tok)
    assert out.column_names == ["input_ids", "length", "num_tokens", "labels"]
    assert out["labels"] == TAGGED["tags"]
    assert out["length"] == [4, 3, 1]
    # one id per word, lower-cased by the normaliser
    assert out["input_ids"][0] == word_tok.lookup_indices(["the", "cat", "sat", "homework"])
    assert out["input_ids"][2] == [word_tok.token_to_id("zyzzyva")]
    # a word with punctuation inside is looked up whole (here unknown), never split
    odd = datasets.Dataset.from_dict({"tokens": [["don't", "cat", ""]], "tags": [[1, 2, 3]]})
    assert tokenize_tagged_dataset(odd, word_tok)["input_ids"] == [[word_tok.unk_id, word_tok.token_to_id("cat"),
                                                                     word_tok.unk_id]]


def test_tagged_subword_alignment(wp_tok):
    ds = datasets.Dataset.from_dict(TAGGED)
    out = tokenize_tagged_dataset(ds, wp_tok, subword=True, add_special_tokens=True)
    assert "word_ids" in out.column_names
    for ids, labels, wids, tags, words in zip(out["input_ids"], out["labels"], out["word_ids"],
                                              TAGGED["tags"], TAGGED["tokens"]):
        assert len(ids) == len(labels) == len(wids)
        assert ids[0] == wp_tok.bos_id and ids[-1] == wp_tok.eos_id
        assert labels[0] == labels[-1] == IGNORE_INDEX and wids[0] == wids[-1] == -1
        expected, prev = [], None
        for w in wids:
            expected.append(tags[w] if w >= 0 and w != prev else IGNORE_INDEX)
            prev = w
        assert labels == expected
        assert [t for t in labels if t != IGNORE_INDEX] == tags  # every word tagged once
        assert max(wids) == len(words) - 1
    assert any(labels.count(IGNORE_INDEX) > 2 for labels in out["labels"])  # some words split


def test_tagged_string_tags_and_errors(word_tok):
    ds = datasets.Dataset.from_dict({"tokens": [["a", "cat"]], "tags": [["DET", "NOUN"]]})
    out = tokenize_tagged_dataset(ds, word_tok, tag_to_id={"NOUN": 0, "DET": 1})
    assert out["labels"] == [[1, 0]]
    with pytest.raises(UnknownLabelError, match="NOUN"):
        tokenize_tagged_dataset(ds, word_tok, tag_to_id={"DET": 1})
    with pytest.raises(SeqBucketError, match="tag_to_id"):
        tokenize_tagged_dataset(ds, word_tok)
    bad = datasets.Dataset.from_dict({"tokens": [["a", "cat"]], "tags": [[1]]})
    with pytest.raises(DataFormatError, match="2 tokens but 1 tags"):
        tokenize_tagged_dataset(bad, word_tok)


def test_tagged_truncation_counts(wp_tok):
    ds = datasets.Dataset.from_dict(TAGGED)
    full = tokenize_tagged_dataset(ds, wp_tok, subword=True)
    out, report = tokenize_tagged_dataset(ds, wp_tok, subword=True, max_length=3, return_report=True)
    assert out["input_ids"] == [ids[:3] for ids in full["input_ids"]]
    assert out["labels"] == [lab[:3] for lab in full["labels"]]
    assert report.truncated == sum(len(ids) > 3 for ids in full["input_ids"])


# ---- streaming node ----------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_node_contract_list_source(word_tok, batch_size):
    rows = _imdb_like(11)
    node = TokenizeNode(IterableWrapper(rows), word_tok, batch_size=batch_size, max_length=6, keep_columns=["id"])
    check_save_load_state(node, 4)
    items = list(Loader(node))
    assert [it["id"] for it in items] == [r["id"] for r in rows]
    assert set(items[0]) == {"input_ids", "length", "num_tokens", "label", "id"}
    assert all(isinstance(it["input_ids"], list) and it["length"] == len(it["input_ids"]) for it in items)
    ref = tokenize_dataset(datasets.Dataset.from_list(rows), word_tok, max_length=6)
    assert [it["input_ids"] for it in items] == ref["input_ids"]
    assert [it["num_tokens"] for it in items] == ref["num_tokens"]


def test_node_state_is_chunk_start_plus_offset(word_tok):
    rows = _imdb_like(10)
    node = TokenizeNode(IterableWrapper(rows), word_tok, batch_size=4, keep_columns="all")
    loader = Loader(node)
    it = iter(loader)
    for _ in range(6):
        next(it)
    state = loader.state_dict()
    inner = state["root"] if "root" in state else state
    assert inner[TokenizeNode.OFFSET_KEY] == 2
    assert inner[TokenizeNode.REPORT_KEY]["examples"] == 6
    fresh = TokenizeNode(IterableWrapper(rows), word_tok, batch_size=4, keep_columns="all")
    fresh.reset(inner)
    assert fresh.report.examples == 6
    assert [x["id"] for x in fresh] == [r["id"] for r in rows[6:]]
    with pytest.raises(StateDictError):
        fresh.reset({"offset": 1})


@pytest.mark.parametrize("make", ["to_iterable_dataset", "from_generator"])
def test_node_contract_streaming_hf_dataset(word_tok, make):
    rows = _imdb_like(13)
    if make == "to_iterable_dataset":
        ids = datasets.Dataset.from_list(rows).to_iterable_dataset(num_shards=2)
    else:
        ids = datasets.IterableDataset.from_generator(_gen_rows, gen_kwargs={"n": 13})
    node = TokenizeNode(FreshIterableWrapper(ids), word_tok, batch_size=4, max_length=5, keep_columns=["id"])
    check_save_load_state(node, 6)
    assert [x["id"] for x in Loader(node)] == [r["id"] for r in rows]


def _gen_rows(n):
    yield from _imdb_like(n)


def test_node_tagging_contract(wp_tok):
    rows = [{"tokens": t, "tags": g, "sid": i} for i, (t, g) in enumerate(zip(TAGGED["tokens"] * 3,
                                                                              TAGGED["tags"] * 3))]
    node = TokenizeNode(IterableWrapper(rows), wp_tok, tokens_column="tokens", subword=True, batch_size=2,
                        keep_columns=["sid"])
    check_save_load_state(node, 4)
    items = list(Loader(node))
    ref = tokenize_tagged_dataset(datasets.Dataset.from_list(rows), wp_tok, subword=True)
    assert [x["labels"] for x in items] == ref["labels"]
    assert [x["input_ids"] for x in items] == ref["input_ids"]
    assert set(items[0]) == {"input_ids", "length", "num_tokens", "labels", "word_ids", "sid"}


def test_report_from_numpy():
    rep = TokenizeReport.from_arrays(np.array([3, 4, 4], np.int32), np.array([3, 9, 4], np.int32))
    assert rep == TokenizeReport(3, 11, 16, 1, 5, 9)
    assert rep.truncated_fraction == pytest.approx(1 / 3)
    assert TokenizeReport.from_arrays([], []) == TokenizeReport()


# ---- one Truncation object, the package's import paths -----------------------------------


def test_truncation_validates_with_the_public_messages(word_tok):
    from seqbucket_plugin.datapipes.tokenize.truncation import Truncation

    with pytest.raises(ValueError, match=r"truncation must be one of \('head', 'tail', 'head\+tail'\), got 'middle'"):
        Truncation(10, "middle")
    with pytest.raises(ValueError, match=r"head_fraction must be in \[0, 1\], got -0.1"):
        Truncation(10, "head+tail", -0.1)
    with pytest.raises(ValueError, match=r"max_length=2 leaves no room for text next to 2 special token\(s\)"):
        Truncation.of(word_tok, max_length=2, truncation="head", head_fraction=0.25, add_special_tokens=True)
    cut = Truncation.of(word_tok, max_length=3, truncation="tail", head_fraction=0.5, add_special_tokens=True)
    assert (cut.bos, cut.eos, cut.n_special, cut.budget) == (word_tok.bos_id, word_tok.eos_id, 2, 1)
    assert Truncation().budget is None and Truncation(5).n_special == 0
    with pytest.raises(AttributeError):
        cut.max_length = 4  # frozen: the map functions fingerprint it
    assert pickle.loads(pickle.dumps(cut)) == cut


def test_map_functions_fingerprint_the_same_in_another_process(tmp_path, word_tok):
    from datasets.fingerprint import Hasher

    from seqbucket_plugin.datapipes.tokenize.dataset import _TaggedMapFn, _TextMapFn
    from seqbucket_plugin.datapipes.tokenize.truncation import Truncation

    word_tok.save(tmp_path / "tok")
    build = textwrap.dedent(
        f"""
        from seqbucket_plugin.datapipes.tokenize import TextTokenizer
        from seqbucket_plugin.datapipes.tokenize.dataset import _TaggedMapFn, _TextMapFn
        from seqbucket_plugin.datapipes.tokenize.truncation import Truncation
        tok = TextTokenizer.load({str(tmp_path / "tok")!r})
        cut = Truncation.of(tok, max_length=7, truncation="head+tail", head_fraction=0.25, add_special_tokens=True)
        fns = [_TextMapFn(tok, "text", "label", ["id"], cut),
               _TaggedMapFn(tok, "tokens", "tags", False, [], cut, {{"B": 1, "A": 0}}, True)]
        """
    )
    code = build + "from datasets.fingerprint import Hasher\nprint(*[Hasher.hash(f) for f in fns])\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tok = TextTokenizer.load(tmp_path / "tok")
    cut = Truncation.of(tok, max_length=7, truncation="head+tail", head_fraction=0.25, add_special_tokens=True)
    here = [_TextMapFn(tok, "text", "label", ["id"], cut),
            _TaggedMapFn(tok, "tokens", "tags", False, [], cut, {"A": 0, "B": 1}, True)]
    assert out.stdout.split() == [Hasher.hash(f) for f in here]
    other = _TextMapFn(tok, "text", "label", ["id"], Truncation(7, "head", 0.25, cut.bos, cut.eos))
    assert Hasher.hash(other) != Hasher.hash(here[0])


def test_every_old_import_path_still_works():
    import seqbucket_plugin
    from seqbucket_plugin import datapipes, errors
    from seqbucket_plugin.datapipes import tokenize
    from seqbucket_plugin.training import tagging

    for name in tokenize.__all__:
        assert getattr(tokenize, name) is not None, name
    for name in ("SETTINGS_FILE", "TOKENIZER_FILE", "_head_size", "_read_settings", "resolve_pad_id"):
        assert hasattr(tokenize, name), name
    for name in ("TokenizerTypeError", "MissingPadTokenError"):
        cls = getattr(errors, name)
        assert cls is getattr(tokenize, name) is getattr(datapipes, name) is getattr(seqbucket_plugin, name)
        assert issubclass(cls, errors.SeqBucketError)
        assert cls("x", path="f.json", line=3).path == "f.json"
    assert issubclass(errors.TokenizerTypeError, TypeError) and issubclass(errors.MissingPadTokenError, ValueError)
    for name in ("CharIds", "CharVocab", "word_tokenizer"):  # data code: in the data layer only
        assert name in datapipes.__all__ and not hasattr(tagging, name), name
    assert datapipes.word_tokenizer is tokenize.word_tokenizer
