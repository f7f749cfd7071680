"""Hostile and malformed inputs (issue 7, "Hardening"): every case parses or raises the plugin's own error.

The contract checked here: a loader, tokenizer file or state dict given bad input either succeeds or raises a
documented :class:`~seqbucket_plugin.errors.SeqBucketError` subclass -- never a bare ``KeyError`` /
``IndexError`` / ``UnicodeDecodeError`` / pyarrow error from deep inside, never a crash, never a hang
(each test carries a ``pytest.mark.timeout``).  ``DataFormatError`` must carry ``.path`` and, where the
problem is on a line, ``.line``.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchdata.nodes import IterableWrapper, Loader

from seqbucket_plugin.datapipes.bucketing import BucketBatcher
from seqbucket_plugin.datapipes.loaders import (
    LoaderConfigError,
    load_classification,
    load_conll_columns,
    load_conllu,
)
from seqbucket_plugin.datapipes.pipe import Pipe
from seqbucket_plugin.datapipes.sources import MapDatasetSource
from seqbucket_plugin.datapipes.tokenize import SETTINGS_FILE, TOKENIZER_FILE, TextTokenizer, TokenizeNode
from seqbucket_plugin.errors import (
    DataFormatError,
    EmptyTextError,
    MissingColumnError,
    SeqBucketError,
    StateDictError,
    UnknownLabelError,
)

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, scope="module")
def _isolated_cache(tmp_path_factory):
    """Keep the loader cache (default: under HF_DATASETS_CACHE) out of the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
        yield


_counter = iter(range(10**9))


def write(folder: Path, name: str, content: str | bytes) -> Path:
    """A fresh file (unique name, so hypothesis examples never hit each other's cache entries)."""
    path = folder / f"{next(_counter)}-{name}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def outcome(load, path: Path, **kwargs):
    """Run a loader: the dataset, or the plugin error it raised (anything else fails the test)."""
    try:
        return load(path, **kwargs)
    except SeqBucketError as error:
        if isinstance(error, DataFormatError):
            assert error.path == str(path), error
            assert str(error).startswith(str(path)), error
            if error.line is not None:
                assert error.line >= 1 and str(error).startswith(f"{path}:{error.line}: "), error
        return error


def expect(load, path: Path, error_type, line: int | None = None, match: str | None = None, **kwargs):
    result = outcome(load, path, **kwargs)
    assert isinstance(result, error_type), f"{path.name}: expected {error_type.__name__}, got {result!r}"
    if line is not None:
        assert result.line == line, f"{path.name}: {result}"
    if match is not None:
        assert match in str(result), f"{path.name}: {result}"
    return result


# --------------------------------------------------------------------------------------------------
# Classification files: fixed hostile cases (error type, line, message shape)
# --------------------------------------------------------------------------------------------------

OK = None  # parses

