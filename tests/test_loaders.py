"""Tests for seqbucket_plugin.datapipes.loaders (files are written by the tests themselves)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqbucket_plugin.datapipes.loaders import (
    LoaderConfigError,
    LoadReport,
    load_classification,
    load_classification_splits,
    load_conll_columns,
    load_conllu,
    load_tagging,
    load_tagging_splits,
)
from seqbucket_plugin.errors import (
    DataFormatError,
    EmptyTextError,
    MissingColumnError,
    SeqBucketError,
    UnknownLabelError,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def _isolated_cache(tmp_path_factory):
    """Keep the loader cache (default: under HF_DATASETS_CACHE) out of the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
        yield


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


ROWS = [
    {"id": "a", "text": "good movie", "label": 1},
    {"id": "b", "text": "bad movie", "label": 0},
    {"id": "c", "text": "fine, I guess", "label": 1},
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` in the format given by the suffix (header row for csv/tsv)."""
    suffix = path.suffix
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix in (".jsonl", ".json"):
        write(path, "".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "," if suffix == ".csv" else "\t"
        quote = (lambda v: f'"{v}"' if "," in str(v) else str(v)) if sep == "," else str
        lines = [sep.join(rows[0])] + [sep.join(quote(v) for v in r.values()) for r in rows]
        write(path, "\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# Classification: formats and labels
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".jsonl", ".json"])
def test_every_format_gives_text_and_classlabel(tmp_path, suffix):
    ds = load_classification(write_rows(tmp_path / f"train{suffix}", ROWS))
    assert ds["text"] == [r["text"] for r in ROWS]
    assert ds["label"] == [1, 0, 1]
    assert ds["id"] == ["a", "b", "c"]
    assert ds.features["label"] == datasets.ClassLabel(names=["0", "1"])
    assert ds.cache_files, "the dataset must be memory-mapped from a cache file"


@pytest.mark.parametrize(("suffix", "sep"), [(".csv", ","), (".tsv", "\t")])
def test_headerless_delimited_with_column_names(tmp_path, suffix, sep):
    path = write(tmp_path / f"data{suffix}", f"pos{sep}first line is data\nneg{sep}second\n")
    ds = load_classification(path, column_names=["label", "text"])
    assert ds["text"] == ["first line is data", "second"]
    assert ds.features["label"].names == ["neg", "pos"]
    assert ds["label"] == [1, 0]


def test_tsv_has_no_quoting(tmp_path):
    path = write(tmp_path / "q.tsv", 'label\ttext\n1\the said "hi, there\n0\t"quoted"\n')
    assert load_classification(path)["text"] == ['he said "hi, there', '"quoted"']


def test_string_labels_sorted_and_other_columns_kept(tmp_path):
    rows = [
        {"text": "x", "label": "pos", "id": 1},
        {"text": "y", "label": "neg", "id": 2},
        {"text": "z", "label": "mid", "id": 3},
    ]
    ds = load_classification(write_rows(tmp_path / "s.jsonl", rows))
    assert ds.features["label"].names == ["mid", "neg", "pos"]
    assert ds["label"] == [2, 1, 0]
    assert ds["id"] == [1, 2, 3]


def test_numeric_looking_text_stays_string(tmp_path):
    ds = load_classification(write(tmp_path / "n.csv", "label,text\n1,123\n0,4.5\n"))
    assert ds["text"] == ["123", "4.5"]


def test_custom_columns_are_renamed(tmp_path):
    rows = [{"review": "great", "sentiment": "pos"}, {"review": "awful", "sentiment": "neg"}]
    ds = load_classification(
        write_rows(tmp_path / "r.parquet", rows), text_column="review", label_column="sentiment"
    )
    assert ds.column_names == ["text", "label"]
    assert ds["label"] == [1, 0]


def test_canonical_name_clash_is_an_error(tmp_path):
    rows = [{"review": "a", "text": "b", "label": 0}]
    with pytest.raises(DataFormatError, match="already has a 'text' column"):
        load_classification(write_rows(tmp_path / "c.parquet", rows), text_column="review")


def test_label_names_fix_string_ids_and_unknown_label_is_named(tmp_path):
    path = write(tmp_path / "dev.csv", "label,text\nneg,ok\npos,ok\nneutral,hmm\n")
    with pytest.raises(UnknownLabelError) as info:
        load_classification(path, label_names=["pos", "neg"])
    message = str(info.value)
    assert "'neutral'" in message and f"{path}:4" in message and "row 2" in message
    ds = load_classification(
        write(tmp_path / "ok.csv", "label,text\nneg,ok\npos,ok\n"), label_names=["pos", "neg"]
    )
    assert ds["label"] == [1, 0]
    assert ds.features["label"].names == ["pos", "neg"]


def test_int_labels_with_label_names(tmp_path):
    path = write_rows(tmp_path / "i.parquet", ROWS)
    ds = load_classification(path, label_names=["neg", "pos"])
    assert ds["label"] == [1, 0, 1] and ds.features["label"].names == ["neg", "pos"]
    with pytest.raises(UnknownLabelError, match=r"unknown label 1 \(row 0\)"):
        load_classification(path, label_names=["only"])


def test_int_label_names_cover_zero_to_max(tmp_path):
    rows = [{"text": "a", "label": 3}, {"text": "b", "label": 1}]
    ds = load_classification(write_rows(tmp_path / "g.jsonl", rows))
    assert ds.features["label"].names == ["0", "1", "2", "3"] and ds["label"] == [3, 1]


def test_parquet_classlabel_names_from_datasets_are_kept(tmp_path):
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    path = tmp_path / "hf.parquet"
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}, features=features).to_parquet(str(path))
    assert load_classification(path).features["label"].names == ["neg", "pos"]


@pytest.mark.parametrize(
    ("name", "content", "line", "match"),
    [
        ("float.csv", "label,text\n1,a\n0.5,b\n", 3, "found double"),
        ("bool.jsonl", '{"text": "a", "label": true}\n', 1, "found bool"),
        ("null.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n', 2, "missing label"),
        ("absent.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b"}\n', 3, "missing label"),
        ("empty_field.csv", "label,text\n1,a\n,b\n", 3, "missing label"),
        ("empty_str.csv", 'label,text\npos,a\n"",b\n', 3, "missing label"),
        ("negative.csv", "label,text\n1,a\n-1,b\n", 3, "negative integer label"),
    ],
)
def test_bad_labels_raise_data_format_error_with_line(tmp_path, name, content, line, match):
    path = write(tmp_path / name, content)
    with pytest.raises(DataFormatError, match=match) as info:
        load_classification(path)
    assert info.value.path == str(path) and info.value.line == line


def test_missing_column_lists_available_columns(tmp_path):
    path = write(tmp_path / "m.csv", "sentence,label\nhi,1\n")
    with pytest.raises(MissingColumnError) as info:
        load_classification(path)
    assert info.value.available == ["sentence", "label"]
    assert (
        "'text'" in str(info.value)
        and "['sentence', 'label']" in str(info.value)
        and str(path) in str(info.value)
    )
    with pytest.raises(MissingColumnError, match="'stars'"):
        load_classification(path, text_column="sentence", label_column="stars")


def test_non_string_text_column_is_rejected(tmp_path):
    with pytest.raises(DataFormatError, match="texts must be strings"):
        load_classification(write(tmp_path / "t.jsonl", '{"text": 5, "label": 1}\n'))


# --------------------------------------------------------------------------------------------------
# Classification: empty texts
# --------------------------------------------------------------------------------------------------

EMPTY_CSV = 'label,text\n1,fine\n0,"   "\n1,\n0,"\t"\n1,also fine\n'


def test_empty_texts_are_dropped_counted_and_logged(tmp_path, caplog):
    path = write(tmp_path / "e.csv", EMPTY_CSV)
    with caplog.at_level(logging.WARNING, logger="seqbucket_plugin.datapipes.loaders"):
        ds, report = load_classification(path, return_report=True)
    assert ds["text"] == ["fine", "also fine"] and ds["label"] == [1, 1]
    assert report == LoadReport(path=str(path), format="csv", rows_read=5, rows_kept=2, dropped_empty=3)
    assert "dropped 3 of 5 rows" in caplog.text and str(path) in caplog.text


def test_null_texts_count_as_empty(tmp_path):
    rows = [{"text": None, "label": 0}, {"text": "x", "label": 1}]
    ds, report = load_classification(write_rows(tmp_path / "n.parquet", rows), return_report=True)
    assert ds["text"] == ["x"] and report.dropped_empty == 1


def test_empty_text_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "e.csv", EMPTY_CSV)
    with pytest.raises(EmptyTextError) as info:
        load_classification(path, empty_policy="error")
    assert f"{path}:3:" in str(info.value) and "3 such rows" in str(info.value)
    jsonl = write(tmp_path / "e.jsonl", '{"text": "a", "label": 0}\n\n{"text": " ", "label": 0}\n')
    with pytest.raises(EmptyTextError, match=f"{jsonl}:3:"):
        load_classification(jsonl, empty_policy="error")


def test_empty_text_error_in_parquet_names_row(tmp_path):
    path = write_rows(tmp_path / "e.parquet", [{"text": "a", "label": 0}, {"text": "", "label": 0}])
    with pytest.raises(EmptyTextError, match=r"e\.parquet: empty or whitespace-only text \(row 1"):
        load_classification(path, empty_policy="error")


# --------------------------------------------------------------------------------------------------
# Classification: malformed files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "line", "match"),
    [
        ("extra.csv", "label,text\n1,a\n0,b,c\n", 3, "expected 2 fields, found 3"),
        ("short.csv", "label,text\n1,a\n0\n", 3, "expected 2 fields, found 1"),
        ("multiline.csv", 'label,text\n1,"two\nlines"\n0,x\n1,a,b\n', 5, "expected 2 fields, found 3"),
        ("short.tsv", "label\ttext\n1\ta\n0\n", 3, "expected 2 fields, found 1"),
        ("utf8.csv", b"label,text\n1,ok\n0,bad\xff\n", 3, "invalid UTF-8"),
        ("utf8.tsv", b"label\ttext\n1\tok\n0\tbad\xff\n", 3, "invalid UTF-8"),
        (
            "bad.jsonl",
            '{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n{"text": bad}\n',
            4,
            "invalid JSON",
        ),
        ("trunc.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "lab\n', 2, "invalid JSON"),
        ("utf8.jsonl", b'{"text": "a", "label": 1}\n{"text": "\xff", "label": 1}\n', 2, "invalid UTF-8"),
        (
            "mixed.jsonl",
            '{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n',
            2,
            "'label' is a string here",
        ),
        ("array.json", '[{"text": "a", "label": 1}]\n', 1, "expected a JSON object per line"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, name, content, line, match):
    path = write(tmp_path / name, content)
    with pytest.raises(DataFormatError, match=match) as info:
        load_classification(path)
    assert info.value.path == str(path) and info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_headerless_csv_row_count_error(tmp_path):
    path = write(tmp_path / "h.csv", "1,a\n0,b,c\n")
    with pytest.raises(DataFormatError) as info:
        load_classification(path, column_names=["label", "text"])
    assert info.value.line == 2


@pytest.mark.parametrize("name", ["empty.csv", "empty.jsonl", "empty.parquet"])
def test_empty_or_unreadable_files(tmp_path, name):
    with pytest.raises(DataFormatError):
        load_classification(write(tmp_path / name, ""))


def test_header_only_csv_gives_empty_dataset(tmp_path):
    ds = load_classification(write(tmp_path / "h.csv", "label,text\n"))
    assert ds.num_rows == 0 and ds.features["label"].names == []


def test_config_errors(tmp_path):
    path = write_rows(tmp_path / "d.csv", ROWS)
    with pytest.raises(LoaderConfigError, match="empty_policy"):
        load_classification(path, empty_policy="keep")
    with pytest.raises(LoaderConfigError, match="suffix"):
        load_classification(write(tmp_path / "d.txt", "label,text\n1,a\n"))
    assert load_classification(tmp_path / "d.txt", format="csv")["text"] == ["a"]
    with pytest.raises(LoaderConfigError, match="unique"):
        load_classification(path, label_names=["a", "a"])
    with pytest.raises(LoaderConfigError, match="column_names"):
        load_classification(write_rows(tmp_path / "d.jsonl", ROWS), column_names=["label", "text"])
    with pytest.raises(FileNotFoundError):
        load_classification(tmp_path / "missing.csv")
    assert issubclass(LoaderConfigError, SeqBucketError)


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def test_second_load_hits_cache_and_edit_invalidates_it(tmp_path):
    path = write(tmp_path / "c.csv", "label,text\n1,a\n0,\n")
    first, r1 = load_classification(path, return_report=True, cache_dir=tmp_path / "cache")
    second, r2 = load_classification(path, return_report=True, cache_dir=tmp_path / "cache")
    assert not r1.from_cache and r2.from_cache
    assert r2.dropped_empty == 1 and second["text"] == first["text"] == ["a"]
    assert second.cache_files == first.cache_files
    write(path, "label,text\n1,a\n0,b\n1,c\n")
    third, r3 = load_classification(path, return_report=True, cache_dir=tmp_path / "cache")
    assert not r3.from_cache and third["text"] == ["a", "b", "c"]


def test_map_results_are_cached_next_to_the_dataset(tmp_path):
    ds = load_classification(write_rows(tmp_path / "m.jsonl", ROWS), cache_dir=tmp_path / "cache")
    mapped = ds.map(lambda batch: {"n": [len(t) for t in batch["text"]]}, batched=True)
    assert mapped.cache_files and Path(mapped.cache_files[0]["filename"]).parent == tmp_path / "cache"


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def test_classification_splits_use_training_label_names(tmp_path):
    train = write(tmp_path / "train.csv", "label,text\npos,a\nneg,b\n")
    dev = write_rows(tmp_path / "dev.jsonl", [{"text": "c", "label": "pos"}])
    splits, reports = load_classification_splits(train, dev, return_report=True)
    assert set(splits) == {"train", "dev"} and set(reports) == {"train", "dev"}
    assert splits["dev"].features["label"].names == ["neg", "pos"] and splits["dev"]["label"] == [1]
    test = write(tmp_path / "test.tsv", "label\ttext\nneutral\tc\n")
    with pytest.raises(UnknownLabelError, match=f"{test}:2: unknown label 'neutral'"):
        load_classification_splits(train, test_file=test)


# --------------------------------------------------------------------------------------------------
# CoNLL-U
# --------------------------------------------------------------------------------------------------

CONLLU = """\
# newdoc id = doc1
# sent_id = s1
# text = Don't go.
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t3:conj\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = s2
1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_"""


def test_conllu_skips_comments_ranges_and_empty_nodes(tmp_path):
    ds, report = load_conllu(write(tmp_path / "a.conllu", CONLLU), return_report=True)
    assert ds["tokens"] == [["Do", "n't", "go", "."], ["Hi"]]
    assert ds["sentence_id"] == ["s1", "s2"]
    names = ds.features["tags"].feature.names
    assert names == ["AUX", "INTJ", "PART", "PUNCT", "VERB"]
    assert [[names[i] for i in s] for s in ds["tags"]] == [["AUX", "PART", "VERB", "PUNCT"], ["INTJ"]]
    assert report.rows_kept == 2 and report.tokens == 5
    assert report.skipped_lines == {"comment": 4, "multiword": 1, "empty_node": 1}


def test_conllu_xpos_keeps_underscore_tag(tmp_path):
    ds = load_conllu(write(tmp_path / "a.conllu", CONLLU + "\n\n\n"), tag="xpos")
    names = ds.features["tags"].feature.names
    assert names == [".", "RB", "VB", "VBP", "_"]
    assert [[names[i] for i in s] for s in ds["tags"]] == [["VBP", "RB", "VB", "."], ["_"]]


def test_conllu_without_sent_id_has_no_sentence_id_column(tmp_path):
    ds = load_conllu(
        write(tmp_path / "b.conllu", "1\ta\ta\tX\tX\t_\t0\troot\t_\t_\n\n\n1\tb\tb\tX\tX\t_\t0\troot\t_\t_\n")
    )
    assert ds.column_names == ["tokens", "tags"] and ds["tokens"] == [["a"], ["b"]]


def test_conllu_comment_only_block_is_dropped_and_counted(tmp_path, caplog):
    path = write(tmp_path / "c.conllu", "# sent_id = x\n\n1\ta\ta\tX\tX\t_\t0\troot\t_\t_\n")
    with caplog.at_level(logging.WARNING):
        ds, report = load_conllu(path, return_report=True)
    assert ds.num_rows == 1 and report.dropped_empty == 1 and report.rows_read == 2
    assert "dropped 1 of 2 sentences" in caplog.text


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ("2\tb\tb\tX\tX\t_\t0\troot\t_", "expected 10 tab-separated fields, found 9"),
        ("2 b b X X _ 0 root _ _", "found 1"),
        ("x\tb\tb\tX\tX\t_\t0\troot\t_\t_", "token id 'x' is not an integer"),
        ("2-\tb\tb\tX\tX\t_\t0\troot\t_\t_", "token id '2-'"),
        ("3\tb\tb\tX\tX\t_\t0\troot\t_\t_", "out of sequence, expected 2"),
        ("2\t\tb\tX\tX\t_\t0\troot\t_\t_", "empty FORM or tag"),
    ],
)
def test_conllu_malformed_line_names_file_and_line(tmp_path, bad_line, match):
    path = write(tmp_path / "bad.conllu", f"# c\n1\ta\ta\tX\tX\t_\t0\troot\t_\t_\n{bad_line}\n")
    with pytest.raises(DataFormatError, match=match) as info:
        load_conllu(path)
    assert info.value.line == 3 and str(info.value).startswith(f"{path}:3: ")


def test_conllu_invalid_utf8_names_line(tmp_path):
    path = write(
        tmp_path / "u.conllu", b"1\ta\ta\tX\tX\t_\t0\troot\t_\t_\n2\t\xff\ta\tX\tX\t_\t0\troot\t_\t_\n"
    )
    with pytest.raises(DataFormatError, match="invalid UTF-8") as info:
        load_conllu(path)
    assert info.value.line == 2


def test_conllu_unknown_tag_with_label_names(tmp_path):
    path = write(tmp_path / "a.conllu", CONLLU)
    with pytest.raises(UnknownLabelError, match=f"{path}:12: unknown tag 'INTJ'"):
        load_conllu(path, label_names=["AUX", "PART", "PUNCT", "VERB"])
    with pytest.raises(LoaderConfigError, match="tag must be"):
        load_conllu(path, tag="deprel")


# --------------------------------------------------------------------------------------------------
# CoNLL columns
# --------------------------------------------------------------------------------------------------

CONLL2003 = """\
-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
-DOCSTART- -X- -X- O

#\tSYM\tO\tO
"""


def test_conll_columns_skip_docstart(tmp_path):
    ds, report = load_conll_columns(write(tmp_path / "t.txt", CONLL2003), return_report=True)
    assert ds["tokens"] == [["EU", "rejects", "German"], ["Peter"], ["#"]]
    names = ds.features["tags"].feature.names
    assert names == ["B-MISC", "B-ORG", "B-PER", "O"]
    assert [[names[i] for i in s] for s in ds["tags"]] == [["B-ORG", "O", "B-MISC"], ["B-PER"], ["O"]]
    assert report.skipped_lines == {"docstart": 2} and report.tokens == 5 and report.dropped_empty == 0


def test_conll_columns_choose_columns(tmp_path):
    ds = load_conll_columns(write(tmp_path / "t.conll", CONLL2003), tag_column=1)
    assert ds.features["tags"].feature.names == ["JJ", "NNP", "SYM", "VBZ"]


def test_conll_columns_too_few_fields(tmp_path):
    path = write(tmp_path / "t.txt", "EU B-ORG\nrejects\n")
    with pytest.raises(DataFormatError, match="expected at least 2 whitespace-separated fields") as info:
        load_conll_columns(path)
    assert info.value.line == 2
    with pytest.raises(DataFormatError, match="at least 4") as info:
        load_conll_columns(path, tag_column=3)
    assert info.value.line == 1


def test_conll_columns_unknown_tag(tmp_path):
    path = write(tmp_path / "t.txt", CONLL2003)
    with pytest.raises(UnknownLabelError, match=f"{path}:5: unknown tag 'B-MISC'"):
        load_conll_columns(path, label_names=["O", "B-ORG", "B-PER"])


def test_tagging_dispatch_and_splits(tmp_path):
    conllu = write(tmp_path / "a.conllu", CONLLU)
    assert load_tagging(conllu)["tokens"][1] == ["Hi"]
    assert load_tagging(write(tmp_path / "b.txt", CONLL2003))["tokens"][1] == ["Peter"]
    assert load_tagging(write(tmp_path / "c.dat", CONLLU), format="conllu").num_rows == 2
    with pytest.raises(LoaderConfigError):
        load_tagging(conllu, format="iob")
    train = write(tmp_path / "train.txt", "a O\nb B-X\n")
    dev = write(tmp_path / "dev.txt", "c B-X\n")
    splits = load_tagging_splits(train, dev)
    assert splits["dev"].features["tags"].feature.names == ["B-X", "O"] and splits["dev"]["tags"] == [[0]]
    with pytest.raises(UnknownLabelError, match="unknown tag 'I-X'"):
        load_tagging_splits(train, test_file=write(tmp_path / "test.txt", "c I-X\n"))


# --------------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------------

_field_text = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=6)
_tag_text = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zs")), min_size=1, max_size=4)
_sentence = st.lists(st.tuples(_field_text, _tag_text, _tag_text), min_size=1, max_size=6)


def _conllu_block(index: int, sentence: list[tuple[str, str, str]], with_extras: bool) -> str:
    lines = [f"# sent_id = s{index}", "# text = whatever"] if with_extras else []
    for i, (form, upos, xpos) in enumerate(sentence, 1):
        if with_extras and i == 1 and len(sentence) > 1:
            lines.append("1-2\tmw\t_\t_\t_\t_\t_\t_\t_\t_")
        lines.append(f"{i}\t{form}\t_\t{upos}\t{xpos}\t_\t0\tdep\t_\t_")
        if with_extras and i == 1:
            lines.append("1.1\tnode\t_\tX\tX\t_\t_\t_\t_\t_")
    return "\n".join(lines)


@settings(max_examples=40, deadline=None)
@given(
    sentences=st.lists(_sentence, min_size=1, max_size=5),
    with_extras=st.booleans(),
    trailing_blank=st.booleans(),
)
def test_conllu_round_trip(sentences, with_extras, trailing_blank):
    text = "\n\n".join(_conllu_block(i, s, with_extras) for i, s in enumerate(sentences)) + (
        "\n\n" if trailing_blank else "\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "p.conllu", text)
        for tag, column in (("upos", 1), ("xpos", 2)):
            ds = load_conllu(path, tag=tag, cache_dir=Path(tmp) / "cache")
            names = ds.features["tags"].feature.names
            assert ds["tokens"] == [[t[0] for t in s] for s in sentences]
            assert [[names[i] for i in s] for s in ds["tags"]] == [[t[column] for t in s] for s in sentences]
            assert names == sorted({t[column] for s in sentences for t in s})
        if with_extras:
            assert ds["sentence_id"] == [f"s{i}" for i in range(len(sentences))]


_garbage_line = st.one_of(
    st.text(st.sampled_from("0123456789-.#\t _aZé\u2028 "), max_size=30),
    st.lists(st.text(st.sampled_from("0123.-a_"), max_size=3), min_size=8, max_size=11).map("\t".join),
)


@settings(max_examples=80, deadline=None)
@given(lines=st.lists(_garbage_line, max_size=12))
def test_garbage_parses_or_raises_located_error(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "g.conllu", "\n".join(lines) + "\n")
        for load in (load_conllu, load_conll_columns):
            try:
                ds = load(path, cache_dir=Path(tmp) / "cache")
            except DataFormatError as exc:
                assert exc.path == str(path) and exc.line is not None and 1 <= exc.line <= max(len(lines), 1)
            else:
                assert ds.num_rows == len(ds["tags"])


# --------------------------------------------------------------------------------------------------
# Real data (../shared/data next to the project; skipped when absent)
# --------------------------------------------------------------------------------------------------


def _shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"real data not available: {os.path.join('..', 'shared', 'data', *parts)} is absent")
    return path


@pytest.mark.real_data
def test_real_imdb_train_parquet(tmp_path):
    path = _shared_file("imdb", "train.parquet")
    start = time.perf_counter()
    ds, report = load_classification(path, return_report=True, cache_dir=tmp_path)
    elapsed = time.perf_counter() - start
    assert ds.num_rows == 25_000 and report.dropped_empty == 0
    assert ds.features["label"].names == ["0", "1"]
    counts = pc.value_counts(ds.data.column("label")).to_pylist()
    assert sorted((c["values"], c["counts"]) for c in counts) == [(0, 12_500), (1, 12_500)]
    assert {"id", "rating"} <= set(ds.column_names)
    assert elapsed < 30, f"cold load took {elapsed:.1f}s"


@pytest.mark.real_data
def test_real_ud_ewt_train_conllu(tmp_path):
    path = _shared_file("ud_english_ewt", "train.conllu")
    start = time.perf_counter()
    ds, report = load_conllu(path, return_report=True, cache_dir=tmp_path)
    elapsed = time.perf_counter() - start
    assert ds.num_rows == 12_544 and report.tokens == 204_577
    assert pc.sum(pc.list_value_length(ds.data.column("tokens"))).as_py() == 204_577
    assert len(ds.features["tags"].feature.names) == 17
    assert ds["sentence_id"][0].endswith("-0001")
    assert elapsed < 30, f"cold load took {elapsed:.1f}s"


@pytest.mark.real_data
def test_real_ud_ewt_splits_share_training_tags(tmp_path):
    train = _shared_file("ud_english_ewt", "train.conllu")
    dev, test = _shared_file("ud_english_ewt", "dev.conllu"), _shared_file("ud_english_ewt", "test.conllu")
    splits, reports = load_tagging_splits(train, dev, test, return_report=True, cache_dir=tmp_path)
    assert (splits["dev"].num_rows, reports["dev"].tokens) == (2_001, 25_147)
    assert (splits["test"].num_rows, reports["test"].tokens) == (2_077, 25_094)
    assert splits["test"].features["tags"] == splits["train"].features["tags"]


def test_tagging_options_of_the_other_format_are_refused(tmp_path):
    """``tag`` applies to CoNLL-U, ``tag_column`` to column files; each used to be ignored by the other."""
    conllu = write(tmp_path / "a.conllu", CONLLU)
    columns = write(tmp_path / "b.txt", CONLL2003)
    with pytest.raises(LoaderConfigError, match="is a CoNLL-U file: it takes tag='upos' or 'xpos', not tag_column=3"):
        load_tagging(conllu, tag_column=3)
    with pytest.raises(LoaderConfigError, match="is a CoNLL column file: it takes an integer tag_column"):
        load_tagging(columns, tag="xpos")
    assert load_tagging(conllu, tag="upos")["tokens"][1] == ["Hi"]
    assert load_tagging(columns, tag_column=-1)["tokens"][1] == ["Peter"]


def test_a_column_file_line_missing_a_column_counted_from_the_end(tmp_path):
    """With tag_column=-1 a line without its tag would take its POS as the tag (a new class, no warning)."""
    path = write(tmp_path / "t.txt", "EU NNP B-ORG\nrejects VBZ O\n\nPeter NNP\nsaid VBD O\n")
    with pytest.raises(DataFormatError, match="found 2 whitespace-separated fields, but line 1 has 3") as info:
        load_conll_columns(path)
    assert (info.value.path, info.value.line) == (str(path), 4)
    with pytest.raises(DataFormatError, match="expected at least 3 whitespace-separated fields") as info:
        load_conll_columns(path, tag_column=2)  # counted from the start: too few fields, as before
    assert info.value.line == 4
    assert load_conll_columns(write(tmp_path / "ok.txt", "EU NNP B-ORG\n\nPeter NNP B-PER\n"))["tags"]


@pytest.mark.parametrize("name,content", [("empty.jsonl", None), ("header.csv", "text,label\n"),
                                          ("blank.conll", "\n\n"), ("docstart.conll", "-DOCSTART- O\n\n")])
def test_a_split_file_without_examples_is_an_error(tmp_path, name, content):
    train = write(tmp_path / name, content or "")
    load = load_tagging_splits if name.endswith(".conll") else load_classification_splits
    with pytest.raises((DataFormatError, SeqBucketError)) as info:
        load(train)
    assert str(train) in str(info.value) and "column 'length'" not in str(info.value)


def test_every_located_error_carries_path_and_line(tmp_path):
    """One convention (issue 14): the file and line of a bad-input error are attributes, not only text."""
    from seqbucket_plugin.training.cli import RecipeError

    cases = [
        (lambda: load_classification(write(tmp_path / "d.csv", "label,text\nneg,ok\nneutral,x\n"),
                                     label_names=["neg"]), UnknownLabelError, "d.csv", 3),
        (lambda: load_classification(write(tmp_path / "e.csv", "label,text\nneg,ok\npos, \n"), empty_policy="error"),
         EmptyTextError, "e.csv", 3),
        (lambda: load_conll_columns(write(tmp_path / "t.txt", "a O\nb X\n"), label_names=["O"]),
         UnknownLabelError, "t.txt", 2),
        (lambda: load_classification(write(tmp_path / "m.csv", "label,body\nneg,ok\n")), MissingColumnError,
         "m.csv", None),
    ]
    for load, kind, name, line in cases:
        with pytest.raises(kind) as info:
            load()
        assert isinstance(info.value, SeqBucketError)
        assert info.value.path == str(tmp_path / name) and info.value.line == line, (kind, info.value)
    assert SeqBucketError("plain").path is None and SeqBucketError("plain").line is None
    error = RecipeError("--predictions x: cannot write", "x")
    assert (str(error), error.path, error.line) == ("--predictions x: cannot write", "x", None)


@pytest.mark.parametrize(
    "name, content, load, kind, line, message",
    [
        ("row.csv", "label,text\nneg,ok\npos,a,b\n", load_classification, DataFormatError, 3,
         "expected 2 fields, found 3"),
        ("bad.jsonl", '{"label": "neg", "text": "ok"}\n\n{"label": "pos", "text": }\n', load_classification,
         DataFormatError, 3, "invalid JSON"),
        ("short.conllu", "# sent_id = s1\n1\tHi\t_\tINTJ\t_\t_\t_\t_\t_\t_\n2\tthere\tADV\n", load_conllu,
         DataFormatError, 3, "expected 10 tab-separated fields, found 3"),
        ("short.txt", "a O\nb\n", load_conll_columns, DataFormatError, 2, "expected at least 2"),
        ("nolabel.csv", "text,category\nok,neg\n", load_classification, MissingColumnError, None,
         "column 'label' not found"),
        ("nolabel.jsonl", '{"text": "ok"}\n', load_classification, MissingColumnError, None,
         "column 'label' not found"),
    ],
)
def test_file_errors_carry_path_and_line_as_attributes(tmp_path, name, content, load, kind, line, message):
    path = write(tmp_path / name, content)
    with pytest.raises(kind) as info:
        load(path)
    error = info.value
    assert isinstance(error, SeqBucketError) and message in str(error)
    assert (error.path, error.line) == (str(path), line)
    assert str(path) in str(error)
    if line is not None:
        assert str(error).startswith(f"{path}:{line}: ")


def test_loader_config_errors_about_a_file_carry_its_path(tmp_path):
    unknown = write(tmp_path / "data.xyz", "text,label\nok,0\n")
    with pytest.raises(LoaderConfigError, match="cannot infer the format") as info:
        load_classification(unknown)
    assert (info.value.path, info.value.line) == (str(unknown), None)
    conllu = write(tmp_path / "a.conllu", "1\tHi\t_\tINTJ\t_\t_\t_\t_\t_\t_\n")
    with pytest.raises(LoaderConfigError) as info:
        load_tagging(conllu, tag_column=3)
    assert info.value.path == str(conllu)
    with pytest.raises(LoaderConfigError) as info:  # an argument error names no file
        load_classification(unknown, format="xml")
    assert info.value.path is None


def test_loader_and_pipe_errors_live_in_the_one_hierarchy():
    import seqbucket_plugin
    from seqbucket_plugin import datapipes, errors
    from seqbucket_plugin.datapipes import loaders, pipe

    for name in ("LoaderConfigError", "WorkerSplitError"):
        error = getattr(errors, name)
        assert issubclass(error, errors.SeqBucketError) and error.__module__ == "seqbucket_plugin.errors"
        assert getattr(seqbucket_plugin, name) is error and getattr(datapipes, name) is error
    assert loaders.LoaderConfigError is errors.LoaderConfigError and issubclass(errors.LoaderConfigError, ValueError)
    assert pipe.WorkerSplitError is errors.WorkerSplitError and issubclass(errors.WorkerSplitError, RuntimeError)
    assert all(hasattr(loaders, name) for name in loaders.__all__)