CLASSIFICATION_CASES = [
    # name, content, expected (OK | (error type, line or None, message fragment))
    ("empty.jsonl", b"", (DataFormatError, None, "no JSON records")),
    ("blank.jsonl", b"\n \n\t\n", (DataFormatError, None, "no JSON records")),
    ("bom.jsonl", b'\xef\xbb\xbf{"text": "a", "label": 1}\n', OK),
    ("bom_blank.jsonl", b'\xef\xbb\xbf\n{"text": "a", "label": 1}\n', OK),
    ("crlf.jsonl", b'{"text": "a", "label": 1}\r\n{"text": "b", "label": 0}\r\n', OK),
    ("cr_only.jsonl", b'{"text": "a", "label": 1}\r{"text": "b", "label": 0}\r', (DataFormatError, 1, "Extra data")),
    ("two_per_line.jsonl", b'{"text": "a", "label": 1} {"text": "b", "label": 0}\n', (DataFormatError, 1, "Extra data")),
    ("null_first.jsonl", b'null\n{"text": "a", "label": 1}\n', (DataFormatError, 1, "found NoneType")),
    ("null_later.jsonl", b'{"text": "a", "label": 1}\nnull\n', (DataFormatError, 2, "JSON object per line")),
    ("scalar.jsonl", b"1\n", (DataFormatError, 1, "JSON object per line")),
    ("string.jsonl", b'"text"\n', (DataFormatError, 1, "JSON object per line")),
    ("array_later.jsonl", b'{"text": "a", "label": 1}\n[1, 2]\n', (DataFormatError, 2, "JSON object per line")),
    ("float_label.jsonl", b'{"text": "a", "label": 1.5}\n', (DataFormatError, 1, "found double")),
    ("bool_label.jsonl", b'{"text": "a", "label": true}\n', (DataFormatError, 1, "found bool")),
    ("list_label.jsonl", b'{"text": "a", "label": [1]}\n', (DataFormatError, 1, "found list")),
    ("dict_label.jsonl", b'{"text": "a", "label": {"x": 1}}\n', (DataFormatError, 1, "found struct")),
    ("null_label.jsonl", b'{"text": "a", "label": null}\n', (DataFormatError, 1, "missing label")),
    ("mixed_label.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n', (DataFormatError, 2, "is a string here")),
    ("bool_int_label.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": false}\n', (DataFormatError, 2, "is a boolean here")),
    ("huge_int_label.jsonl", b'{"text": "a", "label": 1099511627776}\n', (DataFormatError, 1, "need label_names")),
    ("int_overflow.jsonl", b'{"text": "a", "label": 99999999999999999999999}\n', (DataFormatError, 1, "found double")),
    ("float_overflow.jsonl", b'{"text": "a", "label": 1e400}\n', (DataFormatError, 1, "float64 range")),
    ("neg_label.jsonl", b'{"text": "a", "label": -1}\n', (DataFormatError, 1, "negative integer label")),
    ("dup_key.jsonl", b'{"text": "a", "label": 1, "label": 2}\n', (DataFormatError, 1, "appears twice")),
    ("surrogate.jsonl", b'{"text": "\\ud800", "label": 1}\n', (DataFormatError, 1, "surrogate")),
    ("raw_nul.jsonl", b'{"text": "a\x00b", "label": 1}\n', (DataFormatError, 1, "invalid JSON")),
    ("nul_line.jsonl", b'{"text": "a", "label": 1}\n\x00\n', (DataFormatError, 2, "")),
    ("escaped_nul.jsonl", b'{"text": "a\\u0000b", "label": 1}\n', OK),
    ("latin1.jsonl", b'{"text": "caf\xe9", "label": 1}\n', (DataFormatError, 1, "invalid UTF-8")),
    ("invalid_utf8.jsonl", b'{"text": "a", "label": 1}\n{"text": "\xff\xfe", "label": 1}\n', (DataFormatError, 2, "invalid UTF-8")),
    ("latin1_key.jsonl", b'{"t\xe9xt": "a", "label": 1}\n', (DataFormatError, 1, "invalid UTF-8")),
    ("truncated.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "la', (DataFormatError, 2, "invalid JSON")),
    ("text_int.jsonl", b'{"text": 5, "label": 1}\n', (DataFormatError, 1, "texts must be strings")),
    ("text_list.jsonl", b'{"text": ["a"], "label": 1}\n', (DataFormatError, 1, "texts must be strings")),
    ("no_text.jsonl", b'{"label": 1}\n', (MissingColumnError, None, "'text'")),
    ("empty_object.jsonl", b"{}\n", (MissingColumnError, None, "'text'")),
    ("deep_text.jsonl", b'{"text": ' + b"[" * 20_000 + b"]" * 20_000 + b', "label": 1}\n', (DataFormatError, 1, "nested deeper")),
    ("deep_extra.jsonl", b'{"text": "a", "label": 1, "x": ' + b'{"a": ' * 20_000 + b"1" + b"}" * 20_000 + b"}\n", (DataFormatError, 1, "nested deeper")),
    ("brackets_in_text.jsonl", b'{"text": "' + b"[" * 20_000 + b'", "label": 1}\n', OK),
    ("empty.csv", b"", (DataFormatError, None, "")),
    ("header_only.csv", b"text,label\n", OK),
    ("header_blank.csv", b"text,label\n\n\n", OK),
    ("blank.csv", b"\n\n\n", (DataFormatError, None, "")),
    ("bom.csv", b"\xef\xbb\xbftext,label\na,1\n", OK),
    ("crlf.csv", b"text,label\r\na,1\r\nb,0\r\n", OK),
    ("extra_field.csv", b"text,label\na,1\nb,0,x\n", (DataFormatError, 3, "expected 2 fields, found 3")),
    ("missing_field.csv", b"text,label\na,1\nb\n", (DataFormatError, 3, "expected 2 fields, found 1")),
    ("unterminated.csv", b'text,label\n"a,1\n', (DataFormatError, 2, "")),
    ("latin1.csv", b"text,label\nok,1\ncaf\xe9,0\n", (DataFormatError, 3, "invalid UTF-8")),
    ("latin1_header.csv", b"t\xe9xt,label\na,1\n", (DataFormatError, 1, "invalid UTF-8")),
    ("nul.csv", b"text,label\na\x00b,1\n", OK),
    ("float_label.csv", b"text,label\na,1\nb,0.5\n", (DataFormatError, 3, "found double")),
    ("bool_label.csv", b"text,label\na,true\n", (DataFormatError, 2, "found bool")),
    ("dup_header.csv", b"text,text\na,1\n", (MissingColumnError, None, "'label'")),
    ("extra_tab.tsv", b"text\tlabel\na\t1\t\n", (DataFormatError, 2, "expected 2 fields, found 3")),
    ("missing_tab.tsv", b"text\tlabel\na 1\n", (DataFormatError, 2, "expected 2 fields, found 1")),
    ("latin1_header.tsv", b"t\xe9xt\tlabel\na\t1\n", (DataFormatError, 1, "invalid UTF-8")),
    ("crlf.tsv", b"text\tlabel\r\na\t1\r\n", OK),
    ("not_parquet.parquet", b"text,label\na,1\n", (DataFormatError, None, "parquet")),
    ("corrupt.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1", (DataFormatError, None, "parquet")),
    ("empty.parquet", b"", (DataFormatError, None, "parquet")),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "content", "expected"), CLASSIFICATION_CASES, ids=[c[0] for c in CLASSIFICATION_CASES])
def test_hostile_classification_file(tmp_path, name, content, expected):
    path = write(tmp_path, name, content)
    if expected is OK:
        result = outcome(load_classification, path)
        assert isinstance(result, datasets.Dataset), f"{name}: {result!r}"
        assert result.column_names[:2] == ["text", "label"]
        return
    error_type, line, match = expected
    expect(load_classification, path, error_type, line, match)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "conllu", "conll"])
def test_five_megabyte_line(tmp_path, fmt):
    """A single 5 MB line parses (it is larger than pyarrow's default CSV block)."""
    big = "x" * 5_000_000
    if fmt == "jsonl":
        ds = load_classification(write(tmp_path, "long.jsonl", json.dumps({"text": big, "label": 1}) + "\n"))
        assert len(ds[0]["text"]) == 5_000_000
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        ds = load_classification(write(tmp_path, f"long.{fmt}", f"text{sep}label\n{big}{sep}1\nb{sep}0\n"))
        assert [len(t) for t in ds["text"]] == [5_000_000, 1]
    elif fmt == "conllu":
        ds = load_conllu(write(tmp_path, "long.conllu", f"1\t{big}\t_\tX\t_\t_\t_\t_\t_\t_\n"))
        assert len(ds[0]["tokens"][0]) == 5_000_000
    else:
        ds = load_conll_columns(write(tmp_path, "long.txt", f"{big} O\n"))
        assert len(ds[0]["tokens"][0]) == 5_000_000


@pytest.mark.timeout(60)
def test_integer_label_types_in_parquet(tmp_path):
    """uint64 labels past int64 and other exotic label columns end in plugin errors, not ArrowInvalid."""
    cases = [
        (pa.array([2**63], pa.uint64()), UnknownLabelError, ["a", "b"]),
        (pa.array([2**63], pa.uint64()), DataFormatError, None),
        (pa.array([3], pa.uint8()), UnknownLabelError, ["a", "b"]),
        (pa.array([1.5]), DataFormatError, None),
        (pa.array([None], pa.int64()), DataFormatError, None),
        (pa.array([[1]]), DataFormatError, None),
    ]
    for labels, error_type, names in cases:
        path = tmp_path / f"{next(_counter)}.parquet"
        pq.write_table(pa.table({"text": ["a"], "label": labels}), path)
        expect(load_classification, path, error_type, label_names=names)
    path = tmp_path / "u8.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": pa.array([0, 1], pa.uint8())}), path)
    assert load_classification(path)["label"] == [0, 1]


@pytest.mark.timeout(60)
def test_bad_loader_arguments_raise_config_error(tmp_path):
    jsonl = write(tmp_path, "ok.jsonl", '{"text": "a", "label": 1}\n')
    conll = write(tmp_path, "ok.txt", "EU B-ORG\n")
    for kwargs in (
        {"format": 5},
        {"format": "xml"},
        {"text_column": 5},
        {"label_column": None},
        {"empty_policy": "keep"},
        {"label_names": "ab"},
        {"label_names": ["a", "a"]},
        {"label_names": ["a", 1]},
        {"label_names": []},
    ):
        with pytest.raises(LoaderConfigError):
            load_classification(jsonl, **kwargs)
    with pytest.raises(LoaderConfigError):
        load_classification(write(tmp_path, "h.csv", "a,1\n"), column_names=[1, 2])
    for kwargs in ({"token_column": "0"}, {"token_column": True}, {"token_column": 1, "tag_column": 1}):
        with pytest.raises(LoaderConfigError):
            load_conll_columns(conll, **kwargs)
    with pytest.raises(LoaderConfigError):
        load_conllu(write(tmp_path, "x.conllu", ""), tag="lemma")


@pytest.mark.timeout(30)
def test_huge_column_index_does_not_hang(tmp_path):
    """The field-count check used to loop up to the column index (10**12 iterations)."""
    path = write(tmp_path, "c.txt", "a b c\n")
    expect(load_conll_columns, path, DataFormatError, 1, "at least", token_column=10**12)


@pytest.mark.timeout(60)
def test_empty_policy_error_names_the_line(tmp_path):
    path = write(tmp_path, "e.jsonl", '{"text": "a", "label": 1}\n\n{"text": " \\t", "label": 0}\n')
    error = expect(load_classification, path, EmptyTextError, match=f"{path}:3:", empty_policy="error")
    assert "row 1" in str(error)


# --------------------------------------------------------------------------------------------------
# Classification files: property-based
# --------------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)
records = st.one_of(
    st.fixed_dictionaries({"text": st.one_of(st.text(max_size=20), json_values), "label": json_values}),
    st.dictionaries(st.sampled_from(["text", "label", "id", "x"]), json_values, max_size=4),
    json_values,
)
line_noise = st.sampled_from([b"", b"\n", b"\r\n", b" \n", b"\x00", b"\xff", b"\xe9", b"\xef\xbb\xbf", b"{", b"}", b"[[["])


def _assert_valid_classification(result) -> None:
    if isinstance(result, datasets.Dataset):
        assert {"text", "label"} <= set(result.column_names)
        assert all(isinstance(t, str) and t.strip() for t in result["text"])
        assert all(isinstance(i, int) and i >= 0 for i in result["label"])
    else:
        assert isinstance(result, DataFormatError | MissingColumnError | UnknownLabelError), repr(result)


@pytest.mark.timeout(120)
@FAST
@given(rows=st.lists(records, max_size=6), noise=st.lists(st.tuples(st.integers(0, 6), line_noise), max_size=3))
def test_jsonl_property(tmp_path, rows, noise):
    lines = [json.dumps(r).encode() for r in rows]
    for position, junk in noise:
        lines.insert(min(position, len(lines)), junk)
    path = write(tmp_path, "p.jsonl", b"\n".join(lines) + b"\n")
    _assert_valid_classification(outcome(load_classification, path))


cells = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10),
    st.sampled_from(["1", "0", "-1", "1.5", "true", "NaN", "null", "", "a,b", '"q"', "\t"]),
)


@pytest.mark.timeout(120)
@FAST
@given(
    fmt=st.sampled_from(["csv", "tsv"]),
    header=st.lists(st.sampled_from(["text", "label", "id", "", "text"]), min_size=0, max_size=4),
    rows=st.lists(st.lists(cells, max_size=4), max_size=6),
    bad_bytes=st.sampled_from([b"", b"\xff", b"caf\xe9", b"\x00", b"\r"]),
    crlf=st.booleans(),
)
def test_delimited_property(tmp_path, fmt, header, rows, bad_bytes, crlf):
    sep = "," if fmt == "csv" else "\t"
    newline = "\r\n" if crlf else "\n"
    text = newline.join(sep.join(r) for r in [header, *rows]) + newline
    path = write(tmp_path, f"p.{fmt}", text.encode("utf-8") + bad_bytes)
    _assert_valid_classification(outcome(load_classification, path))


# --------------------------------------------------------------------------------------------------
# CoNLL-U and CoNLL columns
# --------------------------------------------------------------------------------------------------


def tok(token_id, form="w", tag="NOUN", fields=10) -> str:
    return "\t".join([str(token_id), form, "_", tag, "_", "_", "_", "_", "_", "_"][:fields])


CONLLU_CASES = [
    ("empty", "", OK),
    ("blank_only", "\n \n\t\n", OK),
    ("comments_only", "# sent_id = 1\n# text = x\n", OK),
    ("bom", "\ufeff# sent_id = s1\n" + tok(1) + "\n", OK),
    ("crlf", tok(1) + "\r\n" + tok(2) + "\r\n\r\n", OK),
    ("id_zero", tok(0) + "\n", (DataFormatError, 1, "out of sequence")),
    ("id_negative", tok(-1) + "\n", (DataFormatError, 1, "not an integer")),
    ("id_open_range", tok("1-") + "\n", (DataFormatError, 1, "not an integer")),
    ("id_letter", tok("a") + "\n", (DataFormatError, 1, "not an integer")),
    ("id_two_dots", tok("1.2.3") + "\n", (DataFormatError, 1, "not an integer")),
    ("id_unicode_digit", tok("\u0661") + "\n", (DataFormatError, 1, "not an integer")),
    ("id_superscript", tok("\u00b2") + "\n", (DataFormatError, 1, "not an integer")),
    ("id_empty", tok("") + "\n", (DataFormatError, 1, "not an integer")),
    ("ids_out_of_order", tok(2) + "\n" + tok(1) + "\n", (DataFormatError, 1, "out of sequence")),
    ("ids_skip", tok(1) + "\n" + tok(3) + "\n", (DataFormatError, 2, "expected 2")),
    ("ids_duplicate", tok(1) + "\n" + tok(1) + "\n", (DataFormatError, 2, "out of sequence")),
    ("id_huge", tok(10**20) + "\n", (DataFormatError, 1, "out of sequence")),
    ("missing_tab", tok(1, fields=9) + "\n", (DataFormatError, 1, "found 9")),
    ("extra_tab", tok(1) + "\t\n", (DataFormatError, 1, "found 11")),
    ("spaces_not_tabs", tok(1).replace("\t", " ") + "\n", (DataFormatError, 1, "found 1")),
    ("empty_form", tok(1, form="") + "\n", (DataFormatError, 1, "empty FORM")),
    ("empty_tag", tok(1, tag="") + "\n", (DataFormatError, 1, "empty FORM")),
    ("nul_line", tok(1) + "\n\x00\n", (DataFormatError, 2, "found 1")),
    ("nul_in_form", tok(1, form="a\x00b") + "\n", OK),
    ("multiword_and_empty_node", tok(1) + "\n" + tok("2-3") + "\n" + tok(2) + "\n" + tok("2.1") + "\n", OK),
    ("latin1", (tok(1) + "\n" + tok(2, form="caf\xe9") + "\n").encode("latin-1"), (DataFormatError, 2, "invalid UTF-8")),
    ("invalid_utf8", tok(1).encode() + b"\n\n1\t\xff\xfe\t_\tX\t_\t_\t_\t_\t_\t_\n", (DataFormatError, 3, "invalid UTF-8")),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "content", "expected"), CONLLU_CASES, ids=[c[0] for c in CONLLU_CASES])
def test_hostile_conllu_file(tmp_path, name, content, expected):
    path = write(tmp_path, f"{name}.conllu", content)
    if expected is OK:
        result = outcome(load_conllu, path)
        assert isinstance(result, datasets.Dataset), f"{name}: {result!r}"
        assert all(len(t) == len(g) for t, g in zip(result["tokens"], result["tags"]))
        return
    expect(load_conllu, path, *expected)


@pytest.mark.timeout(60)
def test_conllu_unknown_tag_names_file_and_line(tmp_path):
    path = write(tmp_path, "t.conllu", tok(1) + "\n" + tok(2, tag="VERB") + "\n")
    expect(load_conllu, path, UnknownLabelError, match=f"{path}:2: unknown tag 'VERB'", label_names=["NOUN"])


token_ids = st.one_of(
    st.integers(-3, 6).map(str),
    st.sampled_from(["1-2", "2-3", "1-", "-", "a", "1.1", "1.2.3", ".1", "1.", "", " 1", "\u0661", "01"]),
)
conllu_lines = st.one_of(
    st.builds(lambda i, form, tag, n: "\t".join([i, form, "_", tag, "_", "_", "_", "_", "_", "_"][:n] + [""] * max(0, n - 10)),
              token_ids, st.sampled_from(["w", "", "a b", "\x00"]), st.sampled_from(["NOUN", "", "_"]), st.integers(8, 12)),
    st.sampled_from(["", "# sent_id = x", "#", "   ", "\t"]),
)


@pytest.mark.timeout(120)
@FAST
@given(lines=st.lists(conllu_lines, max_size=12), tail=st.sampled_from([b"", b"\xff", b"\xe9\n", b"\r\n", b"\x00"]))
def test_conllu_property(tmp_path, lines, tail):
    path = write(tmp_path, "p.conllu", "\n".join(lines).encode("utf-8") + b"\n" + tail)
    result = outcome(load_conllu, path)
    if isinstance(result, datasets.Dataset):
        assert all(len(t) == len(g) > 0 for t, g in zip(result["tokens"], result["tags"]))
    else:
        assert isinstance(result, DataFormatError) and result.line is not None, repr(result)


@pytest.mark.timeout(120)
@FAST
@given(
    lines=st.lists(st.lists(st.sampled_from(["EU", "O", "B-ORG", "-DOCSTART-", "\x00", "\u00a0", "x\u2028y"]), max_size=4), max_size=10),
    token_column=st.integers(-3, 3),
    tag_column=st.integers(-3, 3),
    tail=st.sampled_from([b"", b"\xff", b"caf\xe9 O\n", b"\r\r"]),
)
def test_conll_columns_property(tmp_path, lines, token_column, tag_column, tail):
    path = write(tmp_path, "p.txt", "\n".join(" ".join(fields) for fields in lines).encode("utf-8") + b"\n" + tail)
    result = outcome(load_conll_columns, path, token_column=token_column, tag_column=tag_column)
    if isinstance(result, datasets.Dataset):
        assert all(len(t) == len(g) > 0 for t, g in zip(result["tokens"], result["tags"]))
    else:
        assert isinstance(result, DataFormatError | LoaderConfigError), repr(result)
        if isinstance(result, DataFormatError):
            assert result.line is not None


# --------------------------------------------------------------------------------------------------
# Tokenizer files
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory) -> Path:
    tokenizer = TextTokenizer.train(["the cat sat", "a dog ran"] * 5, kind="word", vocab_size=50,
                                    special_tokens=["<pad>", "<unk>"])
    folder = tmp_path_factory.mktemp("tok") / "good"
    tokenizer.save(folder)
    return folder


def _tokenizer_dir(tmp_path: Path, saved: Path, tokenizer_json: bytes | None, settings_json: bytes | None) -> Path:
    folder = tmp_path / f"tok{next(_counter)}"
    folder.mkdir()
    for name, content, original in ((TOKENIZER_FILE, tokenizer_json, saved / TOKENIZER_FILE),
                                    (SETTINGS_FILE, settings_json, saved / SETTINGS_FILE)):
        (folder / name).write_bytes(original.read_bytes() if content is None else content)
    return folder


def _settings(**changes) -> bytes:
    base = {"version": 1, "kind": "word", "pad_token": "<pad>", "unk_token": "<unk>", "bos_token": None,
            "eos_token": None}
    base.update(changes)
    return json.dumps({k: v for k, v in base.items() if v != "DROP"}).encode()


TOKENIZER_FILE_CASES = [
    ("tokenizer_truncated", "half", None),
    ("tokenizer_empty", b"", None),
    ("tokenizer_binary", b"\xff\xfe\x00\x01", None),
    ("tokenizer_null", b"null", None),
    ("tokenizer_array", b"[]", None),
    ("tokenizer_deep", b"[" * 100_000 + b"]" * 100_000, None),
    ("tokenizer_pickle", pickle.dumps({"model": "evil"}), None),
    ("settings_truncated", None, b'{"version": 1, "pad'),
    ("settings_empty", None, b""),
    ("settings_binary", None, b"\xff\xfe"),
    ("settings_latin1", None, _settings(pad_token="\u00e9").decode().encode("latin-1")),
    ("settings_list", None, b"[1]"),
    ("settings_version_2", None, _settings(version=2)),
    ("settings_version_str", None, _settings(version="1")),
    ("settings_version_bool", None, _settings(version=True)),
    ("settings_version_float", None, _settings(version=1.0)),
    ("settings_missing_key", None, _settings(unk_token="DROP")),
    ("settings_pad_int", None, _settings(pad_token=5)),
    ("settings_pad_list", None, _settings(pad_token=["<pad>"])),
    ("settings_kind_dict", None, _settings(kind={"a": 1})),
    ("settings_token_not_in_vocab", None, _settings(pad_token="<nope>")),
    ("settings_deep", None, b"[" * 100_000 + b"]" * 100_000),
    ("settings_pickle", None, pickle.dumps({"version": 1})),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "tokenizer_json", "settings_json"), TOKENIZER_FILE_CASES,
                         ids=[c[0] for c in TOKENIZER_FILE_CASES])
def test_corrupt_tokenizer_files_raise_data_format_error_naming_the_file(
    tmp_path, saved_tokenizer, name, tokenizer_json, settings_json
):
    if tokenizer_json == "half":
        original = (saved_tokenizer / TOKENIZER_FILE).read_bytes()
        tokenizer_json = original[: len(original) // 2]
    folder = _tokenizer_dir(tmp_path, saved_tokenizer, tokenizer_json, settings_json)
    bad_file = folder / (TOKENIZER_FILE if settings_json is None else SETTINGS_FILE)
    for load in (TextTokenizer.load, TextTokenizer.from_file):
        with pytest.raises(DataFormatError) as info:
            load(folder)
        assert info.value.path == str(bad_file) and str(bad_file) in str(info.value)
    if settings_json is None:
        with pytest.raises(DataFormatError, match=TOKENIZER_FILE):
            TextTokenizer.from_file(folder / TOKENIZER_FILE)


@pytest.mark.timeout(60)
def test_tokenizer_loading_never_unpickles(tmp_path, saved_tokenizer, monkeypatch):
    """Loading reads JSON only: with pickle disabled a good directory still loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a tokenizer")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    loaded = TextTokenizer.load(saved_tokenizer)
    assert loaded.pad_token == "<pad>" and loaded.encode("the cat") == loaded.encode("the cat")
    with pytest.raises(FileNotFoundError):
        TextTokenizer.load(tmp_path / "missing")


@pytest.mark.timeout(120)
@FAST
@given(data=st.data())
def test_truncated_or_flipped_tokenizer_files_property(tmp_path, saved_tokenizer, data):
    which = data.draw(st.sampled_from([TOKENIZER_FILE, SETTINGS_FILE]))
    original = (saved_tokenizer / which).read_bytes()
    cut = data.draw(st.integers(0, len(original) - 1))
    content = bytearray(original[:cut])
    if content and data.draw(st.booleans()):
        content[data.draw(st.integers(0, len(content) - 1))] ^= data.draw(st.integers(1, 255))
    folder = _tokenizer_dir(tmp_path, saved_tokenizer, *((bytes(content), None) if which == TOKENIZER_FILE else (None, bytes(content))))
    try:
        TextTokenizer.load(folder)
    except DataFormatError as error:
        assert error.path == str(folder / which)


# --------------------------------------------------------------------------------------------------
# Tampered datapipe states
# --------------------------------------------------------------------------------------------------

ROWS = [{"input_ids": list(range(1, n + 1)), "length": n, "label": 0} for n in [3, 5, 2, 8, 7, 1, 4, 6] * 4]


def make_batcher(indexed: bool) -> BucketBatcher:
    source = MapDatasetSource(datasets.Dataset.from_list(ROWS)) if indexed else IterableWrapper(ROWS)
    return BucketBatcher(source, batch_size=3, buffer_size=10, seed=1)


def good_state(indexed: bool) -> dict:
    batcher = make_batcher(indexed)
    batcher.reset(None)
    next(batcher)
    next(batcher)
    return batcher.get_state()


def assert_state_error(node, state) -> None:
    """reset(state) raises StateDictError, or restores to something that iterates without error."""
    try:
        node.reset(state)
    except StateDictError as error:
        assert str(error), "StateDictError without a message"
        return
    for _ in range(100):  # a state that was accepted must not blow up later either
        try:
            node.next()
        except StopIteration:
            break


# Tampering that BucketBatcher.reset already turns into StateDictError (missing keys, wrong types,
# position beyond the plan, non-dict states).
HANDLED_TAMPERING = [
    ("missing epoch", lambda s: s.pop("epoch")),
    ("missing chunk", lambda s: s.pop("chunk")),
    ("missing position", lambda s: s.pop("position")),
    ("missing stats", lambda s: s.pop("stats")),
    ("missing boundaries", lambda s: s.pop("boundaries")),
    ("missing source", lambda s: s.pop("source")),
    ("epoch str", lambda s: s.update(epoch="x")),
    ("epoch list", lambda s: s.update(epoch=[1])),
    ("position None", lambda s: s.update(position=None)),
    ("position beyond plan", lambda s: s.update(position=10**9)),
    ("stats int", lambda s: s.update(stats=5)),
    ("stats None", lambda s: s.update(stats=None)),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("indexed", [True, False], ids=["map", "stream"])
@pytest.mark.parametrize(("name", "tamper"), HANDLED_TAMPERING, ids=[c[0] for c in HANDLED_TAMPERING])
def test_bucket_batcher_rejects_tampered_state(indexed, name, tamper):
    state = copy.deepcopy(good_state(indexed))
    tamper(state)
    with pytest.raises(StateDictError):
        make_batcher(indexed).reset(state)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("junk", [{}, [], "state", {"x": 1}, 5], ids=repr)
def test_bucket_batcher_rejects_non_states(junk):
    with pytest.raises(StateDictError):
        make_batcher(True).reset(junk)


# Found by this file and fixed in BucketBatcher._parse_state / MapDatasetSource.reset.
BUCKETING_BUGS = [
    ("negative epoch", True, lambda s: s.update(epoch=-1), "ValueError from numpy default_rng([seed, -1])"),
    ("negative position", True, lambda s: s.update(position=-1), "accepted: resumes at plan[-1], yields a wrong batch"),
    ("negative chunk", False, lambda s: s.update(chunk=-1), "ValueError from numpy default_rng([seed, epoch, -1])"),
    ("bool position", True, lambda s: s.update(position=True), "accepted: int(True) == 1"),
    ("float position", True, lambda s: s.update(position=1.5), "accepted: int(1.5) truncates"),
    ("unknown stats key", True, lambda s: s["stats"].update(bogus=1), "TypeError from BatchingStats(**stats)"),
    ("stats value str", True, lambda s: s["stats"].update(batches="x"), "TypeError later in next(): 'x' + 1"),
    ("histogram list", True, lambda s: s["stats"].update(batch_size_histogram=[1]), "AttributeError: list.items"),
    ("histogram bad key", True, lambda s: s["stats"].update(batch_size_histogram={"a": 1}), "ValueError from int('a')"),
    ("boundaries str", True, lambda s: s.update(boundaries="x"), "ValueError from np.asarray(..., int64)"),
    ("boundaries scalar", True, lambda s: s.update(boundaries=5), "ValueError: object of too small depth"),
    ("boundaries ragged", True, lambda s: s.update(boundaries=[[1, 2], [3]]), "ValueError: inhomogeneous shape"),
    ("boundaries huge", True, lambda s: s.update(boundaries=[2**70]), "OverflowError from np.asarray"),
    ("boundaries unsorted", True, lambda s: s.update(boundaries=[5, 1]), "accepted unsorted; constructor uses np.unique"),
    ("source state junk", False, lambda s: s.update(source="x"), "TypeError from the wrapped source's reset"),
    ("source state missing key", False, lambda s: s.update(source={}), "KeyError from the wrapped source's reset"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "indexed", "tamper"),
    [pytest.param(n, i, t, id=n) for n, i, t, _was in BUCKETING_BUGS],
)
def test_bucket_batcher_tampered_state_bugs(name, indexed, tamper):
    state = copy.deepcopy(good_state(indexed))
    tamper(state)
    with pytest.raises(StateDictError):
        make_batcher(indexed).reset(state)


@pytest.mark.timeout(60)
def test_map_source_missing_key():
    source = MapDatasetSource(datasets.Dataset.from_list(ROWS))
    with pytest.raises(StateDictError):
        source.reset({})


@pytest.mark.timeout(60)
def test_loader_load_state_dict_with_tampered_inner_state():
    loader = Loader(make_batcher(True))
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    tampered = copy.deepcopy(state)
    tampered["root"].pop("position")
    restored = Loader(make_batcher(True))
    restored.load_state_dict(tampered)
    with pytest.raises(StateDictError, match="position"):
        next(iter(restored))
    tampered = copy.deepcopy(state)
    tampered["root"]["position"] = 10**6
    restored = Loader(make_batcher(True))
    restored.load_state_dict(tampered)
    with pytest.raises(StateDictError, match="past the"):
        next(iter(restored))


@pytest.mark.timeout(60)
def test_loader_load_state_dict_without_root():
    """torchdata's own Loader indexes state['root'] itself; Pipe.loader() checks the shape first."""
    restored = Pipe.from_node(make_batcher(True)).loader()
    with pytest.raises(StateDictError, match="root"):
        restored.load_state_dict({"num_yielded": 1})


def _tokenize_node(saved: Path) -> TokenizeNode:
    tokenizer = TextTokenizer.load(saved)
    return TokenizeNode(IterableWrapper([{"text": "the cat sat", "label": i % 2} for i in range(10)]), tokenizer,
                        batch_size=4)


@pytest.mark.timeout(60)
def test_tokenize_node_rejects_tampered_state(saved_tokenizer):
    node = _tokenize_node(saved_tokenizer)
    node.reset(None)
    for _ in range(2):
        node.next()
    good = node.get_state()
    tamperings = [
        lambda s: s.pop(TokenizeNode.SOURCE_KEY),
        lambda s: s.pop(TokenizeNode.OFFSET_KEY),
        lambda s: s.pop(TokenizeNode.REPORT_KEY),
        lambda s: s.update({TokenizeNode.OFFSET_KEY: "x"}),
        lambda s: s.update({TokenizeNode.OFFSET_KEY: 10**6}),
        lambda s: s.update({TokenizeNode.OFFSET_KEY: -1}),
        lambda s: s.update({TokenizeNode.OFFSET_KEY: True}),
        lambda s: s.update({TokenizeNode.REPORT_KEY: {"bogus": 1}}),
        lambda s: s.update({TokenizeNode.REPORT_KEY: [1]}),
        lambda s: s.update({TokenizeNode.REPORT_KEY: {k: "x" for k in s[TokenizeNode.REPORT_KEY]}}),
        lambda s: s.update({TokenizeNode.REPORT_KEY: {k: -1 for k in s[TokenizeNode.REPORT_KEY]}}),
    ]
    for tamper in tamperings:
        state = copy.deepcopy(good)
        tamper(state)
        with pytest.raises(StateDictError):
            _tokenize_node(saved_tokenizer).reset(state)
    for junk in ({}, [], "x", 5):
        with pytest.raises(StateDictError):
            _tokenize_node(saved_tokenizer).reset(junk)
